"""In-process metrics rendered in the Prometheus text format for `GET /metrics`."""

from __future__ import annotations

import bisect
from collections import defaultdict

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    inner = ",".join(f'{k}="{v}"' for k, v in pairs)
    return "{" + inner + "}"


class Metrics:
    """Counters, gauges and one latency histogram; cheap enough for the webhook path."""

    def __init__(self) -> None:
        self._counters: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
        self._help: dict[str, tuple[str, str]] = {}
        self._hist_counts: dict[str, list[int]] = {}
        self._hist_sum: dict[str, float] = {}

    def inc(self, name: str, amount: float = 1.0, /, **labels: str) -> None:
        """Add `amount` to the counter `name` with these labels."""
        key = tuple(sorted(labels.items()))
        series = self._counters[name]
        series[key] = series.get(key, 0.0) + amount

    def observe(self, name: str, seconds: float, times: int = 1) -> None:
        """Record a duration `times` times in the histogram `name`."""
        counts = self._hist_counts.setdefault(name, [0] * (len(_BUCKETS) + 1))
        counts[bisect.bisect_left(_BUCKETS, seconds)] += times
        self._hist_sum[name] = self._hist_sum.get(name, 0.0) + seconds * times

    def set(self, name: str, value: float, /, **labels: str) -> None:
        """Set a gauge-like series to `value` (rendered with the counters)."""
        self._counters[name][tuple(sorted(labels.items()))] = value
        self._help.setdefault(name, ("gauge", name.replace("_", " ")))

    def value(self, name: str, /, **labels: str) -> float:
        """Return a counter's current value: the sum of its series that carry these labels (as
        Prometheus's sum() would), so value("x") counts every workspace and value("x",
        workspace="a") one. Tests, the console and the CLI use this."""
        wanted = set(labels.items())
        return sum(
            value for key, value in self._counters.get(name, {}).items() if wanted.issubset(key)
        )

    def render(self) -> str:
        """Return every metric in the Prometheus text exposition format."""
        out: list[str] = []

        def head(name: str, default_kind: str) -> None:
            kind, text = self._help.get(name, (default_kind, name.replace("_", " ")))
            out.append(f"# HELP {name} {text}")
            out.append(f"# TYPE {name} {kind}")

        for name, series in sorted(self._counters.items()):
            head(name, "counter")
            for key, value in sorted(series.items()):
                out.append(f"{name}{_labels(key)} {value:g}")
        for name, counts in sorted(self._hist_counts.items()):
            head(name, "histogram")
            running = 0
            for bound, count in zip(_BUCKETS, counts, strict=False):
                running += count
                out.append(f'{name}_bucket{{le="{bound:g}"}} {running}')
            running += counts[-1]
            out.append(f'{name}_bucket{{le="+Inf"}} {running}')
            out.append(f"{name}_sum {self._hist_sum[name]:g}")
            out.append(f"{name}_count {running}")
        return "\n".join(out) + "\n"
