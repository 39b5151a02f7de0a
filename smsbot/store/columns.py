"""What every table's columns share: ids, UTC timestamps, the workspace, enums as text."""

from __future__ import annotations

import enum
import os
import threading
from typing import Any

from sqlalchemy import Enum as SAEnum
from sqlalchemy import Table
from sqlmodel import Field, SQLModel

from smsbot.store.types import UTCDateTime

DEFAULT_WORKSPACE = "default"


_RANDOM = bytearray()  # os.urandom drawn 4 KiB at a time: one system call per 256 ids
_RANDOM_LOCK = threading.Lock()
os.register_at_fork(after_in_child=_RANDOM.clear)  # a forked child must never reuse the parent's


def new_id() -> str:
    """Return a fresh message id; it is also the clientReference sent to the provider."""
    # 128 random bits as 32 hex digits, like uuid4().hex, which made a system call for each
    # id: a bulk start writes several ids a message (14 % of its database thread).
    with _RANDOM_LOCK:
        if not _RANDOM:
            _RANDOM.extend(os.urandom(4096))
        raw = bytes(_RANDOM[-16:])
        del _RANDOM[-16:]
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


def table(model: type[SQLModel]) -> Table:
    """Return a model's Core table, for the few set-based queries that claim work."""
    t = getattr(model, "__table__")  # noqa: B009  (SQLModel declares no type for it)
    assert isinstance(t, Table)
    return t
