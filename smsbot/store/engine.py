"""The async engine: SQLite in WAL mode by default, PostgreSQL by URL."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from sqlalchemy import Connection, Dialect, Engine, create_engine, event, text
from sqlalchemy.exc import InvalidatePoolError, SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlmodel import SQLModel

from smsbot.store import models  # noqa: F401  (registers the tables on SQLModel.metadata)
from smsbot.store.checkpoint import FALLBACK_PAGES, Checkpointer
from smsbot.store.sqlite_writer import HeldConnection, ThreadTransaction, WriterHandoff
from smsbot.store.types import json_text

log = logging.getLogger(__name__)

T = TypeVar("T")

CONNECT_TIMEOUT = 5.0  # seconds
PING_AFTER_IDLE = 1.0  # seconds a pooled PostgreSQL connection sits unused before a ping
COMMAND_TIMEOUT = 15.0


class Database:
    """One engine and session factory for the life of the process."""

    def __init__(self, url: str, *, pool_size: int = 10, hide_parameters: bool = True) -> None:
        self.url = url
        self.is_postgres = url.startswith("postgresql")
        # An error's message quotes its statement's parameters (phone numbers, message bodies)
        # and goes to the log: hidden unless SMSBOT_LOG_SENSITIVE says otherwise.
        kwargs: dict[str, Any] = {"hide_parameters": hide_parameters, "json_serializer": json_text}
        if self.is_postgres:
            kwargs.update(
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_timeout=CONNECT_TIMEOUT,
                # A server that accepts connections but answers nothing must not hang a webhook
                # past the provider's 45 s: connect and every statement give up in seconds.
                connect_args={"timeout": CONNECT_TIMEOUT, "command_timeout": COMMAND_TIMEOUT},
            )
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_postgres:
            _ping_when_idle(self.engine.sync_engine)
        # SQLite through aiosqlite costs about four thread hops per statement. write() runs a
        # whole transaction on a synchronous connection in one thread instead: one hop.
        self._sync: Engine | None = None
        self._thread: ThreadPoolExecutor | None = None
        # read() runs on its own connections and thread: in WAL mode a reader sees the last
        # commit without waiting for the writer, and takes no write lock itself.
        self._reader: Engine | None = None
        self._reader_thread: ThreadPoolExecutor | None = None
        if not self.is_postgres:
            _configure_sqlite(self.engine.sync_engine)
            if ":memory:" not in url:  # a second engine would open a second, empty database
                self._sync = create_engine(
                    url.replace("+aiosqlite", "", 1),
                    hide_parameters=hide_parameters,
                    json_serializer=json_text,
                )
                _configure_sqlite(self._sync)
                self._reader = create_engine(
                    url.replace("+aiosqlite", "", 1), json_serializer=json_text
                )
                _configure_sqlite(self._reader, begin="BEGIN")
        # The writers' commits leave WAL checkpoints to a thread of their own (checkpoint.py).
        self._checkpointer: Checkpointer | None = None
        if self._sync is not None and self._sync.url.database:
            self._checkpointer = Checkpointer(self._sync.url.database)
            for writer in (self._sync, self.engine.sync_engine):
                _checkpoint_after_commits(writer, self._checkpointer)
        # Each thread keeps its one connection open between transactions (HeldConnection).
        self._held_writer = HeldConnection(self._sync)
        self._held_reader = HeldConnection(self._reader)
        self._handoff = WriterHandoff.beside(self._sync.url.database if self._sync else None)
        self._writer = None if self.is_postgres else asyncio.Lock()
        self._writer_task: asyncio.Task[Any] | None = None
        self._session_task: asyncio.Task[Any] | None = None  # inside db.session() (SQLite)
        self.urgent_waits = 0  # how often an urgent writer (a webhook) had to wait (SQLite)
        self.sessions = async_sessionmaker(self.engine, class_=AsyncSession, expire_on_commit=False)

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """Open a session; use as `async with db.session() as s, s.begin(): ...`."""
        async with self._turn(), self.sessions() as s:
            outer, self._session_task = self._session_task, asyncio.current_task()
            try:
                yield s
            finally:
                self._session_task = outer  # a session inside a session leaves the outer's

    async def write(
        self,
        fn: Callable[[Connection], T],
        *,
        urgent: bool = False,
        before: Callable[[], object] | None = None,
    ) -> T:
        """Run `fn(connection)` in one transaction and return its result (commit, or roll back).

        `urgent`: someone is waiting for this commit (a webhook's answer); the dispatcher keeps
        its batches short while urgent writers have to wait for them. `before()`: work for the
        transaction that needs no database (building rows: pipeline/step_rows.py), run just
        before it begins; on SQLite in the writer's thread, with the write lock not yet taken.
        """
        if self._sync is None:
            if before is not None:
                before()
            async with self.transaction(urgent=urgent) as tx:
                return await tx.run(fn)
        self._check_not_in_session()
        async with self._turn(urgent):
            tx = self._thread_transaction()
            # Begin, run and commit in one trip to the thread, not one for the work and one for
            # the commit: each trip is a wake-up of the thread and of the event loop. A caller
            # cancelled meanwhile no longer rolls back the work it started: it commits whole,
            # as after a crash between the commit and the answer.
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(tx.thread, tx.whole, fn, before)

    async def read(self, fn: Callable[[Connection], T]) -> T:
        """Run read-only `fn(connection)` on one snapshot, without taking a write transaction.

        SQLite: on a reader connection in a thread of its own, beside the writer (WAL), so a
        look at whether there is work neither waits for the writer nor holds it. PostgreSQL: a
        READ ONLY transaction.
        """
        if self.is_postgres:
            async with self.engine.connect() as conn:
                await conn.execution_options(postgresql_readonly=True)
                return await conn.run_sync(fn)
        if self._reader is None:  # :memory: has one connection, the writer's
            return await self.write(fn)
        if self._reader_thread is None:
            self._reader_thread = ThreadPoolExecutor(1, thread_name_prefix="smsbot-sqlite-read")
        reader = self._held_reader

        def run() -> T:
            conn = reader.get()
            try:
                with conn.begin():
                    return fn(conn)
            except BaseException:
                reader.drop()  # whatever state it is in, the next read starts afresh
                raise

        return await asyncio.get_running_loop().run_in_executor(self._reader_thread, run)

    @property
    def binds_ahead(self) -> Dialect | None:
        """sqlite3's dialect when write() runs on sqlite3 connections: rows for it may be bound
        before the transaction (prepared.Binder); None for PostgreSQL and :memory:."""
        return self._sync.dialect if self._sync is not None else None

    @property
    def write_engines(self) -> list[Engine]:
        """The engines whose transactions may write (tests count their transactions)."""
        return [e for e in (self.engine.sync_engine, self._sync) if e is not None]

    @contextlib.asynccontextmanager
    async def transaction(self, *, urgent: bool = False) -> AsyncIterator[Transaction]:
        """One transaction for several `await tx.run(fn)`; the event loop works in between."""
        if self._sync is None:
            async with self.engine.begin() as conn:
                yield _AsyncTransaction(conn)
            return
        self._check_not_in_session()
        async with self._turn(urgent):
            tx = self._thread_transaction()
            try:
                yield tx
            except BaseException:
                await tx.end(commit=False)
                raise
            await tx.end(commit=True)

    def _check_not_in_session(self) -> None:
        if self._session_task is not None and self._session_task is asyncio.current_task():
            raise RuntimeError("a write transaction cannot start inside db.session() (SQLite)")

    def _thread_transaction(self) -> ThreadTransaction:
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="smsbot-sqlite")
        return ThreadTransaction(self._held_writer, self._thread, self._handoff)

    def turn(self, *, urgent: bool = False) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold the writer's turn (SQLite; nothing on PostgreSQL): write()s inside it, from the
        same task, do not wait again. Work gathered once the turn has come can join one commit.
        """
        return self._turn(urgent)

    @contextlib.asynccontextmanager
    async def _turn(self, urgent: bool = False) -> AsyncIterator[None]:
        # SQLite has one writer and every transaction here begins IMMEDIATE: take turns in
        # the event loop rather than in SQLite's busy handler, which sleeps up to 100 ms.
        task = asyncio.current_task()
        if self._writer is None or self._writer_task is task:  # PostgreSQL, or already ours
            yield
            return
        if urgent and self._writer.locked():
            self.urgent_waits += 1
        async with self._writer:
            self._writer_task = task
            try:
                yield
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
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.close)
        if self._sync is not None and self._thread is not None:
            # Close its connections in the thread that opened them, then let the thread go.
            await asyncio.get_running_loop().run_in_executor(self._thread, self._held_writer.drop)
            await asyncio.get_running_loop().run_in_executor(self._thread, self._sync.dispose)
            await asyncio.get_running_loop().run_in_executor(self._thread, self._handoff.close)
            self._thread.shutdown(wait=False)
            self._thread = None
        if self._reader is not None and self._reader_thread is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._reader_thread, self._held_reader.drop)
            await loop.run_in_executor(self._reader_thread, self._reader.dispose)
            self._reader_thread.shutdown(wait=False)
            self._reader_thread = None


