"""Find rows by a composite key, such as (virtual number, phone), through an index on it.

SQLite answers a row-value test, `(virtual_number, phone) IN (VALUES …)`, with a scan of the
whole table: 14.4 ms per call at 100,000 conversations, growing with every conversation ever
stored. Each column tested on its own, `virtual_number IN (…) AND phone IN (…)`, it looks up
in the (virtual_number, phone) index, one probe per combination: 0.4 ms at any size.
PostgreSQL plans both forms on an index; this one it turns into `= ANY (…)` index conditions.
tests/test_query_plans.py checks the plans.

On PostgreSQL `KeyedRows` passes each column's values as one array (`= ANY (:key_0)`, the exact
test against `unnest` of one array per column) instead of an expanding `IN (…)`: an expanding
list renders one SQL text per number of keys, and each new text is a statement asyncpg prepares
anew (a round trip and a plan) once SQLAlchemy's cache of 100 per connection has moved on. In
the turns benchmark with two processes 19 % of the statements missed that cache this way.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, any_, bindparam, false, func, select, tuple_
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.sql.expression import Executable

from smsbot.store.prepared import Prepared


def rows_in(
    columns: Sequence[ColumnElement[Any]], keys: Collection[Sequence[Any]]
) -> ColumnElement[bool]:
    """True for the rows whose `columns` equal one of `keys`, as conditions an index can serve.

    When more than one column has several values, the combinations of those values include
    keys nobody asked for: the exact row-value test is added as well, to filter what the index
    found (it no longer decides how the table is read).
    """
    if not keys:
        return false()
    values = [list(dict.fromkeys(key[i] for key in keys)) for i in range(len(columns))]
    clause = and_(*(column.in_(v) for column, v in zip(columns, values, strict=True)))
    if sum(len(v) > 1 for v in values) > 1:
        clause = and_(clause, tuple_(*columns).in_([tuple(key) for key in keys]))
    return clause


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
        any_probe = and_(*(c == any_(a) for c, a in zip(columns, arrays, strict=True)))
        zipped = select(*(func.unnest(r) for r in rows))  # unnest side by side: one row a key
        self.pg_probe = Prepared(build(any_probe))
        self.pg_exact = Prepared(build(and_(any_probe, tuple_(*columns).in_(zipped))))

    def all(self, conn: Connection, keys: Collection[Sequence[Any]], **params: Any) -> list[Any]:
        """The rows of `keys` (none when there are no keys), with the statement's `params`."""
        if not keys:
            return []
        values = [list(dict.fromkeys(key[i] for key in keys)) for i in range(self.width)]
        params.update({f"key_{i}": v for i, v in enumerate(values)})
        exact = sum(len(v) > 1 for v in values) > 1
        if conn.dialect.name == "postgresql":
            if exact:
                params.update({f"row_{i}": [key[i] for key in keys] for i in range(self.width)})
                return self.pg_exact.all(conn, params)
            return self.pg_probe.all(conn, params)
        if exact:
            params["key_rows"] = [tuple(key) for key in keys]
            return self.exact.all(conn, params)
        return self.probe.all(conn, params)
