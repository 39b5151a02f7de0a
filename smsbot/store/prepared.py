"""Hot statements: written once in Core, run through sqlite3's own cursor on SQLite.

Measured (bench/README.md, issue 13): SQLAlchemy Core cost about a third of the database
threads' CPU on a turn (~190 µs of ~650 µs a fired reminder): a cache key built per call,
`construct_params`, an execution context and its per-row bind processing, `Row` objects. For a
fixed statement none of that changes from one call to the next. `Prepared` compiles its Core
statement once per dialect and parameter shape and keeps what the execution context would
work out every time: the SQL, the positional order, each bind's type processor, each result
column's. A call is then a tuple per row and one `cursor.execute`/`executemany`.

It only takes that path where it gives the same answer as Core:

- SQLite through the standard library's `sqlite3` inside a transaction the `Connection` began
  (so BEGIN IMMEDIATE and the commit stay SQLAlchemy's); any other driver (PostgreSQL,
  aiosqlite's adapter) runs the statement through Core, unchanged.
- No column the call leaves out needs a Python-side default (`insert_prefetch`), and no bind
  has a callable value: those statements go through Core every time.
- An empty list for an expanding `IN` goes through Core (it renders its own empty set).

Engine events still see every statement (`before_cursor_execute`, `after_cursor_execute`: the
query-plan tests and the write-transaction tests record them), and a database error is raised
as SQLAlchemy's (`sqlalchemy.exc.DBAPIError.instance`, parameters hidden as the engine says).
Result rows are named tuples: attribute access and unpacking, as with `Row`.
"""

from __future__ import annotations

import collections
import dataclasses
import operator
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Dialect, exc
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.sql.expression import Executable
from sqlalchemy.types import TupleType

from smsbot.store.upsert import as_arrays, columns_of

Processor = Callable[[Any], Any] | None
_POSTCOMPILE = "__[POSTCOMPILE_{}]"
# A multi-row INSERT's page: SQLite (3.32+) takes at most 32,766 parameters a statement;
# Core's insertmanyvalues pages at 1,000 rows.
_MAX_VARIABLES = 32_000
_MAX_ROWS = 1_000


@dataclasses.dataclass(frozen=True, slots=True)
class _Plan:
    """A statement compiled for sqlite3, with what each call needs to bind and read it."""

    sql: str
    names: tuple[str, ...]  # the positional parameters, in order
    fixed: Mapping[str, Any]  # values the statement carries itself (literals in Core)
    binders: tuple[Any, ...]  # per name: a processor, None, or per element of a tuple
    expanding: frozenset[str]  # IN-list parameters, rendered per call
    row: Any  # the named-tuple type of a result row (None: no result)
    readers: tuple[Processor, ...]  # per result column
    args: _RowArgs | None  # how one row of parameters becomes arguments (None: expanding)


@dataclasses.dataclass(frozen=True, slots=True)
class _RowArgs:
    """One row's positional arguments, worked out once per plan: the values the call gives
    are read in one `itemgetter` call, the statement's own are bound already, and only the
    positions with a type processor run one (binding was a third of a bulk start's writer;
    this removes the Python work per name, the type processors' own work remains)."""

    pick: Callable[[Mapping[str, Any]], Any]  # the given values, in their positions' order
    base: tuple[Any, ...]  # every position: the statement's own values bound, None for given
    given: tuple[int, ...]  # positions of the given values (all of them: `base` unused)
    convert: tuple[tuple[int, Callable[[Any], Any]], ...]  # given positions to process

    def __call__(self, params: Mapping[str, Any]) -> Sequence[Any]:
        picked = self.pick(params)
        if len(self.given) == len(self.base):
            if not self.convert:
                return picked  # type: ignore[no-any-return]
            values = list(picked)
        else:
            values = list(self.base)
            for at, value in zip(self.given, picked, strict=True):
                values[at] = value
        for at, process in self.convert:
            values[at] = process(values[at])
        return values


def _row_args(
    names: Sequence[str], binders: Sequence[Any], keys: Sequence[str], fixed: Mapping[str, Any]
) -> _RowArgs:
    given = tuple(i for i, name in enumerate(names) if name in keys)
    getter = operator.itemgetter(*(names[i] for i in given)) if given else None
    if getter is None:
        pick: Callable[[Mapping[str, Any]], Any] = lambda _params: ()  # noqa: E731
    elif len(given) == 1:
        pick = lambda params: (getter(params),)  # noqa: E731
    else:
        pick = getter
    base = tuple(
        None if i in given else (fixed[n] if binders[i] is None else binders[i](fixed[n]))
        for i, n in enumerate(names)
    )
    convert = tuple((i, binders[i]) for i in given if binders[i] is not None)
    return _RowArgs(pick, base, given, convert)


