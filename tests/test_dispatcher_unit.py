"""One unit of work per step batch: the steps run outside the write transaction, which checks
and writes them in one go (issue 13, item 2).

On SQLite the batch reads, steps in the event loop with nothing locked, then writes in one
transaction that keeps a step only if its conversation did not move meanwhile; on PostgreSQL
the rows are locked (SKIP LOCKED) and the batch is one transaction as well.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import Connection, select, text, update

from smsbot.app.server.app import create_app
from smsbot.channels.sandbox import Sandbox
from smsbot.clock import VirtualClock
from smsbot.engine.contract import (
    ConversationKey,
    ConversationSnapshot,
    DispatchEvent,
    EchoHandler,
    StepResult,
)
from smsbot.pipeline import claims
from smsbot.store.engine import Database
from smsbot.store.models import EventState, conversations_t, events_t, messages_t, opt_outs_t
from tests.support import PHONE, VN, Harness, inbound_body, make_bot
from tests.test_pipeline import Writes

T0 = dt.datetime(2026, 1, 15, 14, 22, 30, tzinfo=dt.UTC)


class Meddler:
    """The echo handler, with something done while a chosen step runs (once)."""

    def __init__(self) -> None:
        self.echo = EchoHandler()
        self.during: Callable[[ConversationSnapshot], Awaitable[None]] | None = None
        self.when = ""  # the body whose step meddles
        self.seen: list[tuple[str, int]] = []  # (body, conversation version) of every step

    async def handle(
        self, event: DispatchEvent, snapshot: ConversationSnapshot, now: dt.datetime
    ) -> StepResult:
        body = str(event.payload.get("body", ""))
        self.seen.append((body, snapshot.version))
        if body == self.when and self.during is not None:
            during, self.during = self.during, None
            await during(snapshot)
        return await self.echo.handle(event, snapshot, now)


@pytest.fixture
async def meddled(db_url: str, sandbox: Sandbox, aiohttp_client: Any) -> tuple[Harness, Meddler]:
    clock = VirtualClock(T0)
    handler = Meddler()
    bot = await make_bot(db_url, sandbox, handler, clock)
    client = await aiohttp_client(create_app(bot, run_workers=False))
    return Harness(bot, client, sandbox, clock), handler


async def test_a_webhook_is_stored_while_a_step_runs(meddled: tuple[Harness, Meddler]) -> None:
    harness, handler = meddled
    answered: list[int] = []

    async def webhook_meanwhile(_: ConversationSnapshot) -> None:
        # Another request, in its own task, stores a webhook while this step is running: with
        # the batch's write transaction open across the step, SQLite's one writer would make
        # it wait for the step, which waits for it.
        post = asyncio.create_task(harness.post(inbound_body("evt_during", "meanwhile")))
        answered.append((await asyncio.wait_for(post, 10)).status)

    handler.when, handler.during = "first", webhook_meanwhile
    await harness.post(inbound_body("evt_first", "first"))
    await harness.bot.run_until_idle()
    assert answered == [200]
    bodies = sorted(m.content for m in harness.sandbox.messages)
    assert bodies == ["You said: first", "You said: meanwhile"]


async def test_a_batch_is_one_write_transaction_and_none_is_empty(
    meddled: tuple[Harness, Meddler],
) -> None:
    harness, _ = meddled
    for n in range(5):
        await harness.post(inbound_body(f"evt_{n}", f"hi {n}", sender=f"+4477009001{n:02d}"))
    with Writes(harness.bot.db) as writes:
        assert await harness.bot.dispatcher.run_until_idle() == 5
    assert len(writes.transactions) == 1  # five conversations created, stepped and written
    assert writes.empty() == []


async def test_a_step_whose_conversation_moved_meanwhile_is_stepped_again(
    meddled: tuple[Harness, Meddler],
) -> None:
    harness, handler = meddled
    if harness.bot.db.is_postgres:
        pytest.skip("PostgreSQL locks the row for the step: nothing can move it meanwhile")
    await harness.post(inbound_body("evt_a", "hello"))
    await harness.bot.run_until_idle()

    async def another_process_steps(snapshot: ConversationSnapshot) -> None:
        # as another process's step would: the conversation moves to its next version
        moved = (
            update(conversations_t)
            .where(conversations_t.c.id == snapshot.id)
            .values(version=conversations_t.c.version + 1, data={"moved": True})
        )
        await harness.bot.db.write(lambda conn: conn.execute(moved))

    handler.when, handler.during = "again", another_process_steps
    await harness.post(inbound_body("evt_b", "again"))
    await harness.bot.run_until_idle()
    # computed from version 1, dropped at the write; stepped again from version 2
    assert handler.seen == [("hello", 0), ("again", 1), ("again", 2)]
    assert harness.bot.metrics.value("smsbot_step_conflicts_total") == 1
    assert [m.content for m in harness.sandbox.messages] == ["You said: hello", "You said: again"]
    async with harness.bot.db.session() as s:
        convo = (await s.execute(select(conversations_t))).one()
        states = (await s.execute(select(events_t.c.state).order_by(events_t.c.id))).scalars()
        replies = await s.execute(select(messages_t.c.body).where(messages_t.c.direction == "out"))
        # the second step started from the state that won, not from the one it first read
        assert (convo.version, convo.data) == (3, {"moved": True, "seen": 1, "recent": ["again"]})
        assert list(states) == [EventState.DONE, EventState.DONE]
        assert sorted(replies.scalars()) == ["You said: again", "You said: hello"]


async def test_a_conversation_created_meanwhile_is_not_created_twice(
    meddled: tuple[Harness, Meddler],
) -> None:
    harness, handler = meddled
    if harness.bot.db.is_postgres:
        pytest.skip("PostgreSQL creates and locks the row before the step")

    async def another_process_creates(_: ConversationSnapshot) -> None:
        row = conversations_t.insert().values(
            virtual_number=VN, phone=PHONE, data={"theirs": 1}, version=4, workspace="default"
        )
        await harness.bot.db.write(lambda conn: conn.execute(row))

    handler.when, handler.during = "first", another_process_creates
    await harness.post(inbound_body("evt_new", "first"))
    await harness.bot.run_until_idle()
    assert handler.seen == [("first", 0), ("first", 4)]  # stepped again on the row it found
    async with harness.bot.db.session() as s:
        [convo] = (await s.execute(select(conversations_t))).all()
    assert convo.version == 5
    assert [m.content for m in harness.sandbox.messages] == ["You said: first"]


async def _outbound(harness: Harness) -> list[Any]:
    async with harness.bot.db.session() as s:
        query = select(messages_t).where(messages_t.c.direction == "out")
        return list((await s.execute(query.order_by(messages_t.c.created_at))).all())


async def test_a_reply_is_written_claimed_and_sent_without_a_claim(
    meddled: tuple[Harness, Meddler],
) -> None:
    harness, _ = meddled
    sender = harness.bot.sender
    sender.handover = True  # as its run() does
    await harness.post(inbound_body("evt_h", "hi"))
    assert await harness.bot.dispatcher.run_until_idle() == 1
    [row] = await _outbound(harness)
    assert (row.outbox, row.attempts) == ("inflight", 1)
    assert row.lease_until == T0 + sender.lease
    with Writes(harness.bot.db) as writes:
        assert await sender.send_until_idle() == 1
    [record] = writes.transactions  # no claim: the step's transaction claimed it
    assert [s.split()[0] for s in record] == ["UPDATE"]
    [sent] = harness.sandbox.messages
    assert (sent.content, sent.client_reference) == ("You said: hi", row.id)
    [row] = await _outbound(harness)
    assert (row.outbox, row.status) == ("done", "accepted")


async def test_a_reply_behind_an_open_message_waits_for_the_claim(
    meddled: tuple[Harness, Meddler],
) -> None:
    harness, _ = meddled
    sender = harness.bot.sender
    await harness.post(inbound_body("evt_1", "one"))
    await harness.bot.dispatcher.run_until_idle()  # "You said: one" pending: no handover yet
    sender.handover = True
    await harness.post(inbound_body("evt_2", "two"))
    await harness.bot.dispatcher.run_until_idle()
    assert [(r.body, r.outbox) for r in await _outbound(harness)] == [
        ("You said: one", "pending"),
        ("You said: two", "pending"),  # never ahead of the older one: the claim orders them
    ]
    await harness.bot.run_until_idle()
    assert [m.content for m in harness.sandbox.messages] == ["You said: one", "You said: two"]


async def test_an_opt_out_written_meanwhile_stops_the_handover(
    meddled: tuple[Harness, Meddler],
) -> None:
    harness, handler = meddled
    harness.bot.sender.handover = True

    async def opted_out_elsewhere(_: ConversationSnapshot) -> None:
        stop = opt_outs_t.insert().values(
            virtual_number=VN, phone=PHONE, keyword="STOP", created_at=T0, workspace="default"
        )
        await harness.bot.db.write(lambda conn: conn.execute(stop))

    handler.when, handler.during = "hi", opted_out_elsewhere
    await harness.post(inbound_body("evt_o", "hi"))
    await harness.bot.dispatcher.run_until_idle()
    [row] = await _outbound(harness)
    assert row.outbox == "pending"  # left to the claim, which suppresses it
    await harness.bot.run_until_idle()
    assert harness.sandbox.messages == []
    [row] = await _outbound(harness)
    assert (row.outbox, row.status) == ("done", "suppressed")


class Gated:
    """The sandbox client, holding every send until the gate opens."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.max_batch = inner, inner.max_batch
        self.gate, self.waiting = asyncio.Event(), asyncio.Event()

    async def send(self, message: Any) -> Any:
        self.waiting.set()
        await self.gate.wait()
        return await self.inner.send(message)

    async def send_many(self, messages: Any) -> Any:
        self.waiting.set()
        await self.gate.wait()
        return await self.inner.send_many(messages)


