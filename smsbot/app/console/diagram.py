"""A flow's graph (smsbot.engine.graph) drawn as SVG on the server, top to bottom.

No layout library: states are put in rows by the longest path from the start, ordered in each
row by where their predecessors are; the transitions between two states share one arrow with
every label on it. An arrow that skips rows, or goes back up, is routed around the rows it
passes. Final states have a double border; the black dot is where a conversation begins, the
ringed dot where one ends without a final state. Plain SVG with presentation attributes only,
so the console's Content-Security-Policy holds.
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict

from markupsafe import Markup, escape

from smsbot.engine.graph import START, FlowGraph

END = "[end]"  # the node drawn for edges that end a conversation without a final state
ROW = 120  # vertical distance between rows
GAP = 70  # horizontal gap between nodes of a row
HEIGHT = 40
CHAR = 7.6  # average width of one character of the state names, in px
LABEL_CHAR = 6.4  # and of the 12px labels
LINE = 15  # label line height
MARGIN = 16
AROUND = 36  # how far an arrow passing a row keeps from its nodes


@dataclasses.dataclass(slots=True)
class _Node:
    name: str
    row: int
    width: float
    x: float = 0.0  # centre
    y: float = 0.0  # centre

    @property
    def special(self) -> bool:
        return self.name in (START, END)

    @property
    def half_height(self) -> float:
        return 9.0 if self.special else HEIGHT / 2


@dataclasses.dataclass(slots=True)
class _Drawing:
    """SVG pieces and how far left and right they reach."""

    parts: list[str] = dataclasses.field(default_factory=list)
    left: float = 0.0
    right: float = 0.0

    def add(self, svg: str, left: float, right: float) -> None:
        self.parts.append(svg)
        self.left, self.right = min(self.left, left), max(self.right, right)


def render(g: FlowGraph) -> Markup:
    """The graph as an inline SVG element, with a text alternative listing every transition."""
    names = [START, *g.states]
    if any(e.target == START for e in g.edges):
        names.append(END)
    labels: dict[tuple[str, str], list[str]] = defaultdict(list)
    if g.initial and not any(e.source == START and e.target == g.initial for e in g.edges):
        labels[(START, g.initial)] = []
    for e in g.edges:
        labels[(e.source, END if e.target == START else e.target)].append(e.label)
    rows = _rows(names, labels)
    nodes = {n: _Node(n, rows[n], 18.0 if n in (START, END) else len(n) * CHAR + 32) for n in names}
    _place(nodes, labels)
    marker = "arrow-" + re.sub(r"[^A-Za-z0-9_-]", "-", g.flow)  # one per diagram on a page
    drawing = _Drawing(left=min(n.x - n.width / 2 for n in nodes.values()))
    drawing.right = max(n.x + n.width / 2 for n in nodes.values())
    for (s, t), lines in labels.items():
        _edge(drawing, nodes, nodes[s], nodes[t], list(dict.fromkeys(lines)), marker)
    for n in nodes.values():
        drawing.add(_node(n, n.name in g.finals, n.name == g.initial), n.x, n.x)
    left, width = drawing.left - MARGIN, drawing.right - drawing.left + 2 * MARGIN
    height = max(n.y for n in nodes.values()) + HEIGHT / 2 + MARGIN
    summary = "; ".join(
        f"{'start' if s == START else s} to {'end' if t == END else t}"
        + (f" on {', '.join(lines)}" if lines else "")
        for (s, t), lines in labels.items()
    )
    return Markup(  # noqa: S704  (every text inside went through escape())
        f'<svg viewBox="{left:.0f} 0 {width:.0f} {height:.0f}" width="{width:.0f}"'
        f' height="{height:.0f}" role="img" xmlns="http://www.w3.org/2000/svg"'
        f' aria-label="{escape(f"States of flow {g.flow}: {summary}")}">'
        f"<title>{escape(f'Flow {g.flow}')}</title>{_defs(marker)}{''.join(drawing.parts)}</svg>"
    )


def _rows(names: list[str], labels: dict[tuple[str, str], list[str]]) -> dict[str, int]:
    """Each node's row: the longest path to it from the start, not counting edges back up."""
    successors: dict[str, list[str]] = defaultdict(list)
    for s, t in labels:
        if s != t:
            successors[s].append(t)
    back: set[tuple[str, str]] = set()
    seen: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:  # depth first: an edge into path is back
        seen.add(node)
        for nxt in successors[node]:
            if nxt in path:
                back.add((node, nxt))
            elif nxt not in seen:
                visit(nxt, (*path, nxt))

    for name in names:  # START first; then whatever it does not reach
        if name not in seen:
            visit(name, (name,))
    row = dict.fromkeys(names, 0)
    for _ in names:  # longest path: relax forward edges until no row grows
        grown = False
        for node in names:
            for nxt in successors[node]:
                if (node, nxt) not in back and row[nxt] < row[node] + 1:
                    row[nxt], grown = row[node] + 1, True
        if not grown:
            break
    return row


