"""Leader election: exactly one process runs the timers, chosen by a PostgreSQL advisory lock.

APScheduler 3 cannot share its job store between processes, so only the process holding the
session-level advisory lock TIMER_LOCK_KEY runs it. The lock lives exactly as long as one
dedicated connection: when a leader dies, PostgreSQL ends its session and frees the lock, and a
follower's next attempt (every `retry_interval`) takes it. A leader checks its connection every
`check_interval`; the moment a check fails it stops scheduling (its lock may already be another
process's) and only then campaigns again. On SQLite there is one process by design: it leads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

# "smstmr". Advisory locks are scoped to one database, so two smsbot deployments on one
# PostgreSQL server elect independently; the migration lock uses a different key.
TIMER_LOCK_KEY = 0x736D73746D72
# Takeover after a leader dies: up to RETRY_INTERVAL to win the lock, then CHECK_INTERVAL +
# SETTLE_MARGIN before starting the timers; about 5 s, well within the promised 10.
RETRY_INTERVAL = 2.0
CHECK_INTERVAL = 2.0
SETTLE_MARGIN = 1.0
QUERY_TIMEOUT = 5.0  # a hung connection counts as a lost one
STOP_TIMEOUT = 5.0
APPLICATION_NAME = "smsbot-timers"  # shows the lock's holder in pg_stat_activity

Callback = Callable[[], Awaitable[None]]


class LeaderElection:
    """Campaigns for the timer lock; calls `on_elected` when won and `on_deposed` when lost."""

    def __init__(
        self,
        database_url: str,
        *,
        on_elected: Callback | None = None,
        on_deposed: Callback | None = None,
        key: int = TIMER_LOCK_KEY,
        retry_interval: float = RETRY_INTERVAL,
        check_interval: float = CHECK_INTERVAL,
    ) -> None:
        self.is_postgres = database_url.startswith("postgres")
        self.on_elected = on_elected
        self.on_deposed = on_deposed
        self.key = key
        self.retry_interval = retry_interval
        self.check_interval = check_interval
        self.settle = check_interval + SETTLE_MARGIN
        self._url = database_url
        self._engine: AsyncEngine | None = None
        self._conn: AsyncConnection | None = None
        self._leader = False
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def is_leader(self) -> bool:
        """True while this process holds the lock (always, on SQLite, once started)."""
        return self._leader

    async def start(self) -> None:
        """Campaign in the background until stop()."""
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.create_task(self.run(), name="smsbot-leader-election")

    async def stop(self) -> None:
        """Step down (running `on_deposed`), release the lock and stop campaigning."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        try:
            await asyncio.wait_for(task, STOP_TIMEOUT)
        except TimeoutError:
            log.warning("leader election did not stop within %.0f s; cancelled", STOP_TIMEOUT)

    async def run(self) -> None:
        """Acquire the lock, hold and check it, step down when it is lost; until stop()."""
        try:
            while not self._stopping.is_set():
                if self._leader:
                    if not await self.check():
                        log.warning("the timer lock's connection failed: stopping the timers")
                        await self._step_down()
                elif await self.try_acquire():
                    # A leader whose session the server ended (rather than one that died)
                    # notices at its next check: give it that long to stop before starting.
                    if self.is_postgres and await self._stopped_within(self.settle):
                        break
                    await self._step_up()
                wait = self.check_interval if self._leader else self.retry_interval
                await self._stopped_within(wait)
        finally:
            if self._leader:
                await self._step_down()
            await self._close()
            if self._engine is not None:
                await self._engine.dispose()
                self._engine = None

    async def _stopped_within(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return self._stopping.is_set()

    async def try_acquire(self) -> bool:
        """Try once to take the lock; True when this process now holds it."""
        if not self.is_postgres:
            return True
        try:
            if self._conn is None:
                self._conn = await asyncio.wait_for(self._connect(), QUERY_TIMEOUT)
            got = await asyncio.wait_for(
                self._conn.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": self.key}),
                QUERY_TIMEOUT,
            )
        except Exception as exc:  # the database is away: stay a follower, try again later
            log.warning("timer election: cannot reach the database (%s)", type(exc).__name__)
            await self._close()
            return False
        return bool(got)

    async def check(self) -> bool:
        """Return True while the lock's connection answers (the session, so the lock, lives)."""
        if not self.is_postgres:
            return True
        if self._conn is None:
            return False
        try:
            await asyncio.wait_for(self._conn.execute(text("SELECT 1")), QUERY_TIMEOUT)
        except Exception as exc:
            log.warning("timer lock check failed: %s", type(exc).__name__)
            await self._close()
            return False
        return True

    async def _connect(self) -> AsyncConnection:
        if self._engine is None:
            settings = {"application_name": f"{APPLICATION_NAME} pid={os.getpid()}"}
            url = make_url(self._url).set(drivername="postgresql+asyncpg")
            self._engine = create_async_engine(
                url,
                # One connection, owned here: the pool must never hand it to anyone else or
                # keep it after close (closing it is what releases the lock). AUTOCOMMIT: a
                # session-level lock needs no transaction, and an open one would sit idle.
                poolclass=NullPool,
                isolation_level="AUTOCOMMIT",
                connect_args={"timeout": QUERY_TIMEOUT, "server_settings": settings},
            )
        return await self._engine.connect()

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            await asyncio.wait_for(conn.close(), QUERY_TIMEOUT)
        except Exception:  # already broken: drop it without the goodbye
            with contextlib.suppress(Exception):
                await conn.invalidate()

    async def _step_up(self) -> None:
        self._leader = True
        where = f"PostgreSQL advisory lock {self.key}" if self.is_postgres else "SQLite"
        log.info("this process now runs the timers (%s)", where)
        if self.on_elected is None:
            return
        try:
            await self.on_elected()
        except Exception:
            # Could not start the timers: give the lock back so another process can.
            log.exception("starting the timers failed; stepping down")
            await self._step_down()

    async def _step_down(self) -> None:
        # Not leader first: whatever on_deposed awaits, nothing may treat us as leader.
        self._leader = False
        try:
            if self.on_deposed is not None:
                await self.on_deposed()
        except Exception:
            log.exception("stopping the timers failed")
        finally:
            await self._close()  # closing the session releases the lock
            log.info("this process no longer runs the timers")