class Transaction(Protocol):
    """A transaction in progress: run synchronous database code in it."""

    async def run(self, fn: Callable[[Connection], T]) -> T:
        """Run `fn(connection)` inside the transaction and return its result."""
        ...


class _AsyncTransaction:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def run(self, fn: Callable[[Connection], T]) -> T:
        return await self.conn.run_sync(fn)


def _ping_when_idle(engine: Engine) -> None:
    """Ping a pooled PostgreSQL connection at checkout only after PING_AFTER_IDLE unused.

    `pool_pre_ping` pings at every checkout, and SQLAlchemy's asyncpg ping is three round trips
    (BEGIN, ";", ROLLBACK): 12,582 of them in 14 s of benchmark 2's two processes, as many
    round trips as the work's own statements (bench/README.md, session 20). A connection put
    back moments ago by a transaction that worked is not worth a ping; one that sat unused
    (the server may have restarted meanwhile) is pinged as before, and a dead one replaced
    before anyone uses it. A restart under load fails what was in flight, as it would anyway,
    and the first disconnect makes SQLAlchemy replace every older connection in the pool.
    """

    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop("idle_since", None)
        if since is None or time.monotonic() - since < PING_AFTER_IDLE:
            return  # a fresh connection, or one that just worked
        dialect = engine.dialect
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as error:
            if dialect.is_disconnect(error, dbapi_connection, None):
                raise InvalidatePoolError() from error  # the pool connects anew and retries
            raise


