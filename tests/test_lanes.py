"""Interactive before bulk: a person who texts the bot is answered ahead of a queued campaign.

The dispatcher reads due conversations in two lanes (claims.due_keys): pending inbound
messages first, up to half a batch, then everything else in arrival order. These tests queue
5,000 bulk starts, then a text from a person, and step the dispatcher one batch at a time on
the virtual clock: the reply is sent while most of the campaign is still queued, and the
campaign keeps moving while people text.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import sqlite3
from typing import Any

from sqlalchemy import func, select, update

from smsbot.app.bulk import StartRow, enqueue_starts
from smsbot.channels.sandbox import Sandbox
from smsbot.clock import VirtualClock
from smsbot.engine.contract import EventKind
from smsbot.pipeline import claims
from smsbot.pipeline.inbox import AcceptOutcome, InboxEntry
from smsbot.store.models import EventState, events_t
from tests.support import VN, inbound_body
from tests.test_faults import T0, FlowRig, appointment, flow_rig, phone
from tests.test_query_plans import (
    SQLITE_BUDGET,
    Statements,
    postgres_problems,
    sqlite_plan,
    sqlite_steps,
)

BULK = 5_000
PERSON = "+447711700001"  # not one of the campaign's phones


async def pending_starts(rig: FlowRig) -> int:
    async with rig.bot.db.session() as s:
        query = select(func.count()).where(
            events_t.c.state == EventState.PENDING.value,
            events_t.c.kind == EventKind.START.value,
        )
        return int((await s.execute(query)).scalar_one())


async def queue_campaign(rig: FlowRig) -> None:
    """5,000 START events pending in the inbox, as one-at-a-time API starts leave them (a bulk
    start steps its own, pipeline/starts.py, unless a conversation is busy)."""
    starts_at = T0.replace(day=20)
    entries = [
        InboxEntry(
            source="api",
            event_id=f"start-{i}",
            kind=EventKind.START,
            payload={"flow": "appointment", "data": appointment(starts_at, f"P{i}")},
            virtual_number=VN,
            phone=phone(i),
        )
        for i in range(BULK)
    ]
    outcomes = await rig.bot.inbox.accept_many(entries)
    assert outcomes == [AcceptOutcome.NEW] * BULK


async def one_round(rig: FlowRig) -> int:
    """One dispatcher batch and one sender claim, as the running workers would do them."""
    dispatcher = rig.bot.dispatcher
    keys = await dispatcher.due_keys(limit=dispatcher.batch_size)
    stepped = await dispatcher.step_safely(keys) if keys else 0
    await rig.bot.sender.send_until_idle()
    return stepped


async def test_a_reply_goes_out_before_the_bulk_backlog_drains(
    db_url: str, sandbox: Sandbox, aiohttp_client: Any
) -> None:
    rig = await flow_rig(db_url, sandbox, aiohttp_client, VirtualClock(T0))
    async with asyncio.timeout(120):
        await queue_campaign(rig)
        assert (await rig.post(inbound_body("evt_person", "hello", sender=PERSON))).status == 200
        rounds = 0
        while not [m for m in sandbox.messages if m.recipient == PERSON]:
            assert await one_round(rig) > 0
            rounds += 1
            assert rounds < 5
        left = await pending_starts(rig)
    # The person was answered in the first batch, with almost the whole campaign still queued.
    assert rounds == 1
    assert left >= BULK - rig.bot.dispatcher.batch_size
    bulk_sent = [m for m in sandbox.messages if m.recipient != PERSON]
    assert len(bulk_sent) < BULK


async def test_bulk_keeps_moving_while_people_text(
    db_url: str, sandbox: Sandbox, aiohttp_client: Any
) -> None:
    """No starvation: with an inbound text in every batch, each batch still starts bulk rows."""
    rig = await flow_rig(db_url, sandbox, aiohttp_client, VirtualClock(T0))
    async with asyncio.timeout(120):
        await queue_campaign(rig)
        before = await pending_starts(rig)
        for n in range(3):
            people = [f"+4477118{n}{i:04d}" for i in range(rig.bot.dispatcher.batch_size)]
            for i, p in enumerate(people):
                body = inbound_body(f"evt_{n}_{i}", "hi", sender=p)
                assert (await rig.post(body)).status == 200
            await one_round(rig)
            after = await pending_starts(rig)
            # half the batch at most goes to the interactive lane: bulk got the rest
            assert before - after >= rig.bot.dispatcher.batch_size // 2
            before = after


async def test_the_interactive_lane_takes_at_most_half_a_batch(
    db_url: str, sandbox: Sandbox, aiohttp_client: Any
) -> None:
    rig = await flow_rig(db_url, sandbox, aiohttp_client, VirtualClock(T0))
    await queue_campaign(rig)
    people = [f"+44771190{i:04d}" for i in range(20)]
    for i, p in enumerate(people):
        assert (await rig.post(inbound_body(f"evt_h{i}", "hi", sender=p))).status == 200
    keys = await rig.bot.db.read(lambda conn: claims.due_keys(conn, rig.clock.now(), 10))
    assert [k.phone for k in keys[:5]] == people[:5]  # the oldest texts first
    assert [k.phone for k in keys[5:]] == [phone(i) for i in range(5)]  # then the campaign


async def drain_dispatcher(rig: FlowRig) -> None:
    """Step every due conversation without sending: the campaign's messages wait in the outbox."""
    dispatcher = rig.bot.dispatcher
    while keys := await dispatcher.due_keys(limit=dispatcher.batch_size):
        assert await dispatcher.step_safely(keys) > 0


