"""Storage: migrations match the models, datetimes stay aware, the inbox is unique by event id."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel, select

from smsbot.store.engine import Database
from smsbot.store.migrate import upgrade
from smsbot.store.models import (
    Conversation,
    Direction,
    EventKind,
    Message,
    OutboxState,
    WebhookEvent,
)
from smsbot.status import DeliveryStatus

T0 = dt.datetime(2026, 1, 15, 9, 0, tzinfo=dt.UTC)


def _sync(url: str) -> str:
    return url.replace("+aiosqlite", "").replace("+asyncpg", "+psycopg")


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


async def test_datetimes_round_trip_as_aware_utc(db: Database) -> None:
    local = T0.astimezone(dt.timezone(dt.timedelta(hours=5)))
    async with db.session() as s, s.begin():
        s.add(
            Message(
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
        msg = (await s.execute(select(Message))).scalar_one()
    assert msg.created_at == T0
    assert msg.created_at.tzinfo is dt.UTC
    assert msg.status is DeliveryStatus.QUEUED
    assert msg.direction is Direction.OUTBOUND


async def test_naive_datetimes_are_refused(db: Database) -> None:
    with pytest.raises(Exception, match="timezone-aware"):
        async with db.session() as s, s.begin():
            s.add(Conversation(virtual_number="a", phone="b", started_at=dt.datetime(2026, 1, 1)))


async def test_inbox_is_unique_by_source_and_event_id(db: Database) -> None:
    def event() -> WebhookEvent:
        return WebhookEvent(source="divergent", event_id="evt_1", kind=EventKind.INBOUND,
                            received_at=T0)

    async with db.session() as s, s.begin():
        s.add(event())
    with pytest.raises(IntegrityError):
        async with db.session() as s, s.begin():
            s.add(event())
    async with db.session() as s:
        assert len((await s.execute(select(WebhookEvent))).scalars().all()) == 1


async def test_conversation_data_is_json(db: Database) -> None:
    async with db.session() as s, s.begin():
        s.add(Conversation(virtual_number="+1", phone="+2", data={"n": 1, "tags": ["a"]}))
    async with db.session() as s:
        convo = (await s.execute(select(Conversation))).scalar_one()
    assert convo.data == {"n": 1, "tags": ["a"]}


async def test_ping(db: Database) -> None:
    assert await db.ping() is True
