"""What a flow's source says, read with `ast` and never run: returns, templates, data, timers.

For every method of a flow class (and of the flow classes it inherits from) this records the
states it can return (`return self.confirmed`), the helper methods whose result it returns
(`return await self.hand_over(...)`), the templates it sends (`convo.reply("a/b.txt", x=1)`),
the keys it writes into `convo.data`, and the methods it schedules. The loader checks names
with it, `smsbot check` checks paths and variables, and the flow graph draws the transitions.

Only what is written literally can be followed; anything else is recorded as unknown, so a
check can say where it had to stop instead of guessing.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import functools
import inspect
import sys
import textwrap
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = [
    "DataWrite",
    "FlowSource",
    "MethodSource",
    "Outcome",
    "Return",
    "ReturnKind",
    "TemplateUse",
    "read_source",
]


class ReturnKind(enum.StrEnum):
    """What one `return` of a method gives back."""

    STATE = "state"  # return self.<state>
    STAY = "stay"  # return None, a bare return, or the end of the method
    CALL = "call"  # return [await] self.<method>(...): whatever that method returns
    UNKNOWN = "unknown"  # anything else: a variable, getattr(...), an expression


@dataclasses.dataclass(frozen=True, slots=True)
class Return:
    """One `return` statement (or the method's end), with its line in the file."""

    kind: ReturnKind
    value: str  # the state or method name for STATE/CALL, the source text for UNKNOWN
    file: str
    line: int


@dataclasses.dataclass(frozen=True, slots=True)
class TemplateUse:
    """A `convo.reply`, `convo.remind` or `convo.say` call."""

    call: str  # reply | remind | say
    names: tuple[str, ...]  # templates it may render; () when the name cannot be worked out
    literal: bool  # the name (or say's text) is written in the call itself
    variables: frozenset[str]  # keyword arguments handed to the template
    open_variables: bool  # a **mapping is passed too: any variable may come from it
    text: str | None  # convo.say("...") with a literal text
    line: int


@dataclasses.dataclass(frozen=True, slots=True)
class DataWrite:
    """A write into the conversation data; `key` is None when it is computed."""

    key: str | None
    line: int


@dataclasses.dataclass(slots=True)
class MethodSource:
    """What one method of a flow does, as far as its source shows."""

    name: str
    file: str
    line: int
    returns: list[Return] = dataclasses.field(default_factory=list)
    templates: list[TemplateUse] = dataclasses.field(default_factory=list)
    data: list[DataWrite] = dataclasses.field(default_factory=list)
    schedules: list[tuple[str, int]] = dataclasses.field(default_factory=list)  # (method, line)
    calls: list[str] = dataclasses.field(default_factory=list)  # self.<method>(...) it calls


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """Where a method can leave the conversation, with its helper calls followed."""

    states: frozenset[str]
    stays: bool  # it can return None
    unknown: tuple[Return, ...]  # returns that could not be followed


@dataclasses.dataclass(slots=True)
class FlowSource:
    """The source facts of one flow class; `readable` is False when no source could be read."""

    file: str
    line: int
    readable: bool
    methods: dict[str, MethodSource] = dataclasses.field(default_factory=dict)
    assignments: dict[str, int] = dataclasses.field(default_factory=dict)  # class attr -> line

    def outcome(self, method: str) -> Outcome:
        """Every state `method` can return, following `return self.helper(...)` calls."""
        states: set[str] = set()
        unknown: list[Return] = []
        stays = False
        seen: set[str] = set()
        todo = [method]
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            found = self.methods.get(name)
            if found is None:
                stays = True  # inherited from Flow itself: its hooks return None
                continue
            for ret in found.returns:
                if ret.kind is ReturnKind.STATE:
                    states.add(ret.value)
                elif ret.kind is ReturnKind.STAY:
                    stays = True
                elif ret.kind is ReturnKind.CALL:
                    todo.append(ret.value)
                else:
                    unknown.append(ret)
        return Outcome(frozenset(states), stays, tuple(unknown))

    def reached(self, method: str) -> list[MethodSource]:
        """`method` and every method of the flow it calls, directly or not."""
        out: list[MethodSource] = []
        todo, seen = [method], set()
        while todo:
            name = todo.pop(0)
            if name in seen or name not in self.methods:
                continue
            seen.add(name)
            out.append(self.methods[name])
            todo += self.methods[name].calls
        return out

    def line_of(self, method: str | None = None) -> int:
        """The line of `method`, or of the class when it is None or unknown."""
        found = self.methods.get(method or "")
        return found.line if found is not None else self.line


def read_source(cls: type) -> FlowSource:
    """Read the source of flow class `cls` and the flow classes it inherits from."""
    return _read(cls)


@functools.cache
def _read(cls: type) -> FlowSource:
    # Base classes first, so a subclass's methods replace what it overrides.
    bases = [c for c in reversed(cls.__mro__) if _is_user_flow(c)]
    try:
        file = inspect.getsourcefile(cls) or "<unknown>"
        line = inspect.getsourcelines(cls)[1]
    except (OSError, TypeError):
        return FlowSource("<unknown>", 0, readable=False)
    source = FlowSource(file, line, readable=True)
    for base in bases:
        _read_class(base, source)
    return source


def _is_user_flow(cls: type) -> bool:
    # The Flow base class itself (and object) are smsbot's, not the author's.
    return cls.__module__ != "smsbot.engine.flow" and cls is not object


def _read_class(cls: type, into: FlowSource) -> None:
    try:
        lines, start = inspect.getsourcelines(cls)
        file = inspect.getsourcefile(cls) or "<unknown>"
    except (OSError, TypeError):
        return  # a base class defined where its source cannot be read: skip its methods
    tree = ast.parse(textwrap.dedent("".join(lines)))
    body = tree.body[0]
    if not isinstance(body, ast.ClassDef):
        return
    module = vars(sys.modules[cls.__module__]) if cls.__module__ in sys.modules else {}
    for node in body.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    into.assignments[target.id] = start + node.lineno - 1
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            into.methods[node.name] = _MethodReader(node, file, start - 1, module).read()


class _MethodReader:
    """Collects the facts of one method."""

    def __init__(
        self,
        node: ast.FunctionDef | ast.AsyncFunctionDef,
        file: str,
        offset: int,
        module: dict[str, Any],
    ) -> None:
        self.node = node
        self.offset = offset
        self.module = module
        params = [a.arg for a in node.args.args]
        self.convo = params[1] if len(params) > 1 else "convo"
        self.out = MethodSource(node.name, file, offset + node.lineno)

    def read(self) -> MethodSource:
        for inner in _walk_own(self.node):
            if isinstance(inner, ast.Return):
                self.out.returns += self._value(inner.value, inner)
            elif isinstance(inner, ast.Call):
                self._call(inner)
            elif isinstance(inner, ast.Assign | ast.AugAssign | ast.AnnAssign):
                targets = inner.targets if isinstance(inner, ast.Assign) else [inner.target]
                for target in targets:
                    self._assign(target, inner.value)
        if _falls_through(self.node.body):
            end = self._line(self.node.body[-1])
            self.out.returns.append(Return(ReturnKind.STAY, "", self.out.file, end))
        self.out.returns.sort(key=lambda r: r.line)
        return self.out

    def _line(self, node: ast.AST) -> int:
        return self.offset + getattr(node, "lineno", 1)

    def _value(self, value: ast.expr | None, at: ast.AST) -> list[Return]:
        file, line = self.out.file, self._line(at)
        if isinstance(value, ast.IfExp):
            return self._value(value.body, at) + self._value(value.orelse, at)
        if value is None or (isinstance(value, ast.Constant) and value.value is None):
            return [Return(ReturnKind.STAY, "", file, line)]
        if isinstance(value, ast.Await):
            value = value.value
        if _is_self_attr(value):
            assert isinstance(value, ast.Attribute)
            return [Return(ReturnKind.STATE, value.attr, file, line)]
        if isinstance(value, ast.Call) and _is_self_attr(value.func):
            assert isinstance(value.func, ast.Attribute)
            return [Return(ReturnKind.CALL, value.func.attr, file, line)]
        return [Return(ReturnKind.UNKNOWN, ast.unparse(value), file, line)]

    def _call(self, call: ast.Call) -> None:
        func = call.func
        if _is_self_attr(func):
            assert isinstance(func, ast.Attribute)
            self.out.calls.append(func.attr)
            return
        if not isinstance(func, ast.Attribute):
            return
        owner = func.value
        if self._is_convo(owner):
            if func.attr in ("reply", "remind", "say"):
                self.out.templates.append(self._template_use(func.attr, call))
            elif func.attr == "schedule" and call.args:
                target = call.args[0]
                if _is_self_attr(target):
                    assert isinstance(target, ast.Attribute)
                    self.out.schedules.append((target.attr, self._line(call)))
                elif isinstance(target, ast.Constant) and isinstance(target.value, str):
                    self.out.schedules.append((target.value, self._line(call)))
        elif self._is_data(owner) and func.attr in ("setdefault", "update"):
            self._data_call(func.attr, call)

    def _template_use(self, kind: str, call: ast.Call) -> TemplateUse:
        first = call.args[0] if call.args else None
        literal = isinstance(first, ast.Constant) and isinstance(first.value, str)
        skip = {"at", "name"} if kind == "remind" else set()
        keywords = {k.arg for k in call.keywords if k.arg is not None} - skip
        if kind == "say":
            text = first.value if isinstance(first, ast.Constant) and literal else None
            assert text is None or isinstance(text, str)
            return TemplateUse(kind, (), literal, frozenset(), False, text, self._line(call))
        names = tuple(self._strings(first)) if first is not None else ()
        return TemplateUse(
            call=kind,
            names=names,
            literal=literal,
            variables=frozenset(keywords),
            open_variables=any(k.arg is None for k in call.keywords),
            text=None,
            line=self._line(call),
        )

    def _strings(self, node: ast.expr) -> list[str]:
        """The strings `node` can be: a literal, a module constant, or any value of a dict."""
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node.value]
        if isinstance(node, ast.IfExp):
            return self._strings(node.body) + self._strings(node.orelse)
        if isinstance(node, ast.Name):
            value = self.module.get(node.id)
            return [value] if isinstance(value, str) else []
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
            table = self.module.get(node.value.id)
            if isinstance(table, dict) and all(isinstance(v, str) for v in table.values()):
                return list(table.values())
        return []

    def _assign(self, target: ast.expr, value: ast.expr | None) -> None:
        line = self._line(target)
        if isinstance(target, ast.Subscript) and self._is_data(target.value):
            key = target.slice
            literal = isinstance(key, ast.Constant) and isinstance(key.value, str)
            self.out.data.append(DataWrite(key.value if literal else None, line))  # type: ignore[attr-defined]
        elif isinstance(target, ast.Attribute) and self._is_convo(target.value):
            if target.attr == "timezone":
                self.out.data.append(DataWrite("timezone", line))
            elif target.attr == "data":
                self._whole_data(value, line)

    def _whole_data(self, value: ast.expr | None, line: int) -> None:
        if isinstance(value, ast.Dict) and all(
            isinstance(k, ast.Constant) and isinstance(k.value, str) for k in value.keys
        ):
            for key in value.keys:
                assert isinstance(key, ast.Constant)
                self.out.data.append(DataWrite(str(key.value), line))
        else:
            self.out.data.append(DataWrite(None, line))

    def _data_call(self, method: str, call: ast.Call) -> None:
        line = self._line(call)
        if method == "setdefault":
            first = call.args[0] if call.args else None
            literal = isinstance(first, ast.Constant) and isinstance(first.value, str)
            self.out.data.append(DataWrite(first.value if literal else None, line))  # type: ignore[union-attr]
            return
        for arg in call.args:
            self._whole_data(arg, line)
        for keyword in call.keywords:
            self.out.data.append(DataWrite(keyword.arg, line))

    def _is_convo(self, node: ast.expr) -> bool:
        return isinstance(node, ast.Name) and node.id == self.convo

    def _is_data(self, node: ast.expr) -> bool:
        return (
            isinstance(node, ast.Attribute) and node.attr == "data" and self._is_convo(node.value)
        )


def _is_self_attr(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    )


def _walk_own(func: ast.AST) -> Iterator[ast.AST]:
    """Walk a function's body without going into nested functions and lambdas."""
    todo = list(ast.iter_child_nodes(func))
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            todo += ast.iter_child_nodes(node)


def _falls_through(body: Iterable[ast.stmt]) -> bool:
    """Whether running `body` can reach its end (and so return None)."""
    statements = list(body)
    if not statements:
        return True
    last = statements[-1]
    if isinstance(last, ast.Return | ast.Raise):
        return False
    if isinstance(last, ast.If):
        return _falls_through(last.body) or _falls_through(last.orelse)
    if isinstance(last, ast.Try):
        if last.finalbody and not _falls_through(last.finalbody):
            return False
        handled = any(_falls_through(h.body) for h in last.handlers)
        return handled or _falls_through(last.orelse or last.body)
    if isinstance(last, ast.With | ast.AsyncWith):
        return _falls_through(last.body)
    if isinstance(last, ast.Match):
        return True  # a match without a wildcard case can fall through
    return True