async def test_a_stopping_sender_gives_back_what_it_was_handed(
    meddled: tuple[Harness, Meddler],
) -> None:
    harness, _ = meddled
    sender = harness.bot.sender
    gated = sender.provider = Gated(sender.provider)  # type: ignore[assignment]
    run = asyncio.create_task(sender.run())  # its own loop: handover on
    try:
        await harness.post(inbound_body("evt_a", "first"))
        await harness.bot.dispatcher.run_until_idle()  # handed over; the send waits at the gate
        await asyncio.wait_for(gated.waiting.wait(), 10)
        await harness.post(inbound_body("evt_b", "second", sender="+447700900222"))
        await harness.bot.dispatcher.run_until_idle()  # handed over behind it
        sender.stop()
        gated.gate.set()
    finally:
        await asyncio.wait_for(run, 10)
    rows = {r.body: r for r in await _outbound(harness)}
    assert (rows["You said: first"].outbox, rows["You said: first"].status) == ("done", "accepted")
    second = rows["You said: second"]
    assert (second.outbox, second.attempts) == ("pending", 0)  # any process's claim takes it now


async def test_a_stop_before_run_ends_the_loops_at_once_and_a_later_run_works(
    db_url: str, sandbox: Sandbox
) -> None:
    bot = await make_bot(db_url, sandbox, EchoHandler(), VirtualClock(T0))
    try:
        for loop in (bot.dispatcher, bot.sender):
            loop.stop()  # a bot stopped as soon as it started: its task has not run yet
            await asyncio.wait_for(loop.run(), 10)  # returns: the stop was not forgotten
            again = asyncio.create_task(loop.run())  # and the next run() runs until stopped
            await asyncio.sleep(0)
            assert not again.done()
            loop.stop()
            await asyncio.wait_for(again, 10)
    finally:
        await bot.stop()