def _place(nodes: dict[str, _Node], labels: dict[tuple[str, str], list[str]]) -> None:
    """Centre each row; order a row by the mean x of each node's predecessors above it."""
    by_row: dict[int, list[_Node]] = defaultdict(list)
    for n in nodes.values():
        by_row[n.row].append(n)
    preds: dict[str, list[str]] = defaultdict(list)
    for s, t in labels:
        if s != t:
            preds[t].append(s)
    widest = max(sum(n.width for n in row) + GAP * (len(row) - 1) for row in by_row.values())
    for r in sorted(by_row):
        row = by_row[r]
        first = {n.name: float(i) for i, n in enumerate(row)}
        row.sort(key=lambda n: _mean_x(n, nodes, preds, first))
        total = sum(n.width for n in row) + GAP * (len(row) - 1)
        x = (widest - total) / 2
        for n in row:
            n.x, n.y = x + n.width / 2, MARGIN + HEIGHT / 2 + r * ROW
            x += n.width + GAP


def _mean_x(
    n: _Node, nodes: dict[str, _Node], preds: dict[str, list[str]], first: dict[str, float]
) -> float:
    placed = [nodes[p].x for p in preds[n.name] if nodes[p].row < n.row]
    return sum(placed) / len(placed) if placed else first[n.name]


def _defs(marker: str) -> str:
    return (
        f'<defs><marker id="{marker}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="8"'
        ' markerHeight="8" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z"'
        ' fill="#4a5568"/></marker></defs>'
    )


def _node(n: _Node, final: bool, initial: bool) -> str:
    if n.name == START:
        return f'<circle cx="{n.x:.1f}" cy="{n.y:.1f}" r="8" fill="#1d2330"/>'
    if n.name == END:
        return (
            f'<circle cx="{n.x:.1f}" cy="{n.y:.1f}" r="9" fill="none" stroke="#1d2330"/>'
            f'<circle cx="{n.x:.1f}" cy="{n.y:.1f}" r="5" fill="#1d2330"/>'
        )
    x, y, w = n.x - n.width / 2, n.y - HEIGHT / 2, n.width
    fill = "#e8f0fb" if initial else "#ffffff"
    shape = (
        f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{HEIGHT}" rx="10"'
        f' fill="{fill}" stroke="#2f6fba" stroke-width="1.5"/>'
    )
    if final:
        shape += (
            f'<rect x="{x + 4:.1f}" y="{y + 4:.1f}" width="{w - 8:.1f}" height="{HEIGHT - 8}"'
            ' rx="7" fill="none" stroke="#2f6fba"/>'
        )
    name = escape(n.name)
    text = f'<text x="{n.x:.1f}" y="{n.y + 5:.1f}" text-anchor="middle" font-weight="600">'
    return f"<g>{shape}{text}{name}</text></g>"


def _label(drawing: _Drawing, x: float, y: float, lines: list[str], anchor: str) -> None:
    """Lines of text, centred on y, with a white backing so arrows under them stay readable."""
    if not lines:
        return
    width = max(len(line) for line in lines) * LABEL_CHAR + 8
    left = {"middle": x - width / 2, "start": x - 4, "end": x - width + 4}[anchor]
    top = y - LINE * len(lines) / 2 - 2
    spans = "".join(
        f'<tspan x="{x:.1f}" y="{top + 13 + i * LINE:.1f}">{escape(line)}</tspan>'
        for i, line in enumerate(lines)
    )
    drawing.add(
        f'<rect x="{left:.1f}" y="{top:.1f}" width="{width:.1f}" height="{LINE * len(lines) + 4}"'
        ' fill="#ffffff" fill-opacity="0.9"/>'
        f'<text text-anchor="{anchor}" font-size="12" fill="#374151">{spans}</text>',
        left,
        left + width,
    )


