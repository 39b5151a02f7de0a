"""Find rows by a composite key, such as (virtual number, phone), through an index on it.

SQLite answers a row-value test, `(virtual_number, phone) IN (VALUES …)`, with a scan of the
whole table: 14.4 ms per call at 100,000 conversations, growing with every conversation ever
stored. Each column tested on its own, `virtual_number IN (…) AND phone IN (…)`, it looks up
in the (virtual_number, phone) index, one probe per combination: 0.4 ms at any size.
PostgreSQL plans both forms on an index; this one it turns into `= ANY (…)` index conditions.
tests/test_query_plans.py checks the plans.

On PostgreSQL `KeyedRows`, `rows_in(arrays=True)` and `Listed` pass each column's values as one
array (`= ANY (:key_0)`, the exact test against `unnest` of one array per column) instead of an
expanding `IN (…)`: an expanding list renders one SQL text per number of keys, and each new text
is a statement asyncpg prepares anew (a round trip and a plan) once SQLAlchemy's cache of 100 per
connection has moved on. In the turns benchmark with two processes a quarter of the statements
missed that cache this way (bench/README.md, session 18).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Connection,
    and_,
    any_,
    bindparam,
    false,
    func,
    select,
    tuple_,
)
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.sql.expression import Executable

from smsbot.store.prepared import Prepared


def rows_in(
    columns: Sequence[ColumnElement[Any]],
    keys: Collection[Sequence[Any]],
    *,
    arrays: bool = False,
) -> ColumnElement[bool]:
    """True for the rows whose `columns` equal one of `keys`, as conditions an index can serve.

    When more than one column has several values, the combinations of those values include
    keys nobody asked for: the exact row-value test is added as well, to filter what the index
    found (it no longer decides how the table is read). `arrays` (PostgreSQL only): the values
    as one array a column, one SQL text at any number of keys (see above).
    """
    if not keys:
        return false()
    values = [list(dict.fromkeys(key[i] for key in keys)) for i in range(len(columns))]
    exact = sum(len(v) > 1 for v in values) > 1
    if arrays:
        by_column = [_array(c, v) for c, v in zip(columns, values, strict=True)]
        if not exact:
            return _any_of(columns, by_column)
        rows = [_array(c, [key[i] for key in keys]) for i, c in enumerate(columns)]
        return _any_of(columns, by_column, rows)
    clause = and_(*(column.in_(v) for column, v in zip(columns, values, strict=True)))
    if exact:
        clause = and_(clause, tuple_(*columns).in_([tuple(key) for key in keys]))
    return clause


def arrays_for(conn: Connection) -> bool:
    """Whether `conn` takes value lists as arrays (PostgreSQL): `rows_in(arrays=…)`."""
    return conn.dialect.name == "postgresql"


def _array(column: ColumnElement[Any], values: list[Any]) -> BindParameter[Any]:
    return bindparam(None, values, type_=ARRAY(column.type))


def _any_of(
    columns: Sequence[ColumnElement[Any]],
    arrays: Sequence[BindParameter[Any]],
    rows: Sequence[BindParameter[Any]] | None = None,
) -> ColumnElement[bool]:
    """Each column `= ANY` its array; with `rows` (one array a column, one element a key), the
    exact row test too, against them unnested side by side (one row a key)."""
    clause = and_(*(c == any_(a) for c, a in zip(columns, arrays, strict=True)))
    if rows:
        clause = and_(clause, tuple_(*columns).in_(select(*(func.unnest(r) for r in rows))))
    return clause


class Listed:
    """A prepared statement with a list of values to match, in the form each database
    prepares once: an expanding `IN (…)` on SQLite (run by sqlite3), one array on PostgreSQL
    (`= ANY (…)`: one SQL text at any length, see above)."""

    def __init__(
        self,
        build: Callable[[Callable[[ColumnElement[Any], str], ColumnElement[bool]]], Executable],
    ) -> None:
        self.listed = Prepared(build(lambda c, name: c.in_(bindparam(name, expanding=True))))
        self.arrays = Prepared(
            build(lambda c, name: _any_of([c], [bindparam(name, type_=ARRAY(c.type))]))
        )

    def all(self, conn: Connection, params: dict[str, Any]) -> list[Any]:
        """Run it with `params` (each list a plain list) on `conn`; the rows it returns."""
        chosen = self.arrays if arrays_for(conn) else self.listed
        return chosen.all(conn, params)


class KeyedRows:
    """A statement over the rows `rows_in` finds, prepared (store/prepared.py) in both of its
    shapes: with the exact row-value test, and without it when it would add nothing."""

    def __init__(
        self,
        columns: Sequence[ColumnElement[Any]],
        build: Callable[[ColumnElement[bool]], Executable],
    ) -> None:
        self.width = len(columns)
        probes: list[BindParameter[Any]] = [
            bindparam(f"key_{i}", expanding=True) for i in range(self.width)
        ]
        probe = and_(*(column.in_(p) for column, p in zip(columns, probes, strict=True)))
        exact = and_(probe, tuple_(*columns).in_(bindparam("key_rows", expanding=True)))
        self.probe = Prepared(build(probe))
        self.exact = Prepared(build(exact))
        # PostgreSQL: one array a column, so one SQL text however many keys (see above)
        arrays = [bindparam(f"key_{i}", type_=ARRAY(c.type)) for i, c in enumerate(columns)]
        rows = [bindparam(f"row_{i}", type_=ARRAY(c.type)) for i, c in enumerate(columns)]
        self.pg_probe = Prepared(build(_any_of(columns, arrays)))
        self.pg_exact = Prepared(build(_any_of(columns, arrays, rows)))

    def all(self, conn: Connection, keys: Collection[Sequence[Any]], **params: Any) -> list[Any]:
        """The rows of `keys` (none when there are no keys), with the statement's `params`."""
        if not keys:
            return []
        values = [list(dict.fromkeys(key[i] for key in keys)) for i in range(self.width)]
        params.update({f"key_{i}": v for i, v in enumerate(values)})
        exact = sum(len(v) > 1 for v in values) > 1
        if arrays_for(conn):
            if exact:
                params.update({f"row_{i}": [key[i] for key in keys] for i in range(self.width)})
                return self.pg_exact.all(conn, params)
            return self.pg_probe.all(conn, params)
        if exact:
            params["key_rows"] = [tuple(key) for key in keys]
            return self.exact.all(conn, params)
        return self.probe.all(conn, params)
