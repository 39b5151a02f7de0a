"""Storage: migrations match the models, datetimes stay aware, the inbox is unique by event id."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, create_engine, inspect, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlmodel import SQLModel, select

from smsbot.engine.contract import EventKind
from smsbot.sms.status import DeliveryStatus
from smsbot.store.columns import PARTIAL
from smsbot.store.engine import Database
from smsbot.store.migrate import upgrade
from smsbot.store.models import ConversationRow, Direction, InboxEventRow, MessageRow, OutboxState

T0 = dt.datetime(2026, 1, 15, 9, 0, tzinfo=dt.UTC)


def _sync(url: str) -> str:
    return url.replace("+aiosqlite", "").replace("+asyncpg", "+psycopg")


async def test_create_all_builds_the_partial_indexes_the_models_describe(db: Database) -> None:
    # create_all (tests, benchmarks) adds the predicates for its dialect (columns.only_rows)
    url = db.url.replace("+aiosqlite", "").replace("+asyncpg", "+psycopg")
    assert migrated_partial_indexes(url) == model_partial_indexes()


async def test_migrations_build_the_schema_the_models_describe(db_url: str) -> None:
    sync_url = _sync(db_url)
    await asyncio.to_thread(upgrade, sync_url)
    engine = create_engine(sync_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
            tables = set(inspect(conn).get_table_names())
    finally:
        engine.dispose()
    assert {"conversations", "messages", "webhook_events", "opt_outs", "timers"} <= tables
    assert diff == []
    # Alembic's comparison leaves out what a partial index keeps: the values its WHERE names.
    assert migrated_partial_indexes(sync_url) == model_partial_indexes()


def model_partial_indexes() -> dict[str, set[str]]:
    """Each partial index of the models, with the values its WHERE names."""
    return {
        str(i.name): set(re.findall(r"'(\w+)'", str(i.info[PARTIAL])))
        for t in SQLModel.metadata.sorted_tables
        for i in t.indexes
        if PARTIAL in i.info
    }


def migrated_partial_indexes(sync_url: str) -> dict[str, set[str]]:
    """Each partial index of a database, with the values its WHERE names."""
    engine = create_engine(sync_url)
    if engine.dialect.name == "sqlite":
        query = "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql LIKE '% WHERE %'"
    else:
        query = "SELECT indexname, indexdef FROM pg_indexes WHERE indexdef LIKE '% WHERE %'"
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(query)).all()
    finally:
        engine.dispose()
    found = {name: set(re.findall(r"'(\w+)'", sql.split(" WHERE ", 1)[1])) for name, sql in rows}
    assert found, "no partial index at all"
    return found


async def test_datetimes_round_trip_as_aware_utc(db: Database) -> None:
    local = T0.astimezone(dt.timezone(dt.timedelta(hours=5)))
    async with db.session() as s, s.begin():
        s.add(
            MessageRow(
                direction=Direction.OUTBOUND,
                virtual_number="+447700900100",
                phone="+447700900123",
                body="hi",
                status=DeliveryStatus.QUEUED,
                outbox=OutboxState.PENDING,
                created_at=local,
            )
        )
    async with db.session() as s:
        msg = (await s.execute(select(MessageRow))).scalar_one()
    assert msg.created_at == T0
    assert msg.created_at.tzinfo is dt.UTC
    assert msg.status is DeliveryStatus.QUEUED
    assert msg.direction is Direction.OUTBOUND


async def test_naive_datetimes_are_refused(db: Database) -> None:
    with pytest.raises(Exception, match="timezone-aware"):
        async with db.session() as s, s.begin():
            s.add(
                ConversationRow(virtual_number="a", phone="b", started_at=dt.datetime(2026, 1, 1))
            )


async def test_inbox_is_unique_by_source_and_event_id(db: Database) -> None:
    def event() -> InboxEventRow:
        return InboxEventRow(
            source="divergent", event_id="evt_1", kind=EventKind.INBOUND, received_at=T0
        )

    async with db.session() as s, s.begin():
        s.add(event())
    with pytest.raises(IntegrityError):
        async with db.session() as s, s.begin():
            s.add(event())
    async with db.session() as s:
        assert len((await s.execute(select(InboxEventRow))).scalars().all()) == 1


async def test_conversation_data_is_json(db: Database) -> None:
    async with db.session() as s, s.begin():
        s.add(ConversationRow(virtual_number="+1", phone="+2", data={"n": 1, "tags": ["a"]}))
    async with db.session() as s:
        convo = (await s.execute(select(ConversationRow))).scalar_one()
    assert convo.data == {"n": 1, "tags": ["a"]}


async def test_ping(db: Database) -> None:
    assert await db.ping() is True


@pytest.mark.postgres
def test_concurrent_upgrades_from_several_processes_take_turns(pg_database: str) -> None:
    # several `smsbot serve` replicas start at once; each runs the migrations
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMSBOT_")}
    env["SMSBOT_DATABASE_URL"] = pg_database
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "smsbot", "db", "upgrade"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=60)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    engine = create_engine(pg_database.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            assert "webhook_events" in inspect(conn).get_table_names()
    finally:
        engine.dispose()


def test_head_names_the_newest_migration(tmp_path: Path) -> None:
    from alembic.script import ScriptDirectory

    from smsbot.store.migrate import HEAD, alembic_config, current_revision

    url = f"sqlite:///{tmp_path / 'm.db'}"
    assert ScriptDirectory.from_config(alembic_config(url)).get_current_head() == HEAD
    assert current_revision(url) is None
    upgrade(url)
    assert current_revision(url) == HEAD  # what `smsbot serve` checks before migrating


async def test_write_runs_its_before_first_and_once(db: Database) -> None:
    """Database.write(fn, before=...): `before` runs once, before the transaction, and what it
    prepares is there for `fn`; a `before` that raises leaves nothing begun or written."""
    seen: list[str] = []

    def before() -> None:
        seen.append("before")

    def work(conn: Connection) -> int:
        seen.append("work")
        return int(conn.execute(text("SELECT 41 + 1")).scalar_one())

    assert await db.write(work, before=before) == 42
    assert seen == ["before", "work"]

    def broken() -> None:
        raise ValueError("no rows")

    with pytest.raises(ValueError, match="no rows"):
        await db.write(work, before=broken)
    assert seen == ["before", "work"]  # the work never ran
    assert await db.write(work) == 42  # and the writer is free again


@pytest.mark.postgres
async def test_a_pooled_postgresql_connection_is_pinged_only_after_sitting_unused(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """store/engine._ping_when_idle: a connection unused for PING_AFTER_IDLE is pinged at
    checkout, and a dead one replaced before anyone uses it; one that just worked is not
    pinged (three round trips saved a transaction), so if the server dropped it meanwhile the
    next use fails once and the pool starts afresh."""
    from smsbot.store import engine as engine_module

    db = Database(pg_database.replace("postgresql://", "postgresql+asyncpg://", 1), pool_size=1)
    backend = text("SELECT pg_backend_pid()")

    async def pid() -> int:
        return int(await db.read(lambda conn: conn.execute(backend).scalar_one()))

    async def kill(victim: int) -> None:  # from outside the pool, as a server restart would
        def terminate() -> None:
            with psycopg.connect(pg_database, autocommit=True) as other:
                other.execute("SELECT pg_terminate_backend(%s)", (victim,))

        await asyncio.to_thread(terminate)

    try:
        first = await pid()
        assert await pid() == first  # one pooled connection, reused
        monkeypatch.setattr(engine_module, "PING_AFTER_IDLE", 0.0)  # any wait counts as idle
        await kill(first)
        second = await pid()  # pinged at checkout, found dead, replaced: the read just works
        assert second != first
        monkeypatch.setattr(engine_module, "PING_AFTER_IDLE", 3600.0)  # nothing is idle
        await kill(second)
        with pytest.raises(DBAPIError) as raised:
            await pid()  # not pinged: the dead connection fails its statement
        assert raised.value.connection_invalidated
        assert await pid() not in (first, second)  # and the pool connected anew
    finally:
        await db.dispose()