def _configure_sqlite(engine: Engine, begin: str = "BEGIN IMMEDIATE") -> None:
    # WAL lets readers run beside the one writer; busy_timeout makes a writer wait instead of
    # failing. BEGIN IMMEDIATE takes the write lock up front: a deferred transaction that
    # upgrades from read to write can fail at once with SQLITE_BUSY, whatever the timeout.
    # Only the reader engine (read()) begins deferred: it never writes.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=10000")
        try_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # On the DB-API cursor: 0.7 µs, against 7.6 through conn.exec_driver_sql (SQLAlchemy
        # builds an execution context for it), and every transaction, read or write, begins.
        cursor = conn.connection.cursor()
        try:
            cursor.execute(begin)
        finally:
            cursor.close()


def _checkpoint_after_commits(engine: Engine, checkpointer: Checkpointer) -> None:
    # A writer checkpoints itself only past FALLBACK_PAGES; the checkpointer, woken by each
    # commit, keeps the WAL far below that.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute(f"PRAGMA wal_autocheckpoint={FALLBACK_PAGES}")

    @event.listens_for(engine, "commit")
    def _on_commit(_conn: Any) -> None:
        checkpointer.wake()


def try_wal(cursor: Any) -> bool:
    """Switch the database to WAL unless it is; False when another connection's lock stops it.

    SQLite refuses the switch at once then, whatever busy_timeout says. WAL is kept in the file,
    so one success is enough: `smsbot.store.migrate.enable_wal` sees to it at start-up, and
    until then a connection works in the default journal mode.
    """
    cursor.execute("PRAGMA journal_mode")
    row = cursor.fetchone()
    if row is not None and str(row[0]).lower() in ("wal", "memory"):
        return True
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.fetchall()
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc) and "busy" not in str(exc):
            raise
        log.debug("WAL not switched on yet: another connection holds a lock")
        return False
    return True
