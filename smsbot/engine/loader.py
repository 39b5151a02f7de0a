"""Load flow modules from a directory and check them before any message reaches them.

What is checked (each problem names the file and, where it can, the line and the fix):

- the module imports (syntax errors, import errors, exceptions at import time);
- every Flow has a `name`, and no two flows share one;
- exactly one initial state; final states have no transitions and no timeout; an on_timeout
  handler belongs to a state with a timeout;
- no state listens for a word that always means STOP, START or HELP (it could never arrive);
- a handler's `return self.X` names a State of its flow, also through the helpers whose result
  it returns (read from the source by smsbot.engine.flowsource, not run);
- `convo.reply("name.txt")` and `convo.remind("name.txt", ...)` name a template that exists
  (a literal name, or a module constant or dict of names);
- a flow's `start_data` declaration has only fields smsbot can check.

What needs more than one flow's code to decide (unreachable states, template variables, segment
counts) is `smsbot check`'s job: smsbot.engine.checks builds on the problems found here.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import sys
import traceback
from collections.abc import Iterable, Sequence
from pathlib import Path

from smsbot.engine.compliance import ComplianceRules
from smsbot.engine.flow import Flow
from smsbot.engine.flowsource import (
    FlowSource,
    MethodSource,
    Return,
    ReturnKind,
    TemplateUse,
    read_source,
)
from smsbot.engine.startdata import start_fields
from smsbot.hints import did_you_mean
from smsbot.sms.templates import SmsTemplates

__all__ = [
    "FlowLoadError",
    "Problem",
    "check_flows",
    "flow_problems",
    "import_flows",
    "load_flows",
    "where",
]

MODULE_PREFIX = "smsbot_user_flows"  # private, so a flow file never shadows a real package
_HOOKS = ("start", "on_expire", "on_send_failed")


@dataclasses.dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a flow: where (file, line) and what, ending with the fix."""

    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file} line {self.line}" if self.line else self.file
        return f"{where}: {self.message}"


class FlowLoadError(Exception):
    """A flow module cannot be loaded or a flow is invalid; one problem per line."""

    def __init__(self, problems: str | Sequence[Problem]) -> None:
        self.problems = list(problems) if not isinstance(problems, str) else []
        super().__init__(problems if isinstance(problems, str) else "\n".join(map(str, problems)))


def load_flows(directory: Path, templates: SmsTemplates) -> dict[str, type[Flow]]:
    """Import every flows/*.py (not _*.py), check the flows in them, and return them by name."""
    classes, problems = import_flows(directory)
    problems += flow_problems(classes, templates)
    if problems:
        raise FlowLoadError(problems)
    return {cls.name: cls for cls in classes}


def import_flows(directory: Path) -> tuple[list[type[Flow]], list[Problem]]:
    """Import every flows/*.py (not _*.py): the Flow classes found, and the modules that failed."""
    if not directory.is_dir():
        raise FlowLoadError(
            f"flows directory {directory} does not exist: create it or set SMSBOT_FLOWS_DIR"
        )
    problems: list[Problem] = []
    classes: list[type[Flow]] = []
    for path in sorted(directory.glob("*.py")):
        if path.name.startswith("_"):
            continue
        try:
            classes += _import(path)
        except FlowLoadError as exc:
            problems += exc.problems
    return classes, problems


def _import(path: Path) -> list[type[Flow]]:
    name = f"{MODULE_PREFIX}.{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise FlowLoadError([Problem(str(path), None, "cannot be imported as a Python module")])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and typing look a class's module up here
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        del sys.modules[name]
        problem = Problem(str(path), exc.lineno, f"{exc.msg}: fix the syntax")
        raise FlowLoadError([problem]) from None
    except Exception as exc:
        del sys.modules[name]
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path)]
        hint = " (is it installed?)" if isinstance(exc, ImportError) else ""
        raise FlowLoadError(
            [
                Problem(
                    str(path),
                    frames[-1].lineno if frames else None,
                    f"importing it raised {type(exc).__name__}: {exc}{hint}: fix the module",
                )
            ]
        ) from None
    return [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, Flow) and obj.__module__ == name
    ]


def where(cls: type) -> tuple[str, int | None]:
    """The file and line of class `cls`, as far as its source can be found."""
    try:
        return inspect.getsourcefile(cls) or "<unknown>", inspect.getsourcelines(cls)[1]
    except (OSError, TypeError):
        return f"flow class {cls.__qualname__}", None


def _shown(cls: type) -> str:
    return str(Problem(*where(cls), "")).removesuffix(": ")


def check_flows(classes: Iterable[type[Flow]], templates: SmsTemplates) -> None:
    """Raise FlowLoadError listing every problem of these flows (see the module docstring)."""
    if problems := flow_problems(classes, templates):
        raise FlowLoadError(problems)


