"""Small SVG charts drawn on the server: horizontal bars for categories, columns for days.

Plain SVG with presentation attributes (no inline style, no script), so the console's
Content-Security-Policy holds; each chart carries a title and a text alternative, and the
numbers are also printed beside the bars and offered as CSV.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

WIDTH = 640
BAR = 26  # height of one horizontal bar and its gap
LABEL_WIDTH = 230
COLUMN_AREA = 160  # height of the column chart's plot
PALETTE = ("#2f6fba", "#3c9d5d", "#d08a20", "#b8433b", "#7a5bb5", "#4b8c96", "#8a8a8a")


def _svg(title: str, height: int, body: list[str], summary: str) -> Markup:
    label = escape(f"{title}: {summary}" if summary else f"{title}: no data")
    return Markup(  # noqa: S704  (every text inside went through escape())
        f'<svg class="chart" viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{label}"'
        f' xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>{"".join(body)}</svg>'
    )


def bars(items: Sequence[tuple[str, int]], *, title: str) -> Markup:
    """One horizontal bar per (label, value), longest first as given, the value printed."""
    if not items:
        return _svg(title, 40, ['<text x="0" y="24" class="chart-empty">No data</text>'], "")
    top = max(v for _, v in items) or 1
    plot = WIDTH - LABEL_WIDTH - 60
    body = []
    for n, (label, value) in enumerate(items):
        y = n * BAR
        length = max(2, round(plot * value / top)) if value else 0
        colour = PALETTE[n % len(PALETTE)]
        body.append(
            f'<text x="{LABEL_WIDTH - 8}" y="{y + 17}" text-anchor="end">'
            f"{escape(label[:40])}</text>"
            f'<rect x="{LABEL_WIDTH}" y="{y + 4}" width="{length}" height="{BAR - 8}"'
            f' fill="{colour}" rx="2"/>'
            f'<text x="{LABEL_WIDTH + length + 6}" y="{y + 17}">{value}</text>'
        )
    summary = ", ".join(f"{label} {value}" for label, value in items)
    return _svg(title, len(items) * BAR + 4, body, summary)


def columns(items: Sequence[tuple[str, int]], *, title: str) -> Markup:
    """One column per (label, value), left to right; labels thinned to stay readable."""
    if not items:
        return _svg(title, 40, ['<text x="0" y="24" class="chart-empty">No data</text>'], "")
    top = max(v for _, v in items) or 1
    left, bottom = 36, COLUMN_AREA + 8
    step = (WIDTH - left) / len(items)
    every = max(1, round(len(items) / 10))  # at most about ten labels under the axis
    body = [
        f'<line x1="{left}" y1="{bottom}" x2="{WIDTH}" y2="{bottom}" stroke="#888"/>',
        f'<text x="{left - 6}" y="{bottom - COLUMN_AREA + 4}" text-anchor="end">{top}</text>',
        f'<text x="{left - 6}" y="{bottom}" text-anchor="end">0</text>',
    ]
    for n, (label, value) in enumerate(items):
        height = round(COLUMN_AREA * value / top)
        x = left + n * step
        body.append(
            f'<rect x="{x + step * 0.15:.1f}" y="{bottom - height}" width="{step * 0.7:.1f}"'
            f' height="{height}" fill="{PALETTE[0]}"><title>{escape(label)}: {value}</title></rect>'
        )
        if n % every == 0:
            body.append(
                f'<text x="{x + step / 2:.1f}" y="{bottom + 16}" text-anchor="middle">'
                f"{escape(label)}</text>"
            )
    summary = ", ".join(f"{label} {value}" for label, value in items if value) or "none"
    return _svg(title, bottom + 24, body, summary)
