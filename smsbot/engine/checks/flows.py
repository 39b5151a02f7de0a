"""Flow checks: paths through the states, template variables, first messages, timeouts, keywords.

Each reads the flow's graph (smsbot.engine.graph) and its source (smsbot.engine.flowsource);
nothing runs a handler.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from smsbot.config import ConfigError, Settings
from smsbot.engine.checks.report import CheckOptions, Finding
from smsbot.engine.checks.templates import CONTEXT_NAMES, TemplateChecker
from smsbot.engine.flow import Flow
from smsbot.engine.flowsource import FlowSource, MethodSource, Return, TemplateUse, read_source
from smsbot.engine.graph import SEND_FAILED, START, FlowGraph, flow_graph, format_duration
from smsbot.engine.loader import where
from smsbot.engine.router import DEFAULT_CATCH_ALL, Router
from smsbot.engine.startdata import TIMEZONE, start_fields
from smsbot.hints import did_you_mean
from smsbot.sms.keywords import normalize_keyword

_HOOKS = ("start", "on_expire", "on_send_failed")


def flow_findings(
    cls: type[Flow], templates: TemplateChecker, options: CheckOptions, *, prompted: bool
) -> list[Finding]:
    """Every finding about one flow; `prompted` says whether a message can start it."""
    source = read_source(cls)
    if not source.readable or not cls.name:
        return []
    found = _paths(cls, source, flow_graph(cls))
    found += _variables(cls, source, templates)
    if not prompted and cls.opt_out_notice:
        found += _opt_out(cls, source, templates, options)
    found += _timeouts(cls, source, options)
    return found


# --- paths ------------------------------------------------------------------------------------


def _entry_points(cls: type[Flow], source: FlowSource) -> list[str]:
    """Every method smsbot calls: handlers, hooks and scheduled methods."""
    names = [getattr(h, "__name__", "") for s in cls.states.values() for h in s.handlers()]
    names += [hook for hook in _HOOKS if hook in source.methods]
    names += [m for method in source.methods.values() for m, _ in method.schedules]
    return list(dict.fromkeys(names))


def _paths(cls: type[Flow], source: FlowSource, graph: FlowGraph) -> list[Finding]:
    found: list[Finding] = []
    unknown: dict[tuple[str, int], Return] = {}
    for name in _entry_points(cls, source):
        unknown.update({(r.file, r.line): r for r in source.outcome(name).unknown})
    found += [_unknown_return(cls, ret) for _, ret in sorted(unknown.items())]
    # A returned string fails at run time (an error above); any other guess stops the path checks.
    unknown = {k: r for k, r in unknown.items() if _returned_string(r) is None}
    for method in source.methods.values():
        for scheduled, line in method.schedules:
            if not callable(getattr(cls, scheduled, None)):
                found.append(
                    Finding(
                        "error",
                        "unknown-method",
                        method.file,
                        line,
                        f"{cls.__qualname__}.{method.name} schedules {scheduled!r}, which is not a"
                        f" method of flow {cls.name!r}: fix the name or add the method",
                    )
                )
    if unknown:
        return found  # a return it cannot follow may lead anywhere: no path errors
    reached = _reached(graph)
    for name, state in cls.states.items():
        at = source.assignments.get(name)
        if name not in reached:
            found.append(
                Finding(
                    "error",
                    "unreachable-state",
                    source.file,
                    at,
                    f"state {name!r} of flow {cls.name!r} is never reached: no handler returns"
                    f" it on any path from {graph.initial!r}: return self.{name} where it"
                    " belongs, or remove the state",
                )
            )
        ways_out = [
            e
            for e in graph.edges
            if e.source == name and e.target != name and e.label != SEND_FAILED
        ]
        if not state.final and state.timeout is None and not ways_out:
            found.append(
                Finding(
                    "error",
                    "stuck-state",
                    source.file,
                    at,
                    f"state {name!r} of flow {cls.name!r} has no way out and no timeout: a"
                    " conversation that enters it stays there until it expires: add a handler"
                    " that returns another state, a State(timeout=...), or make it final=True",
                )
            )
    return found


def _returned_string(ret: Return) -> str | None:
    literal = re.fullmatch(r"""(['"])(\w+)\1""", ret.value)
    return literal[2] if literal is not None else None


def _unknown_return(cls: type[Flow], ret: Return) -> Finding:
    file, line, text = ret.file, ret.line, ret.value
    state = _returned_string(ret)
    if state is not None:
        fix = f"return self.{state} (a State)" if state in cls.states else "return a State"
        return Finding(
            "error",
            "bad-return",
            file,
            line,
            f"flow {cls.name!r} returns the string {text}, not a State: {fix} instead",
        )
    return Finding(
        "warning",
        "unknown-return",
        file,
        line,
        f"smsbot check cannot tell which state `return {text}` of flow {cls.name!r} leads to,"
        " so it skips the unreachable- and stuck-state checks of this flow: return self.<state>"
        " or None (through a helper method is fine)",
    )


def _reached(graph: FlowGraph) -> set[str]:
    todo = [graph.initial, *(e.target for e in graph.edges if e.source == START)]
    reached: set[str] = set()
    while todo:
        state = todo.pop()
        if state in reached or state == START:
            continue
        reached.add(state)
        todo += [e.target for e in graph.edges if e.source == state]
    return reached


# --- template variables -----------------------------------------------------------------------


def _uses(source: FlowSource) -> Iterable[tuple[MethodSource, TemplateUse]]:
    for method in source.methods.values():
        for use in sorted(method.templates, key=lambda u: u.line):
            yield method, use


def _variables(cls: type[Flow], source: FlowSource, templates: TemplateChecker) -> list[Finding]:
    declared = {f.name for f in _fields(cls)} | {TIMEZONE, *cls.required_data}
    writes = [(m, w) for m in source.methods.values() for w in m.data]
    set_keys = {w.key for _, w in writes if w.key is not None}
    computed = next((w.line for _, w in writes if w.key is None), None)
    provided = declared | set_keys | CONTEXT_NAMES
    declaration = cls.start_data.__name__ if cls.start_data is not None else "start_data"
    found = []
    for method, use in _uses(source):
        for name in use.names if use.call != "say" else ():
            facts = templates.facts(name)
            if facts is None:
                continue  # missing (the loader says so) or broken (the template check does)
            for variable in sorted(facts.variables - provided - use.variables):
                if use.open_variables or computed is not None:
                    why = f"convo.data is written with a computed key (line {computed})"
                    if use.open_variables:
                        why = f"convo.{use.call}() also gets **variables"
                    found.append(
                        Finding(
                            "warning",
                            "template-variable",
                            method.file,
                            use.line,
                            f"template {name!r} uses {variable!r}, and smsbot check cannot tell"
                            f" whether it is provided: {why}: pass it by name or use a literal"
                            " key so the check can see it",
                        )
                    )
                    continue
                hint = did_you_mean(variable, provided | use.variables, "{!r}")
                found.append(
                    Finding(
                        "error",
                        "template-variable",
                        method.file,
                        use.line,
                        f"template {name!r} uses {variable!r}, which no start data, step data or"
                        f" template global provides: {hint + ' ' if hint else ''}pass"
                        f" {variable}=... to convo.{use.call}(), set convo.data[{variable!r}]"
                        f" first, or declare it in {declaration}",
                    )
                )
    return found


def _fields(cls: type[Flow]) -> list[Any]:
    try:
        return list(start_fields(cls.start_data))
    except TypeError:
        return []  # the loader reports the declaration


# --- the first message ------------------------------------------------------------------------


def _first_message(cls: type[Flow], source: FlowSource) -> tuple[MethodSource, TemplateUse] | None:
    """The first reply a flow started from outside sends: from start(), else on entering."""
    entered = [cls.initial_state().name] if any(s.initial for s in cls.states.values()) else []
    entered += sorted(source.outcome("start").states & set(cls.states))
    starts = ["start"] + [
        getattr(hook, "__name__", "") for name in entered for hook in cls.states[name].enter_hooks
    ]
    for entry in starts:
        for method in source.reached(entry):
            uses = sorted(method.templates, key=lambda u: u.line)
            if uses:
                return method, uses[0]
    return None


def _opt_out(
    cls: type[Flow], source: FlowSource, templates: TemplateChecker, options: CheckOptions
) -> list[Finding]:
    first = _first_message(cls, source)
    if first is None:
        return []
    method, use = first
    words = "|".join(re.escape(w).replace(r"\ ", r"\s*") for w in options.opt_out_words)
    wording = re.compile(rf"\b({words})\b", re.IGNORECASE)
    texts = [use.text] if use.call == "say" else [templates.source(n) for n in use.names]
    if not texts or any(t is None for t in texts) or all(wording.search(t or "") for t in texts):
        return []
    what = "convo.say(...)" if use.call == "say" else f"template {', '.join(map(repr, use.names))}"
    return [
        Finding(
            "warning",
            "opt-out-wording",
            method.file,
            use.line,
            f"flow {cls.name!r} starts conversations unprompted, and its first message ({what})"
            " does not say how to opt out: add 'Reply STOP to opt out.' to it, or set"
            f" opt_out_notice = False on {cls.__qualname__} if the contact asked for or expects"
            " it",
        )
    ]


# --- timeouts ---------------------------------------------------------------------------------


def _timeouts(cls: type[Flow], source: FlowSource, options: CheckOptions) -> list[Finding]:
    expiry = options.conversation_expiry
    return [
        Finding(
            "warning",
            "timeout-after-expiry",
            source.file,
            source.assignments.get(name),
            f"state {name!r} of flow {cls.name!r} waits {format_duration(state.timeout)}, longer"
            f" than the conversation expiry ({format_duration(expiry)}): the conversation expires"
            " first and the timeout never fires: shorten the timeout or raise"
            " SMSBOT_CONVERSATION_EXPIRY",
        )
        for name, state in cls.states.items()
        if state.timeout is not None and state.timeout > expiry
    ]


# --- keywords ---------------------------------------------------------------------------------


def keyword_findings(
    flows: Mapping[str, type[Flow]], settings: Settings
) -> tuple[list[Finding], set[str]]:
    """Keywords two flows claim on one number, and the flows an inbound message can start."""
    found: list[Finding] = []
    prompted: set[str] = set()
    tables: dict[str, Mapping[str, Any]] = {"every number": {}}
    tables |= {f'[numbers."{number}"]': table for number, table in settings.numbers.items()}
    # a workspace's defaults are its numbers' bindings (engine/router.py)
    tables |= {f"[workspaces.{w.name}]": w.routing for w in settings.workspaces if w.routing}
    for label, table in tables.items():
        names = table.get("flows")
        bound = [n for n in names if n in flows] if isinstance(names, list) else sorted(flows)
        table_words = table.get("keywords")
        table_words = table_words if isinstance(table_words, Mapping) else {}
        chosen = {_normal(w) for w in table_words}
        owners: dict[str, list[str]] = {}
        for name in bound:
            for word in flows[name].triggers:
                owners.setdefault(_normal(word), []).append(name)
        for word, claimed in owners.items():
            prompted.update(claimed)
            if len(claimed) > 1 and word not in chosen:
                found.append(_conflict(word, claimed, label, flows))
        prompted.update(str(f) for f in table_words.values())
        catch_all = table.get("catch_all", DEFAULT_CATCH_ALL)
        if catch_all in bound:
            prompted.add(str(catch_all))
    if not found:
        try:
            Router(settings, flows)
        except ConfigError as exc:
            found.append(Finding("error", "config", "smsbot.toml", None, str(exc)))
    return found, prompted


def _normal(word: object) -> str:
    try:
        return normalize_keyword(str(word))
    except ValueError:
        return str(word)


def _conflict(
    word: str, claimed: list[str], label: str, flows: Mapping[str, type[Flow]]
) -> Finding:
    second = flows[claimed[1]]
    file, line = where(second)
    line = read_source(second).assignments.get("triggers", line)
    return Finding(
        "error",
        "keyword-conflict",
        file,
        line,
        f"{word.upper()} is a trigger of flows {', '.join(map(repr, claimed))} on {label}: a"
        " message can start only one: remove it from all but one flow's triggers, or choose one"
        f' in [numbers."..."] keywords = {{ {word.upper()} = "{claimed[0]}" }}',
    )