class Prepared:
    """A Core statement run on SQLite through the DB-API, compiled once (see above)."""

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._plans: dict[tuple[str, ...], _Plan | None] = {}
        self._binders: dict[tuple[bool, tuple[str, ...]], Binder] = {}
        self._arrays: dict[tuple[str, ...], Executable | None] = {}

    def all(self, conn: Connection, params: Mapping[str, Any] | None = None) -> list[Any]:
        """Run with one set of parameters; return every row (a SELECT, or DML … RETURNING)."""
        return list(self._execute(conn, params or {}, lazy=False))

    def each(self, conn: Connection, params: Mapping[str, Any] | None = None) -> Iterator[Any]:
        """Run a SELECT; its rows as they are read, so that a caller can stop early."""
        yield from self._execute(conn, params or {}, lazy=True)

    def _execute(self, conn: Connection, params: Mapping[str, Any], lazy: bool) -> Iterable[Any]:
        raw, plan = self._plan(conn, params)
        sql, args = _bind(plan, params) if plan is not None else (None, [])
        if raw is None or plan is None or sql is None:
            result = conn.execute(self.statement, dict(params))
            return result if result.returns_rows else ()
        cursor = _run(conn, raw, sql, args, many=False)
        if plan.row is None:  # no result (None), or text() with no typed columns: plain tuples
            rows = cursor if lazy else cursor.fetchall()
            return () if cursor.description is None else rows
        return _read(plan, cursor if lazy else cursor.fetchall())

    def many(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run once per row of parameters (executemany; every row has the first row's keys).
        On PostgreSQL an INSERT that `upsert.as_arrays` can express is one statement instead."""
        if not rows:
            return
        if (arrays := self._arrays_for(conn, rows[0])) is not None:
            conn.execute(arrays, columns_of(rows, tuple(rows[0])))
            return
        raw, plan = self._plan(conn, rows[0])
        if raw is None or plan is None or plan.expanding:
            conn.execute(self.statement, [dict(r) for r in rows])
            return
        assert plan.args is not None  # not expanding
        _run(conn, raw, plan.sql, list(map(plan.args, rows)), many=True)

    def inserted(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
        """Run an INSERT … RETURNING for many rows; the rows it returns, in no set order.

        `sqlite3`'s executemany returns no rows, so on SQLite this is one statement with a
        VALUES group per row, in pages under SQLite's limit on parameters (what Core's
        "insertmanyvalues" renders too, without its per-batch compiling and `Row`s). On
        PostgreSQL an INSERT that `upsert.as_arrays` can express (a plain one, or an
        `insert_on_conflict` that skips conflicts) binds one array a column: one SQL text at
        any number of rows, where Core's multi-row
        VALUES renders one per row count, each a new prepare once asyncpg's cache of 100 a
        connection has moved on.
        """
        if not rows:
            return []
        if (arrays := self._arrays_for(conn, rows[0])) is not None:
            return list(conn.execute(arrays, columns_of(rows, tuple(rows[0]))))
        raw, plan = self._plan(conn, rows[0])
        split = None if plan is None or plan.expanding or plan.row is None else _values(plan)
        if raw is None or plan is None or split is None:
            return list(conn.execute(self.statement, [dict(r) for r in rows]))
        assert plan.args is not None  # not expanding
        return _insert_pages(conn, raw, plan, split, list(map(plan.args, rows)))

    def _arrays_for(self, conn: Connection, first: Mapping[str, Any]) -> Executable | None:
        """PostgreSQL: this INSERT over one array a column (upsert.as_arrays), if it has one."""
        if conn.dialect.name != "postgresql":
            return None
        shape = tuple(first)
        if shape not in self._arrays:
            self._arrays[shape] = as_arrays(self.statement, shape)
        return self._arrays[shape]

    def _plan(
        self, conn: Connection, params: Mapping[str, Any]
    ) -> tuple[sqlite3.Connection | None, _Plan | None]:
        raw = conn.connection.driver_connection
        if not isinstance(raw, sqlite3.Connection) or not conn.in_transaction():
            return None, None
        return raw, self.plan_for(conn.dialect, tuple(params))

    def binder(self, dialect: Dialect | None, keys: Sequence[str]) -> Binder:
        """A Binder for rows with `keys`, made once per kind of connection (see Binder)."""
        at = (dialect is None, tuple(keys))
        found = self._binders.get(at)
        if found is None:
            found = self._binders[at] = Binder(self, dialect, keys)
        return found

    def plan_for(self, dialect: Dialect, shape: tuple[str, ...]) -> _Plan | None:
        """The plan for rows with keys `shape` (sqlite3's dialect: the only one plans run on)."""
        try:
            return self._plans[shape]
        except KeyError:
            plan = self._plans[shape] = _compile(self.statement, dialect, shape)
            return plan


def write_dialect(conn: Connection) -> Dialect | None:
    """sqlite3's dialect when `conn` is a sqlite3 connection (rows bound for it run as they
    are), else None: what `Database.binds_ahead` says of the connections its writes use."""
    raw = conn.connection.driver_connection
    return conn.dialect if isinstance(raw, sqlite3.Connection) else None


class Binder:
    """Rows of one `Prepared` statement and one parameter shape, bound ahead of the transaction
    that runs them: `many`'s per-row binding (type processors, JSON, datetimes) done where no
    write lock is held, so that the transaction only sets the ids it alone knows (`put`) and
    hands the rows to sqlite3.

    `dialect`: `Database.binds_ahead`, sqlite3's when the database's writes run on sqlite3
    connections; None otherwise, and then a row stays the mapping it was given and runs
    through `Prepared.many` (Core).
    """

    def __init__(self, prepared: Prepared, dialect: Dialect | None, keys: Sequence[str]) -> None:
        self.prepared = prepared
        plan = prepared.plan_for(dialect, tuple(keys)) if dialect is not None else None
        self._plan = plan if plan is not None and plan.args is not None else None
        self._at: dict[str, list[int]] = {}
        for i, name in enumerate(self._plan.names if self._plan is not None else ()):
            self._at.setdefault(name, []).append(i)

    def __call__(self, params: Mapping[str, Any]) -> Any:
        """One row, bound: a list of processed positional values, or `params` itself."""
        if self._plan is None:
            return params
        assert self._plan.args is not None  # checked in __init__
        return list(self._plan.args(params))

    def put(self, row: Any, name: str, value: Any) -> None:
        """Set parameter `name` of a bound row (an id the transaction just learnt)."""
        if self._plan is None:
            row[name] = value
            return
        for at in self._at[name]:
            process = self._plan.binders[at]
            row[at] = value if process is None else process(value)

    def many(self, conn: Connection, rows: Sequence[Any]) -> None:
        """Run the statement once per bound row (executemany)."""
        if not rows:
            return
        if self._plan is None:
            self.prepared.many(conn, rows)
            return
        _run(conn, self._raw(conn), self._plan.sql, rows, many=True)

    def inserted(self, conn: Connection, rows: Sequence[Any]) -> list[Any]:
        """An INSERT … RETURNING of bound rows (`Prepared.inserted`)."""
        if not rows:
            return []
        plan = self._plan
        if plan is None:
            return self.prepared.inserted(conn, rows)
        split = None if plan.row is None else _values(plan)
        if split is None:
            raise TypeError("Binder.inserted: the statement is no one-row INSERT … RETURNING")
        return _insert_pages(conn, self._raw(conn), plan, split, rows)

    @staticmethod
    def _raw(conn: Connection) -> sqlite3.Connection:
        raw = conn.connection.driver_connection
        if not isinstance(raw, sqlite3.Connection) or not conn.in_transaction():
            # a programming error: Database.binds_ahead said this database writes on sqlite3
            raise RuntimeError("rows bound for sqlite3 were run on another kind of connection")
        return raw


def _insert_pages(
    conn: Connection,
    raw: sqlite3.Connection,
    plan: _Plan,
    split: tuple[str, str, str],
    rows: Sequence[Sequence[Any]],
) -> list[Any]:
    """Bound rows inserted with one VALUES group each, in pages under SQLite's limit."""
    head, group, tail = split
    page = max(1, min(_MAX_ROWS, _MAX_VARIABLES // max(1, len(plan.names))))
    found: list[Any] = []
    for at in range(0, len(rows), page):
        chunk = rows[at : at + page]
        sql = head + ", ".join([group] * len(chunk)) + tail
        args = [value for r in chunk for value in r]
        found.extend(_read(plan, _run(conn, raw, sql, args, many=False).fetchall()))
    return found


def _compile(statement: Executable, dialect: Dialect, keys: tuple[str, ...]) -> _Plan | None:
    compiled = statement.compile(dialect=dialect, column_keys=list(keys))  # type: ignore[attr-defined]
    if compiled.insert_prefetch or compiled.update_prefetch or compiled.positiontup is None:
        return None  # a Python-side default to compute per row: Core's job
    names = tuple(compiled.positiontup)
    binds: dict[str, BindParameter[Any]] = {name: compiled.binds[name] for name in names}
    if any(b.callable is not None for b in binds.values()):
        return None
    if any(b.required and name not in keys for name, b in binds.items()):
        return None  # a value the call left out: Core says which
    fixed = {name: b.effective_value for name, b in binds.items() if name not in keys}
    binders: list[Any] = []  # per position: a name may come twice (one bind used twice)
    for b in (binds[name] for name in names):
        if b.expanding and isinstance(b.type, TupleType):
            binders.append(tuple(t._cached_bind_processor(dialect) for t in b.type.types))
        else:
            binders.append(b.type._cached_bind_processor(dialect))
    expanding = frozenset(name for name, b in binds.items() if b.expanding)
    columns = list(getattr(statement, "exported_columns", ()))
    returning = bool(getattr(compiled, "effective_returning", None))
    returns = bool(columns) and (bool(getattr(statement, "is_select", False)) or returning)
    row = collections.namedtuple("Row", [c.key for c in columns], rename=True) if returns else None
    readers = tuple(c.type._cached_result_processor(dialect, None) for c in columns)
    args = None if expanding else _row_args(names, binders, keys, fixed)
    return _Plan(compiled.string, names, fixed, tuple(binders), expanding, row, readers, args)


def _value(params: Mapping[str, Any], name: str, fixed: Mapping[str, Any]) -> Any:
    return params[name] if name in params else fixed[name]


def _read(plan: _Plan, rows: Iterable[Any]) -> Iterable[Any]:
    """Result rows as the plan's named tuples, each column through its result processor."""
    make, readers = plan.row._make, plan.readers
    if not any(readers):
        return map(make, rows)
    return (make([v if p is None else p(v) for p, v in zip(readers, r, strict=True)]) for r in rows)


def _values(plan: _Plan) -> tuple[str, str, str] | None:
    """An INSERT's SQL split around its one VALUES group, when that group holds every
    parameter (so that repeating it repeats the row): (before, group, after); else None."""
    at = plan.sql.find(" VALUES (")
    if at < 0:
        return None
    start = at + len(" VALUES ")
    end = plan.sql.find(")", start) + 1
    group = plan.sql[start:end]
    wanted = "(" + ", ".join("?" * len(plan.names)) + ")"
    if group != wanted or plan.sql.count("?") != len(plan.names):
        return None
    return plan.sql[:start], group, plan.sql[end:]


def _bind(plan: _Plan, params: Mapping[str, Any]) -> tuple[str | None, list[Any]]:
    """The SQL and the positional arguments of one call; (None, []) when Core must run it."""
    args: list[Any] = []
    sql = plan.sql
    for name, binder in zip(plan.names, plan.binders, strict=True):
        value = _value(params, name, plan.fixed)
        if name not in plan.expanding:
            args.append(value if binder is None else binder(value))
            continue
        values = list(value)
        if not values:
            return None, []
        # replace() renders every place the list is used; each place appends its own values
        if isinstance(binder, tuple):  # a row-value IN: VALUES (?, ?), (?, ?)
            width = len(binder)
            one = "(" + ", ".join("?" * width) + ")"
            sql = sql.replace(_POSTCOMPILE.format(name), "VALUES " + ", ".join([one] * len(values)))
            for item in values:
                args.extend(v if p is None else p(v) for p, v in zip(binder, item, strict=True))
        else:
            sql = sql.replace(_POSTCOMPILE.format(name), ", ".join("?" * len(values)))
            args.extend(values if binder is None else [binder(v) for v in values])
    return sql, args


def _run(conn: Connection, raw: sqlite3.Connection, sql: str, args: Any, *, many: bool) -> Any:
    cursor = raw.cursor()
    dispatch = conn.dispatch
    for listen in dispatch.before_cursor_execute:
        listen(conn, cursor, sql, args, None, many)
    try:
        if many:
            cursor.executemany(sql, args)
        else:
            cursor.execute(sql, args)
    except sqlite3.Error as error:
        hide = conn.engine.hide_parameters
        raise exc.DBAPIError.instance(
            sql, args, error, sqlite3.Error, hide_parameters=hide, dialect=conn.dialect
        ) from error
    for listen in dispatch.after_cursor_execute:
        listen(conn, cursor, sql, args, None, many)
    return cursor
