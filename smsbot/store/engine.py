"""The async engine: SQLite in WAL mode by default, PostgreSQL by URL."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlmodel import SQLModel

from smsbot.store import models  # noqa: F401  (registers the tables on SQLModel.metadata)

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0  # seconds
COMMAND_TIMEOUT = 15.0


class Database:
    """One engine and session factory for the life of the process."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self.is_postgres = url.startswith("postgresql")
        kwargs: dict[str, Any] = {}
        if self.is_postgres:
            kwargs.update(
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_pre_ping=True,
                pool_timeout=CONNECT_TIMEOUT,
                # A server that accepts connections but answers nothing must not hang a webhook
                # past the provider's 45 s: connect and every statement give up in seconds.
                connect_args={"timeout": CONNECT_TIMEOUT, "command_timeout": COMMAND_TIMEOUT},
            )
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if not self.is_postgres:
            _configure_sqlite(self.engine)
        self._writer = None if self.is_postgres else asyncio.Lock()
        self._writer_task: asyncio.Task[Any] | None = None
        self.sessions = async_sessionmaker(self.engine, class_=AsyncSession, expire_on_commit=False)

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """Open a session; use as `async with db.session() as s, s.begin(): ...`."""
        if self._writer is None:
            async with self.sessions() as s:
                yield s
            return
        # SQLite has one writer and every transaction here begins IMMEDIATE: take turns in
        # the event loop rather than in SQLite's busy handler, which sleeps up to 100 ms.
        task = asyncio.current_task()
        if self._writer_task is task:  # already ours (a nested session in the same task)
            async with self.sessions() as s:
                yield s
            return
        async with self._writer:
            self._writer_task = task
            try:
                async with self.sessions() as s:
                    yield s
            finally:
                self._writer_task = None

    async def create_all(self) -> None:
        """Create every table directly (tests); deployments use `smsbot db upgrade`."""
        async with self.engine.begin() as conn:
            await conn.run_sync(SQLModel.metadata.create_all)

    async def ping(self) -> bool:
        """Return True when the database answers a trivial query."""
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT), self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return True
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            log.warning("database ping failed: %s", type(exc).__name__)
            return False

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()


def _configure_sqlite(engine: AsyncEngine) -> None:
    # WAL lets readers run beside the one writer; busy_timeout makes a writer wait instead of
    # failing. BEGIN IMMEDIATE takes the write lock up front: a deferred transaction that
    # upgrades from read to write can fail at once with SQLITE_BUSY, whatever the timeout.
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