async def first_claim_after_a_text(rig: FlowRig, texter: str) -> list[Any]:
    """1,000 campaign questions pending in the outbox, then HOURS from `texter`, answered and
    pending too: what the sender's first claim takes."""
    async with asyncio.timeout(120):
        starts_at = T0.replace(day=20)
        rows = [StartRow(i + 2, phone(i), VN, appointment(starts_at, f"P{i}")) for i in range(1000)]
        bot = rig.bot
        await enqueue_starts(bot.db, bot.handler, bot.clock, "appointment", rows)
        await drain_dispatcher(rig)
        assert (await rig.post(inbound_body("evt_text", "HOURS", sender=texter))).status == 200
        await drain_dispatcher(rig)
        return await rig.bot.sender.claim()


async def test_a_reply_is_claimed_ahead_of_the_outbox_backlog(
    db_url: str, sandbox: Sandbox, aiohttp_client: Any
) -> None:
    """The outbox's lanes: a reply written after a campaign's thousand messages goes first."""
    rig = await flow_rig(db_url, sandbox, aiohttp_client, VirtualClock(T0))
    claimed = await first_claim_after_a_text(rig, PERSON)
    phones = [c.recipient for c in claimed]
    batch = rig.bot.sender.batch_size
    assert len(claimed) == batch < 1000
    assert phones[0] == PERSON  # the reply leads the first claim
    assert phones[1:] == [phone(i) for i in range(batch - 1)]  # then bulk, in order


async def test_the_outbox_lane_never_reorders_a_conversation(
    db_url: str, sandbox: Sandbox, aiohttp_client: Any
) -> None:
    """A reply waits behind an older message to the same phone, even a campaign's."""
    rig = await flow_rig(db_url, sandbox, aiohttp_client, VirtualClock(T0))
    late = phone(999)  # the last of the campaign, far past the first claim
    claimed = await first_claim_after_a_text(rig, late)
    assert late not in [c.recipient for c in claimed]  # its question first, then the answer


async def test_the_outbox_lane_reads_only_answers_past_the_backlog(
    db_url: str, sandbox: Sandbox, aiohttp_client: Any
) -> None:
    """The claim's interactive lane finds the reply through ix_messages_lane, not by reading the
    campaign's pending messages: with `origin IN (…)` SQLite took ix_messages_outbox for its
    order and read every pending message at every claim (22-40 ms at 100,000)."""
    rig = await flow_rig(db_url, sandbox, aiohttp_client, VirtualClock(T0))
    with Statements() as recorded:
        claimed = await first_claim_after_a_text(rig, PERSON)
    assert claimed[0].recipient == PERSON
    lane = {s: p for s, p in recorded.seen.items() if " AS older" in s}
    assert len(lane) == 1, list(lane)  # one SQL text, run for each of the answers' origins
    if rig.bot.db.is_postgres:  # its rows read from the large tables stay within the budget
        assert not await postgres_problems(rig.bot, lane)
        return
    path = rig.bot.db.url.split(":///", 1)[1]
    for sql, params in lane.items():
        assert "ix_messages_lane" in sqlite_plan(path, sql, params)
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
            # the campaign's 999 messages are still pending: a pass over them is far past it
            assert sqlite_steps(conn, sql, params) < SQLITE_BUDGET


