"""INSERT … ON CONFLICT for SQLite and PostgreSQL, as a statement SQLAlchemy can cache.

SQLAlchemy 2.0's dialect inserts (`sqlalchemy.dialects.sqlite.insert`, `…postgresql.insert`)
set `inherit_cache = False`: every execution of an ON CONFLICT statement compiled it anew, about
1.4 ms of CPU per transaction on the inbox's hot path. Both databases spell ON CONFLICT the same
way, so this is one construct with a cache key, compiled once per engine like any other.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import ARRAY, Table, bindparam, func, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.sql.visitors import InternalTraversal


class _OnConflict(ClauseElement):
    """`ON CONFLICT (target) DO NOTHING`, or `DO UPDATE SET c = excluded.c, …`."""

    __visit_name__ = "smsbot_on_conflict"
    _traverse_internals = [  # noqa: RUF012  (SQLAlchemy's own convention)
        ("index_elements", InternalTraversal.dp_string_list),
        ("update_columns", InternalTraversal.dp_string_list),
    ]

    def __init__(self, index_elements: tuple[str, ...], update_columns: tuple[str, ...]) -> None:
        self.index_elements = index_elements
        self.update_columns = update_columns


@compiles(_OnConflict)
def _render(element: _OnConflict, compiler: Any, **kw: Any) -> str:
    quote = compiler.preparer.quote
    target = ", ".join(quote(c) for c in element.index_elements)
    if not element.update_columns:
        return f"ON CONFLICT ({target}) DO NOTHING"
    sets = ", ".join(f"{quote(c)} = excluded.{quote(c)}" for c in element.update_columns)
    return f"ON CONFLICT ({target}) DO UPDATE SET {sets}"


class _InsertOnConflict(Insert):
    inherit_cache = True  # the ON CONFLICT clause is part of the key (_post_values_clause)


def insert_on_conflict(
    table: Table, index_elements: Iterable[str], update: Iterable[str] = ()
) -> Insert:
    """INSERT into `table` that skips (or, with `update`, overwrites) rows that conflict."""
    stmt = _InsertOnConflict(table)
    stmt._post_values_clause = _OnConflict(tuple(index_elements), tuple(update))
    return stmt


def insert_arrays(
    table: Table, keys: Sequence[str], index_elements: Iterable[str] | None
) -> Insert:
    """PostgreSQL: INSERT into `table` the rows given as one array a column (`columns_of`),
    unnested side by side, skipping rows that conflict on `index_elements` (None: a plain
    INSERT). One SQL text however many rows: a multi-row VALUES renders one per number of rows,
    each prepared anew once SQLAlchemy's 100 a connection have moved on; asyncpg's
    executemany runs the INSERT once a row, each a bind and an execution on the server."""
    unnested = (func.unnest(bindparam(k, type_=ARRAY(table.c[k].type))) for k in keys)
    stmt = table.insert() if index_elements is None else insert_on_conflict(table, index_elements)
    return stmt.from_select(keys, select(*unnested))


def as_arrays(statement: Any, keys: Sequence[str]) -> Insert | None:
    """`statement`, a plain INSERT of a table or an `insert_on_conflict` that skips conflicts
    (with or without RETURNING), as `insert_arrays` for rows with `keys`, returning the same
    columns; None for any other statement, and when a column the rows leave out has a
    Python-side default (Core fills it in; a SELECT of arrays would leave it NULL).
    `Prepared.inserted` and `Prepared.many` run it on PostgreSQL."""
    if not isinstance(statement, Insert):
        return None
    if statement._values or statement._multi_values or statement.select is not None:
        return None  # values or a SELECT of its own: not rows given at the call
    clause = statement._post_values_clause
    index_elements: tuple[str, ...] | None = None
    if isinstance(statement, _InsertOnConflict):
        if not isinstance(clause, _OnConflict) or clause.update_columns:
            return None
        index_elements = clause.index_elements
    elif clause is not None or type(statement) is not Insert:
        return None  # a dialect's own insert, ON CONFLICT of its own, …: Core runs it
    table = statement.table
    if not isinstance(table, Table):
        return None
    if any(c.default is not None and c.key not in keys for c in table.columns):
        return None
    arrays = insert_arrays(table, keys, index_elements)
    returning = list(statement.exported_columns)
    return arrays.returning(*returning) if returning else arrays


def columns_of(rows: Iterable[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, list[Any]]:
    """`insert_arrays`'s parameters: each key's values across `rows`, one list a column."""
    rows = list(rows)
    return {k: [r[k] for r in rows] for k in keys}