def flow_problems(classes: Iterable[type[Flow]], templates: SmsTemplates) -> list[Problem]:
    """Every problem of these flows (see the module docstring), in the order found."""
    problems: list[Problem] = []
    seen: dict[str, type[Flow]] = {}
    for cls in classes:
        problems += _check_structure(cls)
        problems += _check_source(cls, templates)
        if not cls.name:
            continue
        if (other := seen.get(cls.name)) is not None:
            problems.append(
                Problem(
                    *where(cls),
                    f"flow name {cls.name!r} is used twice: {_shown(other)}"
                    f" ({other.__qualname__}) and {_shown(cls)} ({cls.__qualname__}): give"
                    " each flow its own name",
                )
            )
        seen[cls.name] = cls
    return problems


def _check_structure(cls: type[Flow]) -> list[Problem]:
    file, line = where(cls)
    label = cls.__qualname__
    if not isinstance(cls.name, str) or not cls.name.strip():
        return [Problem(file, line, f'flow {label} has no name: add name = "{label.lower()}"')]
    problems: list[str] = []
    initial = [s.name for s in cls.states.values() if s.initial]
    if len(initial) != 1:
        found = f"{len(initial)} ({', '.join(initial)})" if initial else "none"
        problems.append(f"flow {cls.name!r} needs exactly one State(initial=True), found {found}")
    reserved = set(ComplianceRules().reserved_words)
    for state in cls.states.values():
        if state.final and (state.keywords or state.rules or state.fallback or state.timeout):
            problems.append(
                f"final state {state.name!r} of flow {cls.name!r} has transitions or a"
                " timeout, but entering it ends the conversation: remove them or final=True"
            )
        if state.timeout_handler is not None and state.timeout is None:
            problems.append(
                f"state {state.name!r} of flow {cls.name!r} has an on_timeout handler"
                " but no timeout: give it State(timeout=timedelta(...))"
            )
        if words := sorted(reserved & set(state.keywords)):
            problems.append(
                f"state {state.name!r} of flow {cls.name!r} listens for"
                f" {', '.join(w.upper() for w in words)}, which always means opt-out, opt-in or"
                " help and never reaches a flow: choose another keyword"
            )
    try:
        start_fields(cls.start_data)
    except TypeError as exc:
        problems.append(f"{exc}: fix the declaration or leave start_data = None")
    return [Problem(file, line, message) for message in problems]


def _handler_names(cls: type[Flow]) -> set[str]:
    names = set(_HOOKS)
    for state in cls.states.values():
        names |= {getattr(h, "__name__", "") for h in state.handlers()}
    return names


def _check_source(cls: type[Flow], templates: SmsTemplates) -> list[Problem]:
    source = read_source(cls)
    if not source.readable:
        return []  # defined where its source cannot be read (a REPL): nothing to check
    problems: list[Problem] = []
    followed: set[str] = set()
    for handler in sorted(_handler_names(cls)):
        for method in _returned_from(source, handler):
            if method.name in followed:
                continue
            followed.add(method.name)
            for ret in method.returns:
                if ret.kind is ReturnKind.STATE and ret.value not in cls.states:
                    problems.append(_bad_return(cls, method, ret))
    for method in source.methods.values():
        for use in method.templates:
            for name in use.names:
                if not templates.exists(name):
                    problems.append(_missing_template(method.file, use, name, templates))
    return problems


def _returned_from(source: FlowSource, method: str) -> Iterable[MethodSource]:
    """`method` and the helpers whose result it returns (return self.helper(...))."""
    seen: set[str] = set()
    todo = [method]
    while todo:
        name = todo.pop()
        if name in seen or name not in source.methods:
            continue
        seen.add(name)
        found = source.methods[name]
        yield found
        todo += [r.value for r in found.returns if r.kind is ReturnKind.CALL]


def _bad_return(cls: type[Flow], method: MethodSource, ret: Return) -> Problem:
    hint = did_you_mean(ret.value, cls.states, "self.{}")
    hint = f"{hint} " if hint else ""
    return Problem(
        method.file,
        ret.line,
        f"{cls.__qualname__}.{method.name} returns self.{ret.value}, which is not a State"
        f" of flow {cls.name!r}: {hint}states are {', '.join(cls.states)}",
    )


def _missing_template(file: str, use: TemplateUse, name: str, templates: SmsTemplates) -> Problem:
    hint = did_you_mean(name, templates.names(), "{!r}")
    hint = f"{hint} " if hint else ""
    call = f"convo.{use.call}({name!r})" if use.literal else f"convo.{use.call}(...) may render"
    return Problem(
        file,
        use.line,
        f"{call} names a template that does not exist: {hint}"
        "create it under the templates directory or fix the name",
    )