# One conversation's many pending events must not hide every other conversation from the
# lanes: a phone (or another bot's auto-reply looping with ours) that sends thousands of texts,
# or thousands of events waiting for a retry after a flow failed for each of them. The lanes
# read pending events in arrival order and keep each conversation's first; they read on past
# what they skip until a batch is found, instead of stopping after a fixed number of rows.
AHEAD = 3_000  # more than a lane's first read: LANE_WINDOW rows a key, 1,600 for a batch


async def test_one_phones_flood_does_not_hide_the_others(
    db_url: str, sandbox: Sandbox, aiohttp_client: Any
) -> None:
    rig = await flow_rig(db_url, sandbox, aiohttp_client, VirtualClock(T0))
    flood = [
        InboxEntry(
            source="divergent",
            event_id=f"flood-{i}",
            kind=EventKind.INBOUND,
            payload={"body": "again", "message_id": f"flood-{i}"},
            virtual_number=VN,
            phone=phone(1),
        )
        for i in range(AHEAD)
    ]
    assert await rig.bot.inbox.accept_many(flood) == [AcceptOutcome.NEW] * AHEAD
    assert (await rig.post(inbound_body("evt_person", "hello", sender=PERSON))).status == 200
    later = InboxEntry(
        "api", "start-after", EventKind.START,
        {"flow": "appointment", "data": appointment(T0.replace(day=20))}, VN, phone(2),
    )  # fmt: skip
    await rig.bot.inbox.accept(later)
    keys = await rig.bot.dispatcher.due_keys(limit=rig.bot.dispatcher.batch_size)
    # the flooding phone once, the person in the interactive lane, the start in arrival order
    assert [k.phone for k in keys] == [phone(1), PERSON, phone(2)]


async def test_events_waiting_for_a_retry_do_not_hide_the_due_ones(
    db_url: str, sandbox: Sandbox, aiohttp_client: Any
) -> None:
    rig = await flow_rig(db_url, sandbox, aiohttp_client, VirtualClock(T0))
    await queue_campaign(rig)  # 5,000 starts; the first AHEAD failed and wait for their retry
    retry = T0 + dt.timedelta(minutes=5)

    def failed(conn: Any) -> None:
        first = [f"start-{i}" for i in range(AHEAD)]
        conn.execute(
            update(events_t)
            .where(events_t.c.event_id.in_(first))
            .values(attempts=1, next_attempt_at=retry)
        )

    await rig.bot.db.write(failed)
    keys = await rig.bot.dispatcher.due_keys(limit=10)
    assert [k.phone for k in keys] == [phone(i) for i in range(AHEAD, AHEAD + 10)]
    rig.clock.set(retry)  # now they are due again, first in arrival order
    keys = await rig.bot.dispatcher.due_keys(limit=10)
    assert [k.phone for k in keys] == [phone(i) for i in range(10)]


async def test_texts_waiting_for_a_retry_leave_the_interactive_lane_to_due_ones(
    db_url: str, sandbox: Sandbox, aiohttp_client: Any
) -> None:
    rig = await flow_rig(db_url, sandbox, aiohttp_client, VirtualClock(T0))
    waiting = [f"+44771160{i:04d}" for i in range(10)]  # their steps failed: retry in 5 minutes
    for i, p in enumerate(waiting):
        assert (await rig.post(inbound_body(f"evt_w{i}", "hi", sender=p))).status == 200
    retry = T0 + dt.timedelta(minutes=5)

    def failed(conn: Any) -> None:
        e = events_t
        conn.execute(
            update(e).where(e.c.kind == EventKind.INBOUND.value).values(next_attempt_at=retry)
        )

    await rig.bot.db.write(failed)
    await queue_campaign(rig)
    due = [f"+44771170{i:04d}" for i in range(5)]
    for i, p in enumerate(due):
        assert (await rig.post(inbound_body(f"evt_d{i}", "hi", sender=p))).status == 200
    keys = await rig.bot.dispatcher.due_keys(limit=10)
    # the lane's five places go to the texts that are due, then the campaign
    assert [k.phone for k in keys] == due + [phone(i) for i in range(5)]
