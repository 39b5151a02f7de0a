"""The SQLite write path: the inbox's group commit and give-up, Database.write and turn(), and
the cheap checks in front of them (JSON depth, reading a body that has arrived)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast
from unittest import mock

import pytest
from aiohttp import streams, web
from aiohttp.test_utils import make_mocked_request
from sqlalchemy import Connection, event, select

from smsbot.app.server.app import create_app
from smsbot.app.server.bodies import read_body
from smsbot.app.server.keys import BOT
from smsbot.channels import intake
from smsbot.channels.events import MAX_JSON_DEPTH, WebhookFormatError, load_json
from smsbot.channels.sandbox import Sandbox
from smsbot.clock import VirtualClock
from smsbot.engine.contract import EchoHandler, EventKind
from smsbot.pipeline.inbox import AcceptOutcome, Inbox, InboxEntry, event_row
from smsbot.store.engine import Database
from smsbot.store.models import events_t
from tests.support import Harness, inbound_body, make_bot, settings_for

T0 = dt.datetime(2026, 1, 15, 9, 0, tzinfo=dt.UTC)


def entry(event_id: str) -> InboxEntry:
    return InboxEntry("divergent", event_id, EventKind.INBOUND, {"n": event_id})


def insert(event_id: str) -> Any:
    return lambda conn: conn.execute(events_t.insert().values(event_row(entry(event_id), T0)))


async def stored_ids(db: Database) -> set[str]:
    return set(await db.read(lambda conn: conn.scalars(select(events_t.c.event_id)).all()))


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[Database]:
    """A SQLite file database (the one-writer path: a turn to take, a thread to write in)."""
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'smsbot.db'}")
    await database.create_all()
    yield database
    await database.dispose()


@contextlib.asynccontextmanager
async def turn_held_elsewhere(db: Database) -> AsyncIterator[None]:
    """Another task holds the writer's turn until the block ends."""
    held, release = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        async with db.turn():
            held.set()
            await release.wait()

    holder = asyncio.create_task(hold())
    await held.wait()
    try:
        yield
    finally:
        release.set()
        await holder


# --- 1. an accept that gives up before its write is dropped --------------------------------


async def test_an_accept_that_gave_up_before_it_was_written_is_dropped(sqlite_db: Database) -> None:
    inbox = Inbox(sqlite_db, VirtualClock(T0))
    await inbox.start()
    async with asyncio.timeout(10):
        async with turn_held_elsewhere(sqlite_db):
            patient = asyncio.create_task(inbox.accept(entry("evt_patient")))
            hasty = asyncio.create_task(inbox.accept(entry("evt_hasty"), give_up_after=0.2))
            done, _ = await asyncio.wait({hasty}, timeout=2)
            assert hasty in done, "give_up_after was not honoured"
            with pytest.raises(TimeoutError):
                hasty.result()
            assert not patient.done()
        assert await patient is AcceptOutcome.NEW
        await inbox.stop()  # drains the queue
    assert await stored_ids(sqlite_db) == {"evt_patient"}


