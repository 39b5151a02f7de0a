"""Switching SQLite to WAL never fails a connection: it waits out, or leaves for later, a lock."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from smsbot.store.engine import Database
from smsbot.store.migrate import enable_wal


def journal_mode(path: Path) -> str:
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0])


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[tuple[Path, sqlite3.Connection]]:
    """A fresh database file (rollback journal) with another connection holding its write lock."""
    path = tmp_path / "fresh.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO t VALUES (1)")
    yield path, holder
    if holder.in_transaction:
        holder.execute("ROLLBACK")
    holder.close()


async def test_a_connection_opens_while_another_holds_the_lock(
    locked: tuple[Path, sqlite3.Connection],
) -> None:
    # SQLite refuses the switch to WAL at once under a lock, whatever busy_timeout says: that
    # refusal used to fail the connection with "database is locked", logged at ERROR.
    path, holder = locked
    db = Database(f"sqlite+aiosqlite:///{path}")
    try:
        async with db.engine.connect() as conn:
            await conn.get_raw_connection()  # runs the connect hook, begins nothing
        assert journal_mode(path) == "delete"  # left for a later connection
        holder.execute("COMMIT")
        async with db.engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")
        db2 = Database(f"sqlite+aiosqlite:///{path}")
        async with db2.engine.connect() as conn:
            await conn.get_raw_connection()
        await db2.dispose()
        assert journal_mode(path) == "wal"
    finally:
        await db.dispose()


def test_enable_wal_waits_out_a_lock(locked: tuple[Path, sqlite3.Connection]) -> None:
    path, holder = locked
    release = threading.Timer(0.3, holder.execute, ("COMMIT",))
    release.start()
    try:
        enable_wal(f"sqlite:///{path}")
    finally:
        release.join()
    assert journal_mode(path) == "wal"


def test_enable_wal_leaves_other_databases_alone(tmp_path: Path) -> None:
    enable_wal("sqlite:///:memory:")
    enable_wal("postgresql+psycopg://nobody@127.0.0.1:1/none")  # not even connected to
