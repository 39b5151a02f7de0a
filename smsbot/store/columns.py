"""What every table's columns share: ids, UTC timestamps, the workspace, enums as text."""

from __future__ import annotations

import enum
import os
import threading
from typing import Any

from sqlalchemy import ColumnElement, Connection, Table, event, literal_column, text
from sqlalchemy import Enum as SAEnum
from sqlmodel import Field, SQLModel

from smsbot.store.types import UTCDateTime

DEFAULT_WORKSPACE = "default"


_RANDOM = bytearray()  # os.urandom drawn 4 KiB at a time: one system call per 512 draws
_RANDOM_LOCK = threading.Lock()
_SEQUENCE = [0]  # the next id's first half: counts up from a random start, per process


def _restart() -> None:
    _RANDOM.clear()  # a forked child must never reuse the parent's random bytes
    _SEQUENCE[0] = int.from_bytes(os.urandom(8), "big")  # nor its sequence


_restart()
os.register_at_fork(after_in_child=_restart)


def _random8() -> bytes:
    if not _RANDOM:
        _RANDOM.extend(os.urandom(4096))
    raw = bytes(_RANDOM[-8:])
    del _RANDOM[-8:]
    return raw


def new_id() -> str:
    """Return a fresh message id; it is also the clientReference sent to the provider."""
    # 32 hex digits: a 64-bit sequence, then 64 random bits. Ids one process makes follow each
    # other in the messages' primary-key index, so a batch's inserts land on one page at its
    # end; 128 random bits landed on a page anywhere in it, read and written back (100,000
    # fired reminders: 17.3 s against 16.4, bench/README.md session 10). The random half keeps
    # an id unguessable, and ids of two processes apart. os.urandom drawn in blocks: uuid4()
    # made a system call for each id (14 % of a bulk start's database thread).
    with _RANDOM_LOCK:
        sequence = _SEQUENCE[0]
        _SEQUENCE[0] = (sequence + 1) & 0xFFFF_FFFF_FFFF_FFFF
        raw = _random8()
    return f"{sequence:016x}{raw.hex()}"


def new_token() -> str:
    """Return 16 random hex digits: a timer's or a state's token (64 bits)."""
    with _RANDOM_LOCK:
        raw = _random8()
    return raw.hex()


def ts(nullable: bool = True, index: bool = False) -> Any:
    """A UTC datetime column (stored naive UTC; store/types.py)."""
    return Field(default=None, sa_type=UTCDateTime, nullable=nullable, index=index)


def workspace_column(nullable: bool = False) -> Any:
    """The workspace a row belongs to; `default` when a writer names none."""
    # Every row belongs to one workspace (smsbot/workspaces.py); rows from before workspaces
    # existed, and writers that name none, are the `default` one's.
    return Field(
        default=DEFAULT_WORKSPACE,
        max_length=64,
        nullable=nullable,
        sa_column_kwargs={"server_default": DEFAULT_WORKSPACE},
    )


def enum_column(enum_type: type[enum.StrEnum], default: Any = None, nullable: bool = True) -> Any:
    """An enum column, stored as its member's value in a VARCHAR."""
    # Stored as the member's value in a plain VARCHAR: readable in SQL, and no native
    # PostgreSQL enum type to migrate whenever a member is added.
    sa_type = SAEnum(
        enum_type,
        native_enum=False,
        create_constraint=False,
        length=16,
        values_callable=lambda members: [m.value for m in members],
    )
    return Field(default=default, sa_type=sa_type, nullable=nullable)


# Partial indexes. Most rows of the inbox and of the timers are finished (an event done, a timer
# fired); an index that only the queries for unfinished rows use holds only those rows: a row
# written finished adds no entry to it, and finishing a row removes its entry instead of moving
# it. A query uses such an index only when its SQL names the same value (`is_value`): SQLite
# matches a bound parameter too, but then prepares the statement again at every call, and
# PostgreSQL's generic plans do not match it at all.
#
# The predicate waits in the index's `info` until a table is created: written as
# `sqlite_where=` and `postgresql_where=`, it would make SQLAlchemy import both dialects when
# the models are defined, PostgreSQL's 19 modules into every SQLite server (2.4 MB of idle RSS,
# measured). The migrations (0015, 0016) name it for both dialects themselves.
PARTIAL = "partial_where"  # the key in Index.info


def only_rows(column: str, *values: enum.StrEnum) -> dict[str, Any]:
    """An Index's keyword arguments: keep only the rows whose `column` is one of `values`."""
    return {"info": {PARTIAL: text(" OR ".join(f"{column} = '{v.value}'" for v in values))}}


@event.listens_for(Table, "before_create")
def _partial_indexes(table: Table, connection: Connection, **_kw: Any) -> None:
    """Before create_all makes a table: its partial indexes' predicate, in the dialect's terms."""
    for index in table.indexes:
        if (where := index.info.get(PARTIAL)) is not None:
            index.dialect_kwargs[f"{connection.dialect.name}_where"] = where


def is_value(column: ColumnElement[Any], value: enum.StrEnum) -> ColumnElement[bool]:
    """`column = 'value'` with the value written into the SQL (see only_rows)."""
    return column == literal_column(f"'{value.value}'")


def table(model: type[SQLModel]) -> Table:
    """Return a model's Core table, for the few set-based queries that claim work."""
    t = getattr(model, "__table__")  # noqa: B009  (SQLModel declares no type for it)
    assert isinstance(t, Table)
    return t