async def test_a_webhook_the_inbox_cannot_store_in_time_is_a_503(
    tmp_path: Path, sandbox: Sandbox, aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(intake, "STORE_TIMEOUT", 0.2)
    clock = VirtualClock(T0)
    bot = await make_bot(f"sqlite+aiosqlite:///{tmp_path / 'b.db'}", sandbox, EchoHandler(), clock)
    h = Harness(bot, await aiohttp_client(create_app(bot, run_workers=False)), sandbox, clock)
    body = inbound_body("evt_slow")
    async with asyncio.timeout(10):
        async with turn_held_elsewhere(bot.db):
            resp = await h.post(body)
            assert resp.status == 503
            assert "storage unavailable" in (await resp.json())["error"]
        resp = await h.post(body)  # the provider's retry: the first was never written
        assert resp.status == 200
        assert (await resp.json())["status"] == "new"
    assert await h.event_count() == 1


# --- 2. accepts that arrive while the writer waits join one commit ------------------------


async def test_accepts_waiting_for_the_turn_commit_in_one_transaction(sqlite_db: Database) -> None:
    inbox = Inbox(sqlite_db, VirtualClock(T0))
    await inbox.start()
    commits: list[object] = []

    def count(conn: object) -> None:
        commits.append(conn)

    for engine in sqlite_db.write_engines:
        event.listen(engine, "commit", count)
    try:
        async with asyncio.timeout(10):
            async with turn_held_elsewhere(sqlite_db):
                waits = sqlite_db.urgent_waits
                first = asyncio.create_task(inbox.accept(entry("evt_g0")))
                while sqlite_db.urgent_waits == waits:  # the writer took it, waits for its turn
                    await asyncio.sleep(0)
                rest = [asyncio.create_task(inbox.accept(entry(f"evt_g{i}"))) for i in range(1, 20)]
                dups = [asyncio.create_task(inbox.accept(entry(f"evt_g{i}"))) for i in (0, 3, 7)]
                await asyncio.sleep(0)  # every accept has queued its entry
                assert commits == []
            assert await asyncio.gather(first, *rest) == [AcceptOutcome.NEW] * 20
            assert await asyncio.gather(*dups) == [AcceptOutcome.DUPLICATE] * 3
    finally:
        for engine in sqlite_db.write_engines:
            event.remove(engine, "commit", count)
        await inbox.stop()
    assert len(commits) == 1
    assert await stored_ids(sqlite_db) == {f"evt_g{i}" for i in range(20)}


# --- 3. Database.write and turn() -----------------------------------------------------------


async def test_write_commits_on_return_and_keeps_nothing_when_fn_raises(
    sqlite_db: Database,
) -> None:
    await sqlite_db.write(insert("evt_a"))
    assert await stored_ids(sqlite_db) == {"evt_a"}  # seen from another connection: committed

    def insert_then_fail(conn: Connection) -> None:
        insert("evt_b")(conn)
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await sqlite_db.write(insert_then_fail)
    await sqlite_db.write(insert("evt_c"))  # a fresh transaction: evt_b is not carried into it
    assert await stored_ids(sqlite_db) == {"evt_a", "evt_c"}


async def test_write_inside_a_session_is_refused_but_inside_the_own_turn_runs(
    sqlite_db: Database,
) -> None:
    async with asyncio.timeout(5):
        async with sqlite_db.session():
            with pytest.raises(RuntimeError, match=r"inside db\.session\(\)"):
                await sqlite_db.write(insert("evt_in_session"))
        async with sqlite_db.turn():
            await sqlite_db.write(insert("evt_in_turn"))
            await sqlite_db.write(insert("evt_in_turn_2"))
    assert await stored_ids(sqlite_db) == {"evt_in_turn", "evt_in_turn_2"}


async def test_turn_excludes_other_tasks_on_sqlite_only(db: Database) -> None:
    inside: list[str] = []

    async def enter() -> None:
        async with db.turn():
            inside.append("second")

    async with asyncio.timeout(5):
        async with turn_held_elsewhere(db):
            second = asyncio.create_task(enter())
            if db.is_postgres:  # a no-op there: PostgreSQL has writers side by side
                await second
            else:
                for _ in range(5):
                    await asyncio.sleep(0)
                assert inside == []
        await second
    assert inside == ["second"]


# --- 4. load_json walks a value only when it could be nested too deeply --------------------


def nested(depth: int) -> str:
    """Lists and objects alternating, `depth` levels deep in all."""
    text = "1"
    for level in range(depth):
        text = f"[{text}]" if level % 2 else f'{{"a":{text}}}'
    return text


@pytest.mark.parametrize("opener", ["[", '{"a":', "mixed"])
def test_one_level_too_deep_is_refused_and_the_limit_itself_is_not(opener: str) -> None:
    def body(depth: int) -> str:
        if opener == "mixed":
            return nested(depth)
        closer = "]" if opener == "[" else "}"
        return opener * depth + "1" + closer * depth

    with pytest.raises(WebhookFormatError, match="nested too deeply"):
        load_json(body(MAX_JSON_DEPTH + 1).encode())
    assert load_json(body(MAX_JSON_DEPTH).encode()) is not None
    # as deep as allowed, with shallow brackets beside it: walked, and still accepted
    assert load_json(f"[{body(MAX_JSON_DEPTH - 1)},[],{{}},[]]".encode()) is not None


@pytest.mark.parametrize(
    "text",
    [
        "[" + ",".join(["[]"] * 100) + "]",
        '{"a":[' + ",".join(['{"b":[]}'] * 50) + "]}",
        '{"body":"' + "[{" * 100 + '"}',
    ],
    ids=["many-empty-lists", "many-shallow-objects", "brackets-in-a-string"],
)
def test_a_shallow_body_with_many_brackets_is_accepted(text: str) -> None:
    assert load_json(text.encode()) is not None


# --- 5. read_body ---------------------------------------------------------------------------
# A body trickled slower than SMSBOT_BODY_TIMEOUT still gets a 408:
# tests/test_hostile.py::test_a_trickled_body_is_cut_off_with_a_408.


async def test_a_webhook_whose_body_has_arrived_is_read(
    db_url: str, sandbox: Sandbox, aiohttp_client: Any
) -> None:
    clock = VirtualClock(T0)
    bot = await make_bot(db_url, sandbox, EchoHandler(), clock)
    h = Harness(bot, await aiohttp_client(create_app(bot, run_workers=False)), sandbox, clock)
    resp = await h.post(inbound_body("evt_arrived", "hello"))
    assert resp.status == 200
    assert (await resp.json())["status"] == "new"
    assert await h.event_count() == 1


async def test_a_body_still_arriving_is_read_whole(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    app = web.Application()
    settings = settings_for(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", "http://127.0.0.1:9")
    app[BOT] = cast(Any, types.SimpleNamespace(settings=settings))  # only its settings are read
    payload = streams.StreamReader(mock.Mock(_reading_paused=False), 2**16, loop=loop)
    request = make_mocked_request("POST", "/webhooks/divergent", app=app, payload=payload)
    payload.feed_data(b'{"a":')
    loop.call_soon(payload.feed_data, b"1}")  # the rest comes once read_body waits for it
    loop.call_soon(payload.feed_eof)
    async with asyncio.timeout(5):
        assert await read_body(request) == b'{"a":1}'
