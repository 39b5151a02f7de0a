"""A flow as a graph: its states and the transitions between them, for `smsbot graph` and docs.

The transitions come from the flow's decorators (which handler answers what, in which state)
and from its source (which states each handler can return; see smsbot.engine.flowsource).
An edge's label says what moves the conversation: keywords ("YES / Y"), a pattern
("/^re ?book/"), a predicate ("when is_question"), "otherwise", "timeout 48h", "on enter", a
scheduled method ("follow_up()") or "send failed". A handler that can return None also gets an
edge back to its own state: the conversation stays there.

`START` ("[*]") as an edge's source is how the flow begins: its keyword `triggers` (into the
initial state), or `start()` returning another state ("start"). As a target it is the
conversation ending without a final state (a timeout with no on_timeout handler). Mermaid's
state diagrams use the same mark for both.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from smsbot.engine.flow import Flow, Handler, State
from smsbot.engine.flowsource import read_source

__all__ = [
    "SEND_FAILED",
    "START",
    "Edge",
    "FlowGraph",
    "flow_graph",
    "format_duration",
    "to_dot",
    "to_mermaid",
]

START = "[*]"
SEND_FAILED = "send failed"  # the label of on_send_failed's edges: a way out no one plans on


@dataclasses.dataclass(frozen=True)
class Edge:
    """A transition from state `source` to state `target`; `label` says what triggers it."""

    source: str
    target: str
    label: str


@dataclasses.dataclass(frozen=True)
class FlowGraph:
    """A flow's states (in declaration order), initial and final states, and transitions."""

    flow: str
    states: tuple[str, ...]
    initial: str
    finals: frozenset[str]
    edges: tuple[Edge, ...]


def format_duration(delta: dt.timedelta) -> str:
    """A timeout as people write it: 30m, 1h30m, 48h, 7d."""
    seconds = int(delta.total_seconds())
    if seconds % 86400 == 0 and seconds >= 3 * 86400:
        return f"{seconds // 86400}d"
    if seconds % 60:
        return f"{seconds}s"
    hours, minutes = divmod(seconds // 60, 60)
    return (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")


def _labelled_handlers(state: State) -> list[tuple[Handler, str, bool]]:
    """(handler, label, whether returning None means staying) for every handler of `state`."""
    words: dict[Handler, list[str]] = {}
    for word, handler in state.keywords.items():
        words.setdefault(handler, []).append(word.upper())
    found: list[tuple[Handler, str, bool]] = [(h, " / ".join(w), True) for h, w in words.items()]
    for rule in state.rules:
        if rule.pattern is not None:
            found.append((rule.handler, f"/{rule.pattern.pattern}/", True))
        else:
            name = getattr(rule.predicate, "__name__", "predicate")
            found.append((rule.handler, f"when {name.strip('<>')}", True))
    if state.fallback is not None:
        found.append((state.fallback, "otherwise", True))
    if state.timeout_handler is not None and state.timeout is not None:
        label = f"timeout {format_duration(state.timeout)}"
        found.append((state.timeout_handler, label, True))
    found += [(hook, "on enter", False) for hook in state.enter_hooks]
    return found


def _name(handler: Handler) -> str:
    return str(getattr(handler, "__name__", ""))


def flow_graph(cls: type[Flow]) -> FlowGraph:
    """Build the graph of flow class `cls` from its decorators and its source."""
    source = read_source(cls)
    names = tuple(cls.states)
    edges: list[Edge] = []

    def add(origin: str, method: str, label: str, *, stays: bool) -> None:
        outcome = source.outcome(method)
        edges.extend(Edge(origin, t, label) for t in sorted(outcome.states) if t in cls.states)
        if stays and outcome.stays:
            edges.append(Edge(origin, origin, label))

    initial = [s.name for s in cls.states.values() if s.initial]
    if cls.triggers and initial:
        edges.append(Edge(START, initial[0], " / ".join(w.upper() for w in cls.triggers)))
    for name in sorted(source.outcome("start").states & set(names)):
        edges.append(Edge(START, name, "start"))
    for state in cls.states.values():
        if state.final:
            continue
        for handler, label, stays in _labelled_handlers(state):
            add(state.name, _name(handler), label, stays=stays)
            for method in source.reached(_name(handler)):
                for scheduled, _line in method.schedules:
                    add(state.name, scheduled, f"{scheduled}()", stays=False)
        if state.timeout is not None and state.timeout_handler is None:
            edges.append(Edge(state.name, START, f"timeout {format_duration(state.timeout)}"))
        if "on_send_failed" in source.methods:
            add(state.name, "on_send_failed", SEND_FAILED, stays=False)
    return FlowGraph(
        flow=cls.name,
        states=names,
        initial=initial[0] if initial else "",
        finals=frozenset(s.name for s in cls.states.values() if s.final),
        edges=tuple(dict.fromkeys(edges)),
    )


def _entered(g: FlowGraph) -> bool:
    """Whether an edge already leads from START into the initial state (a trigger's)."""
    return any(e.source == START and e.target == g.initial for e in g.edges)


def _mermaid_text(label: str) -> str:
    # In a Mermaid transition label '#' starts an entity code, ';' ends the statement and ':'
    # (in older Mermaid) ends the label: write each as its entity code.
    return label.translate({ord("#"): "#35;", ord(";"): "#59;", ord(":"): "#58;"})


def to_mermaid(g: FlowGraph) -> str:
    """The graph as a Mermaid state diagram (```mermaid blocks render it on GitHub)."""
    lines = ["stateDiagram-v2"]
    if g.initial and not _entered(g):
        lines.append(f"    {START} --> {g.initial}")
    for e in g.edges:
        lines.append(f"    {e.source} --> {e.target} : {_mermaid_text(e.label)}")
    lines += [f"    {name} --> {START}" for name in g.states if name in g.finals]
    return "\n".join(lines) + "\n"


def _dot_id(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(g: FlowGraph) -> str:
    """The graph in Graphviz DOT (`dot -Tsvg`); final states are double circles."""
    lines = [
        f"digraph {_dot_id(g.flow)} {{",
        "    rankdir=LR;",
        '    node [shape=box, style=rounded, fontname="Helvetica"];',
        '    edge [fontname="Helvetica", fontsize=10];',
        '    "__start__" [shape=point, width=0.15];',
    ]
    for name in g.states:
        shape = ", shape=doublecircle" if name in g.finals else ""
        lines.append(f"    {_dot_id(name)} [label={_dot_id(name)}{shape}];")
    if any(e.target == START for e in g.edges):
        lines.append('    "__end__" [shape=doublecircle, label="", width=0.15];')
    if g.initial and not _entered(g):
        lines.append(f'    "__start__" -> {_dot_id(g.initial)};')
    for e in g.edges:
        source = '"__start__"' if e.source == START else _dot_id(e.source)
        target = '"__end__"' if e.target == START else _dot_id(e.target)
        lines.append(f"    {source} -> {target} [label={_dot_id(e.label)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"