async def test_a_conversation_another_process_is_creating_is_left_to_it_not_waited_for(
    pg_database: str,
) -> None:
    db = Database(pg_database.replace("postgresql://", "postgresql+asyncpg://", 1))
    await db.create_all()
    first, second = ConversationKey(VN, PHONE), ConversationKey(VN, "+447700900222")

    def lock(keys: list[ConversationKey]) -> Callable[[Connection], Any]:
        return lambda conn: claims.lock_conversations(conn, keys, postgres=True)

    try:
        async with db.transaction() as other:  # another process's batch creates `first`
            assert set(await other.run(lock([first]))) == {first}
            async with db.transaction() as batch:  # this one wants `first` too: not yet hers
                await batch.run(lambda conn: conn.execute(text("SET LOCAL lock_timeout = '5s'")))
                assert set(await batch.run(lock([first, second]))) == {second}
        async with db.transaction() as batch:  # created and committed: an ordinary row now
            assert set(await batch.run(lock([first, second]))) == {first, second}
    finally:
        await db.dispose()


async def test_a_batch_writes_its_messages_and_events_with_one_statement_each(
    meddled: tuple[Harness, Meddler],
) -> None:
    """The batch's messages and events each go in one statement: sqlite3's executemany on
    SQLite; on PostgreSQL arrays (asyncpg's executemany would run a row at a time on the
    server). Its conversations stay an executemany on both: as arrays, measured, no faster."""
    harness, _ = meddled
    senders = [f"+4477009001{n:02d}" for n in range(5)]
    for n, sender in enumerate(senders):
        await harness.post(inbound_body(f"evt_a{n}", f"hi {n}", sender=sender))
    await harness.bot.dispatcher.run_until_idle()  # the conversations are created
    harness.clock.advance(dt.timedelta(minutes=5))
    for n, sender in enumerate(senders):
        await harness.post(inbound_body(f"evt_b{n}", f"again {n}", sender=sender))
    with Writes(harness.bot.db) as writes:
        assert await harness.bot.dispatcher.run_until_idle() == 5
    [statements] = writes.transactions
    for table in ("INSERT INTO messages", "UPDATE webhook_events"):
        mine = [s for s in statements if s.startswith(table)]
        assert len(mine) == 1, (table, mine)
        assert ("unnest" in mine[0] or "ANY" in mine[0]) == harness.bot.db.is_postgres, mine
    async with harness.bot.db.engine.connect() as conn:
        rows = (await conn.execute(select(conversations_t).order_by(conversations_t.c.phone))).all()
        states = (await conn.execute(select(events_t.c.event_id, events_t.c.state))).all()
    assert [(r.phone, r.version, r.last_activity_at) for r in rows] == [
        (sender, 2, T0 + dt.timedelta(minutes=5)) for sender in senders
    ]
    assert {state for _, state in states} == {EventState.DONE.value}
    await harness.bot.run_until_idle()  # and the replies go out
    bodies = sorted(m.content for m in harness.sandbox.messages)
    assert bodies == sorted([f"You said: hi {n}" for n in range(5)] + [
        f"You said: again {n}" for n in range(5)])  # fmt: skip


