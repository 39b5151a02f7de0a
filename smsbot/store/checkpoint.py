"""SQLite's WAL checkpoints, run in a thread of their own instead of inside a writer's commit.

In WAL mode a commit appends pages to the `-wal` file; a checkpoint copies them back into the
database file (and syncs both). By default SQLite runs one inside whichever commit finds the
WAL past 1,000 pages, so that commit, and every writer queued behind it (a webhook waiting to
be stored), waits for the copy and two fsyncs. Measured on the timers bench (30,000 fired
reminders): commits took 1.0 s in all with checkpoints inside them, 0.4 s without.

Here the writer's connections leave checkpoints to a `Checkpointer`: woken by a commit, it
waits CHECKPOINT_DELAY (so a burst of commits costs one checkpoint), then runs a PASSIVE
checkpoint on a connection of its own. PASSIVE never blocks and is never blocked: it copies
what no reader still needs and leaves the rest for the next one. Should the thread ever fall
behind (a reader that never ends, a disk that stalls), the writer's own automatic checkpoint
takes over at FALLBACK_PAGES, SQLite's behaviour with a larger threshold.

Durability is unchanged: `synchronous=NORMAL` syncs the WAL at each checkpoint, whoever runs it.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

log = logging.getLogger(__name__)

CHECKPOINT_DELAY = 0.1  # seconds from the first commit after a checkpoint to the next one
FALLBACK_PAGES = 8000  # the writers' own wal_autocheckpoint (SQLite's default is 1,000)


class Checkpointer:
    """Runs PASSIVE checkpoints of one SQLite file in a daemon thread, after commits."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.checkpoints = 0  # how many ran (tests)
        self._wanted = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def wake(self) -> None:
        """A writer committed (any thread): checkpoint soon. Starts the thread on first use."""
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="smsbot-sqlite-checkpoint", daemon=True
                    )
                    self._thread.start()
        self._wanted.set()

    def close(self, timeout: float = 5.0) -> None:
        """Run a last checkpoint and stop the thread (Database.dispose); wake() starts anew."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is None:
                return
            self._stop.set()
            self._wanted.set()
            thread.join(timeout)
            self._stop, self._wanted = threading.Event(), threading.Event()

    def _run(self) -> None:
        stop, wanted = self._stop, self._wanted  # this thread's: close() makes new ones
        conn: sqlite3.Connection | None = None
        try:
            while not stop.is_set():
                wanted.wait()
                # Let the burst that woke us go on; its commits join this checkpoint.
                stop.wait(CHECKPOINT_DELAY)
                wanted.clear()
                if conn is None:
                    conn = sqlite3.connect(self.path, isolation_level=None)
                self._checkpoint(conn)
        except sqlite3.Error as exc:  # the file is gone or unreadable: writers checkpoint
            log.warning(
                "WAL checkpoints stopped (%s); the writers' own checkpoints take over",
                type(exc).__name__,
            )
        finally:
            if conn is not None:
                conn.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.OperationalError as exc:  # locked: another process checkpoints; next time
            log.debug("WAL checkpoint skipped: %s", exc)
            return
        self.checkpoints += 1
