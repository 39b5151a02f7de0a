"""SQLite's WAL checkpoints run in a thread of their own, not in a writer's commit."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from pathlib import Path

import pytest
from sqlalchemy import Connection, text

from smsbot.store import checkpoint
from smsbot.store.checkpoint import FALLBACK_PAGES, Checkpointer
from smsbot.store.engine import Database

PAGE = 4096


def _fill(conn: Connection, pages: int) -> None:
    conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS filler (b BLOB)")
    for _ in range(pages):
        conn.exec_driver_sql("INSERT INTO filler VALUES (randomblob(3500))")


def _size(path: Path | str) -> int:
    return os.stat(path).st_size


def _threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "smsbot-sqlite-checkpoint"]


async def test_a_commit_leaves_the_checkpoint_to_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Past SQLite's default 1,000 pages a commit would checkpoint in-line, growing the database
    # file; here the file keeps its size until the checkpointer (held back) runs.
    monkeypatch.setattr(checkpoint, "CHECKPOINT_DELAY", 60.0)
    path = tmp_path / "ckpt.db"
    db = Database(f"sqlite+aiosqlite:///{path}")
    try:
        await db.write(lambda conn: _fill(conn, 1))
        before = _size(path)
        for _ in range(3):
            await db.write(lambda conn: _fill(conn, 600))  # 1,800 pages in the WAL
        assert _size(path) == before
        assert _size(f"{path}-wal") > 1_500 * PAGE
        autocheckpoint = await db.write(
            lambda conn: conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
        )
        assert autocheckpoint == FALLBACK_PAGES
        assert _threads() == ["smsbot-sqlite-checkpoint"]
    finally:
        await db.dispose()  # stops the thread, with a last checkpoint
    assert _threads() == []
    assert _size(path) > 1_500 * PAGE
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        assert conn.execute("SELECT count(*) FROM filler").fetchone() == (1_801,)


async def test_commits_wake_the_checkpointer(tmp_path: Path) -> None:
    path = tmp_path / "woken.db"
    db = Database(f"sqlite+aiosqlite:///{path}")
    try:
        assert db._checkpointer is not None
        done = threading.Event()
        wake = db._checkpointer._checkpoint

        def observed(conn: sqlite3.Connection) -> None:
            wake(conn)
            done.set()

        db._checkpointer._checkpoint = observed  # type: ignore[method-assign]
        await db.write(lambda conn: _fill(conn, 50))
        assert done.wait(10), "no checkpoint after a commit"
        assert db._checkpointer.checkpoints >= 1
        # the async engine's sessions wake it too
        done.clear()
        async with db.session() as s, s.begin():
            await s.execute(text("INSERT INTO filler VALUES (x'00')"))
        assert done.wait(10), "no checkpoint after a session's commit"
    finally:
        await db.dispose()


def test_a_checkpointer_can_start_again_after_close(tmp_path: Path) -> None:
    path = tmp_path / "again.db"
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (x)")
    c = Checkpointer(str(path))
    c.wake()
    c.close()
    first = c.checkpoints
    assert first >= 1  # close() ran the last one
    c.wake()
    c.close()
    assert c.checkpoints > first
    assert _threads() == []


async def test_no_checkpointer_without_a_file(tmp_path: Path) -> None:
    db = Database("sqlite+aiosqlite:///:memory:")
    try:
        assert db._checkpointer is None
    finally:
        await db.dispose()