class Held:
    """The echo handler, except that the step of the text `body` waits until released."""

    def __init__(self, body: str) -> None:
        self.echo = EchoHandler()
        self.body = body
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def handle(
        self, event: DispatchEvent, snapshot: ConversationSnapshot, now: dt.datetime
    ) -> StepResult:
        if event.payload.get("body") == self.body:
            self.entered.set()
            await self.release.wait()
        return await self.echo.handle(event, snapshot, now)


async def _pending_of(bot: Any, phone: str) -> int:
    async with bot.db.session() as s:
        query = select(events_t.c.id).where(
            events_t.c.phone == phone, events_t.c.state == EventState.PENDING.value
        )
        return len((await s.execute(query)).all())


@pytest.fixture
async def held(
    pg_database: str, sandbox: Sandbox, aiohttp_client: Any
) -> AsyncIterator[tuple[Harness, Held]]:
    """PostgreSQL (where a dispatcher runs several batches at once), its loop running, and the
    step of the text "slow" held until the test releases it."""
    clock = VirtualClock(T0)
    handler = Held("slow")
    db_url = pg_database.replace("postgresql://", "postgresql+asyncpg://", 1)
    bot = await make_bot(db_url, sandbox, handler, clock)
    assert bot.dispatcher.workers > 1
    client = await aiohttp_client(create_app(bot, run_workers=False))
    running = asyncio.create_task(bot.dispatcher.run())
    try:
        yield Harness(bot, client, sandbox, clock), handler
    finally:
        handler.release.set()
        bot.dispatcher.stop()
        await asyncio.wait_for(running, 30)
        await bot.stop()


OTHERS = [f"+4477009003{i:02d}" for i in range(5)]


async def test_a_few_due_wait_for_the_batch_in_flight_and_go_together(
    held: tuple[Harness, Held],
) -> None:
    """Texts that come while a batch runs go as one batch after it, not a batch each."""
    harness, handler = held
    harness.bot.dispatcher.gather_wait = 60.0  # the release below comes first, however slow
    assert (await harness.post(inbound_body("evt_slow", "slow"))).status == 200
    async with asyncio.timeout(30):  # deadlines, not measurements
        await handler.entered.wait()
        for i, phone in enumerate(OTHERS):  # each stored and the dispatcher told of it
            assert (await harness.post(inbound_body(f"evt_{i}", "hi", sender=phone))).status == 200
        assert [await _pending_of(harness.bot, p) for p in OTHERS] == [1] * len(OTHERS)
        handler.release.set()
        while sum([await _pending_of(harness.bot, p) for p in [PHONE, *OTHERS]]):
            await asyncio.sleep(0.01)
    # the held text's batch, then the five together (a batch each as they came, before)
    assert harness.bot.metrics.value("smsbot_step_batches_total") == 2


async def test_a_slow_step_holds_the_others_back_no_longer_than_the_gather_wait(
    held: tuple[Harness, Held],
) -> None:
    harness, handler = held
    assert (await harness.post(inbound_body("evt_slow", "slow"))).status == 200
    async with asyncio.timeout(30):
        await handler.entered.wait()
        for i, phone in enumerate(OTHERS):
            assert (await harness.post(inbound_body(f"evt_{i}", "hi", sender=phone))).status == 200
        while sum([await _pending_of(harness.bot, p) for p in OTHERS]):
            await asyncio.sleep(0.01)
    assert await _pending_of(harness.bot, PHONE) == 1  # still held: the others went beside it
    handler.release.set()
