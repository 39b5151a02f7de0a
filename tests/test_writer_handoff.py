"""Two processes writing one SQLite file take turns through a flock (sqlite_writer.WriterHandoff).

Two Database objects on one file stand for two processes: each opens the lock file itself, and
flock locks belong to the open file, so they exclude each other as two processes would.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from sqlalchemy import Connection, text

from smsbot.store.engine import Database


async def test_a_writer_waits_for_the_other_process_and_goes_as_soon_as_it_commits(
    tmp_path: Path,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    first, second = Database(url), Database(url)
    await first.create_all()
    order: list[str] = []

    def note(name: str) -> object:
        def run(conn: Connection) -> None:
            conn.execute(text("SELECT 1"))  # the transaction began IMMEDIATE: it holds the lock
            order.append(name)

        return run

    try:
        async with first.transaction() as tx:
            await tx.run(note("first"))  # holds the write lock (and the handoff) from here
            waiting = asyncio.create_task(second.write(note("second")))
            await asyncio.sleep(0.2)
            assert not waiting.done() and order == ["first"]
            released = time.monotonic()
        await waiting
        assert order == ["first", "second"]
        # in the kernel, not SQLite's busy handler (whose sleeps reach 100 ms)
        assert time.monotonic() - released < 0.05
        assert (tmp_path / "shared.db-writer.lock").exists()
    finally:
        await first.dispose()
        await second.dispose()
