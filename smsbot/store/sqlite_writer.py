"""SQLite's one writer and its reader: the threads' held connections, a transaction driven
from the writer's thread, and the flock that makes processes take turns at the file."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from sqlalchemy import Connection, Engine

try:
    import fcntl
except ImportError:  # Windows: no flock; SQLite's busy handler alone
    fcntl = None  # type: ignore[assignment]

T = TypeVar("T")


class WriterHandoff:
    """An exclusive flock beside a SQLite file, held by each process's write transactions.

    SQLite alone is fair to no one across processes: a writer that finds the database locked
    sleeps in its busy handler (1, 2, 5 … up to 100 ms between tries) and can miss the moment
    it is free again and again while another process (`smsbot start` writing a campaign)
    commits back to back; a person's answer then waited seconds. A writer that waits here
    waits in the kernel and gets the lock the moment it is released. SQLite's own lock still
    decides what is safe: this only decides who goes next. No-op where flock is missing.
    """

    def __init__(self, path: str | None) -> None:
        self._path = path
        self._fd: int | None = None

    @classmethod
    def beside(cls, database: str | None) -> WriterHandoff:
        """The handoff lock of the SQLite file `database` (None, or no flock: a no-op)."""
        if not database or database == ":memory:" or fcntl is None:
            return cls(None)
        return cls(f"{database}-writer.lock")

    def acquire(self) -> None:
        """Wait for the other processes' write transactions (blocking: the database thread)."""
        if self._path is None or fcntl is None:
            return
        if self._fd is None:
            flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
            try:
                self._fd = os.open(self._path, flags, 0o666)
            except OSError:  # a read-only directory: SQLite's busy handler alone, as before
                self._path = None
                return
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def release(self) -> None:
        """Let the next process's writer in."""
        if self._fd is not None and fcntl is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close the lock file (Database.dispose); the next acquire opens it again."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class HeldConnection:
    """The one connection of a database thread (SQLite's writer or reader), open from its first
    transaction until dispose() or an error: no pool checkout, reset-on-return ROLLBACK and
    check-in around every transaction (in the turns profile after store/prepared.py, opening
    and closing transactions held about a third of the SQLAlchemy samples left; this removes
    the pool's part, not BEGIN and COMMIT). Only ever used from its thread."""

    def __init__(self, engine: Engine | None) -> None:
        self.engine = engine
        self.conn: Connection | None = None

    def get(self) -> Connection:
        if self.conn is None:
            assert self.engine is not None
            self.conn = self.engine.connect()
        return self.conn

    def drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()


class ThreadTransaction:
    """A SQLite transaction on a synchronous connection, driven from the database's thread."""

    def __init__(
        self, held: HeldConnection, thread: ThreadPoolExecutor, handoff: WriterHandoff
    ) -> None:
        self.held = held
        self.thread = thread
        self.handoff = handoff
        self.conn: Connection | None = None

    async def run(self, fn: Callable[[Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.thread, self._run, fn)

    def _run(self, fn: Callable[[Connection], T]) -> T:
        if self.conn is None:
            self.handoff.acquire()
            try:
                conn = self.held.get()
                try:
                    conn.begin()
                except BaseException:
                    self.held.drop()
                    raise
            except BaseException:
                self.handoff.release()
                raise
            self.conn = conn
        return fn(self.conn)

    def whole(self, fn: Callable[[Connection], T], before: Callable[[], object] | None = None) -> T:
        """Run `fn` in a transaction of its own and commit it (roll back on an error);
        `before()` first, before the write lock is taken (Database.write)."""
        if before is not None:
            before()
        try:
            result = self._run(fn)
        except BaseException:
            self._end(commit=False)
            raise
        self._end(commit=True)
        return result

    async def end(self, *, commit: bool) -> None:
        # Queued behind any call still running in the thread; shielded so that a cancelled
        # caller still leaves the connection committed or rolled back, never half-open.
        loop = asyncio.get_running_loop()
        await asyncio.shield(loop.run_in_executor(self.thread, self._end, commit))

    def _end(self, commit: bool) -> None:
        if self.conn is None:
            return
        try:
            if commit:
                self.conn.commit()
            else:
                self.conn.rollback()
        except BaseException:
            self.held.drop()  # not reused in an unknown state
            raise
        finally:
            self.conn = None
            self.handoff.release()