def _edge(
    drawing: _Drawing,
    nodes: dict[str, _Node],
    a: _Node,
    b: _Node,
    lines: list[str],
    marker: str,
) -> None:
    stroke = f'fill="none" stroke="#4a5568" stroke-width="1.3" marker-end="url(#{marker})"'
    if a is b:  # stays in the same state: a loop on the right
        x, y = a.x + a.width / 2, a.y
        path = f"M{x:.1f},{y - 10:.1f} C{x + 50:.1f},{y - 38:.1f} {x + 50:.1f},{y + 38:.1f}"
        drawing.add(f'<path d="{path} {x:.1f},{y + 10:.1f}" {stroke}/>', x, x + 40)
        _label(drawing, x + 44, y, lines, "start")
        return
    if a.row == b.row:  # sideways, label above
        sign = 1 if b.x > a.x else -1
        x1, x2 = a.x + sign * a.width / 2, b.x - sign * b.width / 2
        drawing.add(f'<path d="M{x1:.1f},{a.y:.1f} L{x2:.1f},{b.y:.1f}" {stroke}/>', x1, x2)
        _label(drawing, (x1 + x2) / 2, a.y - 14, lines, "middle")
        return
    down = b.row > a.row
    between = [n for n in nodes.values() if min(a.row, b.row) < n.row < max(a.row, b.row)]
    if not down:  # back up: from the left side of one to the left side of the other
        x1, y1, x2, y2 = a.x - a.width / 2, a.y, b.x - b.width / 2, b.y
        reach = min([n.x - n.width / 2 for n in between] + [x1, x2]) - AROUND
        control = (reach - 0.125 * (x1 + x2)) / 0.75
        path = (
            f"M{x1:.1f},{y1:.1f} C{control:.1f},{y1:.1f} {control:.1f},{y2:.1f} {x2:.1f},{y2:.1f}"
        )
        drawing.add(f'<path d="{path}" {stroke}/>', reach, x1)
        _label(drawing, reach - 6, (y1 + y2) / 2, lines, "end")
        return
    x1, y1 = a.x, a.y + a.half_height
    x2, y2 = b.x, b.y - b.half_height
    if not between:  # the next row down: straight
        drawing.add(f'<path d="M{x1:.1f},{y1:.1f} L{x2:.1f},{y2:.1f}" {stroke}/>', x1, x2)
        # Beside the line, on the side it leans to: two arrows fanning out keep apart.
        x, y = x1 + (x2 - x1) * 0.5, y1 + (y2 - y1) * 0.5
        if abs(x2 - x1) < 1:
            _label(drawing, x, y, lines, "middle")
        else:
            _label(drawing, x + (8 if x2 > x1 else -8), y, lines, "start" if x2 > x1 else "end")
        return
    # Around the rows in between, on the side the target lies.
    leftward = x2 < x1 or (x2 == x1 and len(between) % 2 == 0)
    if leftward:
        reach = min([n.x - n.width / 2 for n in between] + [min(x1, x2)]) - AROUND
    else:
        reach = max([n.x + n.width / 2 for n in between] + [max(x1, x2)]) + AROUND
    control = (reach - 0.125 * (x1 + x2)) / 0.75  # the curve's middle then passes at `reach`
    path = (
        f"M{x1:.1f},{y1:.1f} C{control:.1f},{y1 + 50:.1f}"
        f" {control:.1f},{y2 - 50:.1f} {x2:.1f},{y2:.1f}"
    )
    drawing.add(f'<path d="{path}" {stroke}/>', reach, reach)
    mid = (y1 + y2) / 2
    _label(
        drawing, reach - 6 if leftward else reach + 6, mid, lines, "end" if leftward else "start"
    )
