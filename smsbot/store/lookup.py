"""Find rows by a composite key, such as (virtual number, phone), through an index on it.

SQLite answers a row-value test, `(virtual_number, phone) IN (VALUES …)`, with a scan of the
whole table: 14.4 ms per call at 100,000 conversations, growing with every conversation ever
stored. Each column tested on its own, `virtual_number IN (…) AND phone IN (…)`, it looks up
in the (virtual_number, phone) index, one probe per combination: 0.4 ms at any size.
PostgreSQL plans both forms on an index; this one it turns into `= ANY (…)` index conditions.
tests/test_query_plans.py checks the plans.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, bindparam, false, tuple_
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

    def all(self, conn: Connection, keys: Collection[Sequence[Any]], **params: Any) -> list[Any]:
        """The rows of `keys` (none when there are no keys), with the statement's `params`."""
        if not keys:
            return []
        values = [list(dict.fromkeys(key[i] for key in keys)) for i in range(self.width)]
        params.update({f"key_{i}": v for i, v in enumerate(values)})
        if sum(len(v) > 1 for v in values) > 1:
            params["key_rows"] = [tuple(key) for key in keys]
            return self.exact.all(conn, params)
        return self.probe.all(conn, params)
