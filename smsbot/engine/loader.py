"""Load flow modules from a directory and check them before any message reaches them.

What is checked (each problem names the file and, where it can, the line and the fix):

- the module imports (syntax errors, import errors, exceptions at import time);
- every Flow has a `name`, and no two flows share one;
- exactly one initial state; final states have no transitions and no timeout; an on_timeout
  handler belongs to a state with a timeout; a free_text state has an otherwise handler;
- no state listens for a word that always means STOP, START or HELP (it could never arrive);
- a handler's `return self.X` names a State of its flow (read from the source, not run);
- `convo.reply("name.txt")` and `convo.remind("name.txt", ...)` with a literal name name a
  template that exists.

Template variables are not checked: a START can carry any data, so a variable the loader cannot
see may still be there. An undefined one fails the step that renders it (and your tests).
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import sys
import textwrap
import traceback
from collections.abc import Iterable
from pathlib import Path

from smsbot.engine.compliance import ComplianceRules
from smsbot.engine.flow import Flow
from smsbot.hints import did_you_mean
from smsbot.sms.templates import SmsTemplates

__all__ = ["FlowLoadError", "check_flows", "load_flows"]

MODULE_PREFIX = "smsbot_user_flows"  # private, so a flow file never shadows a real package
_HOOKS = ("start", "on_expire", "on_send_failed")


class FlowLoadError(Exception):
    """A flow module cannot be loaded or a flow is invalid; one problem per line."""


def load_flows(directory: Path, templates: SmsTemplates) -> dict[str, type[Flow]]:
    """Import every flows/*.py (not _*.py), check the flows in them, and return them by name."""
    if not directory.is_dir():
        raise FlowLoadError(
            f"flows directory {directory} does not exist: create it or set SMSBOT_FLOWS_DIR"
        )
    problems: list[str] = []
    classes: list[type[Flow]] = []
    for path in sorted(directory.glob("*.py")):
        if path.name.startswith("_"):
            continue
        try:
            classes += _import(path)
        except FlowLoadError as exc:
            problems.append(str(exc))
    try:
        check_flows(classes, templates)
    except FlowLoadError as exc:
        problems.append(str(exc))
    if problems:
        raise FlowLoadError("\n".join(problems))
    return {cls.name: cls for cls in classes}


def _import(path: Path) -> list[type[Flow]]:
    name = f"{MODULE_PREFIX}.{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise FlowLoadError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and typing look a class's module up here
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        del sys.modules[name]
        raise FlowLoadError(f"{path} line {exc.lineno}: {exc.msg}: fix the syntax") from None
    except Exception as exc:
        del sys.modules[name]
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path)]
        line = f" line {frames[-1].lineno}" if frames else ""
        hint = " (is it installed?)" if isinstance(exc, ImportError) else ""
        raise FlowLoadError(
            f"{path}{line}: importing it raised {type(exc).__name__}: {exc}{hint}: fix the module"
        ) from None
    return [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, Flow) and obj.__module__ == name
    ]


def _where(cls: type, lineno: int | None = None) -> str:
    try:
        file = inspect.getsourcefile(cls) or "<unknown>"
        line = lineno if lineno is not None else inspect.getsourcelines(cls)[1]
    except (OSError, TypeError):
        return f"flow class {cls.__qualname__}"
    return f"{file} line {line}"


def check_flows(classes: Iterable[type[Flow]], templates: SmsTemplates) -> None:
    """Raise FlowLoadError listing every problem of these flows (see the module docstring)."""
    problems: list[str] = []
    seen: dict[str, type[Flow]] = {}
    for cls in classes:
        problems += _check_structure(cls)
        problems += _check_source(cls, templates)
        if not cls.name:
            continue
        if (other := seen.get(cls.name)) is not None:
            problems.append(
                f"flow name {cls.name!r} is used twice: {_where(other)} ({other.__qualname__})"
                f" and {_where(cls)} ({cls.__qualname__}): give each flow its own name"
            )
        seen[cls.name] = cls
    if problems:
        raise FlowLoadError("\n".join(problems))


def _check_structure(cls: type[Flow]) -> list[str]:
    where, label = _where(cls), cls.__qualname__
    if not isinstance(cls.name, str) or not cls.name.strip():
        return [f'{where}: flow {label} has no name: add name = "{label.lower()}"']
    problems = []
    initial = [s.name for s in cls.states.values() if s.initial]
    if len(initial) != 1:
        found = f"{len(initial)} ({', '.join(initial)})" if initial else "none"
        problems.append(
            f"{where}: flow {cls.name!r} needs exactly one State(initial=True), found {found}"
        )
    reserved = set(ComplianceRules().reserved_words)
    for state in cls.states.values():
        if state.final and (
            state.keywords or state.rules or state.fallback or state.timeout or state.free_text
        ):
            problems.append(
                f"{where}: final state {state.name!r} of flow {cls.name!r} has transitions, a"
                " timeout or free_text, but entering it ends the conversation: remove them or"
                " final=True"
            )
        elif state.free_text and state.fallback is None:
            problems.append(
                f"{where}: state {state.name!r} of flow {cls.name!r} is free_text but has no"
                f" @{state.name}.otherwise handler to take the answers: add one"
            )
        if state.timeout_handler is not None and state.timeout is None:
            problems.append(
                f"{where}: state {state.name!r} of flow {cls.name!r} has an on_timeout handler"
                " but no timeout: give it State(timeout=timedelta(...))"
            )
        if words := sorted(reserved & set(state.keywords)):
            problems.append(
                f"{where}: state {state.name!r} of flow {cls.name!r} listens for"
                f" {', '.join(w.upper() for w in words)}, which always means opt-out, opt-in or"
                " help and never reaches a flow: choose another keyword"
            )
    return problems


def _handler_names(cls: type[Flow]) -> set[str]:
    names = set(_HOOKS)
    for state in cls.states.values():
        names |= {getattr(h, "__name__", "") for h in state.handlers()}
    return names


def _check_source(cls: type[Flow], templates: SmsTemplates) -> list[str]:
    try:
        lines, start = inspect.getsourcelines(cls)
        file = inspect.getsourcefile(cls) or "<unknown>"
    except (OSError, TypeError):
        return []  # defined where its source cannot be read (a REPL): nothing to check
    tree = ast.parse(textwrap.dedent("".join(lines)))
    body = tree.body[0]
    if not isinstance(body, ast.ClassDef):
        return []
    handlers = _handler_names(cls)
    problems = []
    for node in body.body:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        params = [a.arg for a in node.args.args]
        convo = params[1] if len(params) > 1 else "convo"
        for inner in _walk_own(node):
            line = f"{file} line {start + getattr(inner, 'lineno', 1) - 1}"
            if node.name in handlers and isinstance(inner, ast.Return):
                problems += _check_return(cls, node.name, inner, line)
            elif isinstance(inner, ast.Call):
                problems += _check_template_call(inner, convo, templates, line)
    return problems


def _walk_own(func: ast.AST) -> Iterable[ast.AST]:
    """Walk a function's body without going into nested functions and lambdas."""
    todo = list(ast.iter_child_nodes(func))
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            todo += ast.iter_child_nodes(node)


def _check_return(cls: type[Flow], method: str, node: ast.Return, line: str) -> list[str]:
    value = node.value
    if not (
        isinstance(value, ast.Attribute)
        and isinstance(value.value, ast.Name)
        and value.value.id == "self"
    ):
        return []
    if value.attr in cls.states:
        return []
    hint = did_you_mean(value.attr, cls.states, "self.{}")
    hint = f"{hint} " if hint else ""
    return [
        f"{line}: {cls.__qualname__}.{method} returns self.{value.attr}, which is not a State"
        f" of flow {cls.name!r}: {hint}states are {', '.join(cls.states)}"
    ]


def _check_template_call(
    call: ast.Call, convo: str, templates: SmsTemplates, line: str
) -> list[str]:
    func = call.func
    if not (
        isinstance(func, ast.Attribute)
        and func.attr in ("reply", "remind")
        and isinstance(func.value, ast.Name)
        and func.value.id == convo
        and call.args
        and isinstance(call.args[0], ast.Constant)
        and isinstance(call.args[0].value, str)
    ):
        return []
    name = call.args[0].value
    if templates.exists(name):
        return []
    hint = did_you_mean(name, templates.names(), "{!r}")
    hint = f"{hint} " if hint else ""
    return [
        f"{line}: convo.{func.attr}({name!r}) names a template that does not exist: {hint}"
        "create it under the templates directory or fix the name"
    ]
