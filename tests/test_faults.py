"""Faults under load: provider outages, a database that goes away, duplicate storms, STOP races.

Each test drives the real application (or a real `smsbot serve` process) and checks one promise
from DESIGN.md once the fault has passed: every accepted message answered exactly once, and
nothing but the confirmation after STOP. Every test is bounded by asyncio.timeout.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import func, select

from smsbot.app.server.app import create_app
from smsbot.channels.base import BulkOutcome, OutboundSms, SendResult
from smsbot.channels.divergent.client import DivergentClient
from smsbot.channels.retry import RetryPolicy
from smsbot.channels.sandbox import Sandbox
from smsbot.clock import Clock, SystemClock, VirtualClock
from smsbot.engine.contract import ConversationKey, EchoHandler, EventKind, Origin, StepHandler
from smsbot.engine.runtime import FlowRuntime
from smsbot.pipeline.bot import Bot
from smsbot.pipeline.inbox import InboxEntry
from smsbot.sms.status import DeliveryStatus
from smsbot.store.engine import Database
from smsbot.store.models import (
    EventState,
    OutboxState,
    TimerState,
    conversations_t,
    events_t,
    messages_t,
    new_token,
    opt_outs_t,
    timers_t,
)
from tests.faults_pg import PrivatePostgres, require_binaries
from tests.processes import ServerProcess
from tests.support import (
    API_KEY,
    PHONE,
    SECRET,
    VN,
    Harness,
    conversation_id,
    inbound_body,
    no_sleep,
    settings_for,
    signed,
)

REPO = Path(__file__).resolve().parents[1]
T0 = dt.datetime(2026, 1, 15, 9, 0, tzinfo=dt.UTC)
OPT_OUT_CONFIRMATION = "You have been unsubscribed"


def phone(i: int) -> str:
    """The i-th test phone, E.164."""
    return f"+4477009{i:05d}"


async def new_bot(
    db_url: str,
    sandbox: Sandbox,
    handler: StepHandler,
    clock: Clock,
    *,
    timeout: float = 0.5,
    retry: RetryPolicy | None = None,
    env: dict[str, str] | None = None,
) -> Bot:
    """A bot on a fresh schema whose provider client gives up on a silent provider quickly."""
    assert sandbox.url is not None
    db = Database(db_url)
    await db.create_all()
    provider = DivergentClient(
        API_KEY,
        sandbox.url,
        timeout=timeout,
        retry=retry or RetryPolicy(attempts=2, sleep=no_sleep),
    )
    settings = settings_for(db_url, sandbox.url, **(env or {}))
    return Bot(settings, provider=provider, handler=handler, clock=clock, db=db, poll_interval=0.01)


async def outbound(db: Database, to: str | None = None) -> list[Any]:
    """Our outbound message rows, oldest first (optionally only those to one phone)."""
    query = select(messages_t).where(messages_t.c.direction == "out")
    if to is not None:
        query = query.where(messages_t.c.phone == to)
    async with db.session() as s:
        return list((await s.execute(query.order_by(messages_t.c.created_at))).all())


async def settled(db: Database) -> bool:
    """True when no event is pending and nothing is waiting in the outbox."""
    async with db.session() as s:
        events = await s.execute(
            select(func.count()).where(events_t.c.state == EventState.PENDING.value)
        )
        outbox = await s.execute(
            select(func.count()).where(
                messages_t.c.outbox.in_([OutboxState.PENDING.value, OutboxState.INFLIGHT.value])
            )
        )
        return events.scalar_one() == 0 and outbox.scalar_one() == 0


async def wait_until(predicate: Any, timeout: float, interval: float = 0.02) -> None:
    """Poll an async or plain predicate until it is true, at most `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while True:
            value = predicate()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return
            await asyncio.sleep(interval)


def sent_once_each(sandbox: Sandbox, expected: collections.Counter[tuple[str, str]]) -> None:
    """Assert the sandbox accepted exactly `expected` (recipient, text) pairs, each once."""
    got = collections.Counter((m.recipient, m.content) for m in sandbox.messages)
    twice = [k for k, n in got.items() if n > 1]
    assert not twice, f"sent more than once: {twice[:5]}"
    assert got == expected


# --- 1. the provider goes away and comes back -----------------------------------------------


async def test_provider_503s_then_hung_connections_then_recovery_sends_each_reply_once(
    db_url: str, sandbox: Sandbox, aiohttp_client: Any
) -> None:
    """503s, then a provider that accepts connections and never answers; then it recovers."""
    clock = VirtualClock(T0)
    bot = await new_bot(db_url, sandbox, EchoHandler(), clock)
    h = Harness(bot, await aiohttp_client(create_app(bot, run_workers=False)), sandbox, clock)
    expected: collections.Counter[tuple[str, str]] = collections.Counter()

    async def text(i: int, n: int) -> None:
        body = inbound_body(f"evt_out_{i}_{n}", f"m{i}-{n}", sender=phone(i))
        assert (await h.post(body)).status == 200
        expected[(phone(i), f"You said: m{i}-{n}")] += 1

    async with asyncio.timeout(60):
        for i in range(12):
            await text(i, 0)
        await text(0, 1)  # one phone twice: its replies wait together

        sandbox.set_failure(503)  # phase 1: the provider answers 503 to every call
        await bot.run_until_idle()
        assert sandbox.messages == []
        assert sandbox.calls and {c.status for c in sandbox.calls} == {503}

        sandbox.set_failure(None)  # phase 2: connections open, but nothing ever answers
        sandbox.hang = True
        for i in range(12, 16):  # more arrive during the outage
            await text(i, 0)
        for _ in range(3):
            clock.advance(dt.timedelta(minutes=2))  # past every backoff: each round retries
            started = time.monotonic()
            await bot.run_until_idle()
            # each call gives up after the client's 0.5 s timeout (two attempts): no stall
            assert time.monotonic() - started < 10
        assert sandbox.messages == []
        rows = await outbound(bot.db)
        assert len(rows) == sum(expected.values())
        assert {r.outbox for r in rows} == {OutboxState.PENDING}  # none left claimed
        assert {r.status for r in rows} == {DeliveryStatus.QUEUED}
        assert all(r.attempts >= 4 and r.error for r in rows[:13])

        sandbox.reset()  # recovery: hung calls are released (they answer 503), all is well
        clock.advance(dt.timedelta(minutes=2))
        await bot.run_until_idle()
        sent_once_each(sandbox, expected)
        clock.advance(dt.timedelta(hours=2))  # nothing left to retry, nothing goes twice
        await text(20, 0)
        await bot.run_until_idle()
        sent_once_each(sandbox, expected)
        rows = await outbound(bot.db)
        assert {(r.outbox, r.status) for r in rows} == {(OutboxState.DONE, DeliveryStatus.ACCEPTED)}
        assert {r.id for r in rows} == {m.client_reference for m in sandbox.messages}


async def test_429_retry_after_holds_the_whole_batch_until_it_passes(
    db_url: str, sandbox: Sandbox, aiohttp_client: Any
) -> None:
    clock = VirtualClock(T0)
    bot = await new_bot(db_url, sandbox, EchoHandler(), clock)
    h = Harness(bot, await aiohttp_client(create_app(bot, run_workers=False)), sandbox, clock)
    async with asyncio.timeout(30):
        for i in range(10):
            await h.post(inbound_body(f"evt_429_{i}", f"r{i}", sender=phone(i)))
        sandbox.set_failure(429, count=2, retry_after=90)  # both attempts of the client
        await bot.run_until_idle()
        assert [c.status for c in sandbox.calls] == [429, 429]
        for _ in range(3):  # the provider said 90 s: not one call before then
            clock.advance(dt.timedelta(seconds=29))
            await bot.run_until_idle()
            assert [c.status for c in sandbox.calls] == [429, 429]
        clock.advance(dt.timedelta(seconds=4))
        await bot.run_until_idle()
        sent_once_each(
            sandbox, collections.Counter((phone(i), f"You said: r{i}") for i in range(10))
        )
        assert [c.status for c in sandbox.calls] == [429, 429, 200]  # one bulk call for all


async def test_a_reply_queued_during_retry_after_waits_for_it_too(
    db_url: str, sandbox: Sandbox, aiohttp_client: Any
) -> None:
    clock = VirtualClock(T0)
    bot = await new_bot(db_url, sandbox, EchoHandler(), clock)
    h = Harness(bot, await aiohttp_client(create_app(bot, run_workers=False)), sandbox, clock)
    async with asyncio.timeout(30):
        await h.post(inbound_body("evt_ra_1", "first", sender=phone(1)))
        sandbox.set_failure(429, count=2, retry_after=120)
        await bot.run_until_idle()
        assert [c.status for c in sandbox.calls] == [429, 429]
        clock.advance(dt.timedelta(seconds=10))
        await h.post(inbound_body("evt_ra_2", "second", sender=phone(2)))
        await bot.run_until_idle()
        # The provider asked for 120 s of quiet, 10 s ago: calling it now is not honouring that.
        assert [c.status for c in sandbox.calls] == [429, 429]
        clock.advance(dt.timedelta(seconds=111))
        await bot.run_until_idle()
        assert len(sandbox.messages) == 2


@pytest.mark.slow
async def test_provider_outage_with_background_workers_in_real_time(
    db_url: str, sandbox: Sandbox, aiohttp_client: Any
) -> None:
    """The same outage, with the dispatcher and sender running on the wall clock."""
    clock = SystemClock()
    retry = RetryPolicy(attempts=2, base_delay=0.05, max_delay=0.2)
    bot = await new_bot(db_url, sandbox, EchoHandler(), clock, retry=retry)
    h = Harness(bot, await aiohttp_client(create_app(bot, run_workers=True)), sandbox, clock)
    expected = collections.Counter((phone(i), f"You said: w{i}") for i in range(30))

    async def text(i: int) -> None:
        resp = await h.post(inbound_body(f"evt_w{i}", f"w{i}", sender=phone(i)))
        assert resp.status == 200

    async with asyncio.timeout(60):
        sandbox.set_failure(503)
        await asyncio.gather(*(text(i) for i in range(15)))
        await wait_until(lambda: len(sandbox.calls) >= 2, 10)
        await asyncio.sleep(0.5)
        sandbox.set_failure(None)
        sandbox.hang = True
        await asyncio.gather(*(text(i) for i in range(15, 30)))
        await asyncio.sleep(1.5)
        assert sandbox.messages == []
        sandbox.reset()  # recovered
        await wait_until(lambda: len(sandbox.messages) >= 30, 30)
        await asyncio.sleep(0.5)  # a second send, if any, would land now
        sent_once_each(sandbox, expected)
        await wait_until(lambda: settled(bot.db), 10)


async def test_retry_after_in_real_time_nothing_reaches_the_provider_early(
    db_url: str, sandbox: Sandbox, aiohttp_client: Any
) -> None:
    """Real clock, background sender, the client's own retry: nothing before Retry-After."""
    clock = SystemClock()
    retry = RetryPolicy(attempts=2, max_delay=5.0)  # as `smsbot serve` builds it
    bot = await new_bot(db_url, sandbox, EchoHandler(), clock, timeout=2.0, retry=retry)
    h = Harness(bot, await aiohttp_client(create_app(bot, run_workers=True)), sandbox, clock)
    async with asyncio.timeout(30):
        sandbox.set_failure(429, count=1, retry_after=1.5)
        await h.post(inbound_body("evt_rt", "rt"))
        await wait_until(lambda: sandbox.calls, 10, interval=0.005)
        refused_at = time.monotonic()
        await wait_until(lambda: sandbox.messages, 10, interval=0.005)
        assert time.monotonic() - refused_at >= 1.4
        assert [c.status for c in sandbox.calls] == [429, 200]


# --- 3. the same events, many times, at once -------------------------------------------------


async def test_duplicate_storm_each_event_has_one_effect(
    db_url: str, sandbox: Sandbox, aiohttp_client: Any
) -> None:
    """40 events, each delivered three times concurrently while the workers run; then replayed."""
    clock = SystemClock()
    bot = await new_bot(db_url, sandbox, EchoHandler(), clock, timeout=5.0)
    h = Harness(bot, await aiohttp_client(create_app(bot, run_workers=True)), sandbox, clock)
    events = {
        f"evt_storm_{i:02d}": inbound_body(f"evt_storm_{i:02d}", f"s{i:02d}", sender=phone(i % 20))
        for i in range(40)
    }
    deliveries = [(event_id, body) for event_id, body in events.items() for _ in range(3)]
    random.Random(7).shuffle(deliveries)

    async def deliver(event_id: str, body: bytes) -> tuple[str, int, str]:
        resp = await h.post(body)
        return event_id, resp.status, (await resp.json())["status"]

    async with asyncio.timeout(60):
        answers = await asyncio.gather(*(deliver(e, b) for e, b in deliveries))
        assert {status for _, status, _ in answers} == {200}
        outcomes = collections.defaultdict(list)
        for event_id, _, outcome in answers:
            outcomes[event_id].append(outcome)
        assert {e: sorted(o) for e, o in outcomes.items()} == {
            e: ["duplicate", "duplicate", "new"] for e in events
        }
        await wait_until(lambda: len(sandbox.messages) >= 40, 30)
        await wait_until(lambda: settled(bot.db), 10)
        # the provider's retries, later: all duplicates, nothing new happens
        replays = await asyncio.gather(*(deliver(e, b) for e, b in deliveries))
        assert {(status, outcome) for _, status, outcome in replays} == {(200, "duplicate")}
        await asyncio.sleep(0.3)
        await wait_until(lambda: settled(bot.db), 10)
    expected = collections.Counter(
        (phone(i % 20), f"You said: s{i:02d}") for i in range(len(events))
    )
    sent_once_each(sandbox, expected)
    async with bot.db.session() as s:
        rows = (await s.execute(select(events_t.c.event_id, events_t.c.state))).all()
        inbound = (
            await s.execute(select(func.count()).where(messages_t.c.direction == "in"))
        ).scalar_one()
    assert sorted(r.event_id for r in rows) == sorted(events)  # one inbox row each
    assert {r.state for r in rows} == {EventState.DONE}
    assert inbound == len(events)


# --- 4. STOP racing queued replies, reminders and a bulk send ---------------------------------

TOKEN = "operator-token-faults"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def appointment(starts_at: dt.datetime, name: str = "Sam") -> dict[str, str]:
    return {"name": name, "starts_at": starts_at.isoformat(), "location": "Riverside"}


@dataclasses.dataclass
class FlowRig(Harness):
    """A Harness running the example flows, with the operator API and timer helpers."""

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        resp = await self.client.request(method, path, headers=AUTH, **kwargs)
        return resp.status, await resp.json()

    async def bulk(self, phones: list[str], starts_at: dt.datetime) -> dict[str, Any]:
        rows = [{"to": p, "data": appointment(starts_at, f"P{p[-3:]}")} for p in phones]
        status, body = await self.call("POST", "/api/flows/appointment/start-many", json=rows)
        assert status == 202, body
        return dict(body)

    async def add_reminders(self, to: str, count: int, starts_at: dt.datetime) -> None:
        """Insert `count` reminders due now for `to`, as a step would have scheduled them."""
        now = self.clock.now()
        async with self.bot.db.session() as s, s.begin():
            convo = await conversation_id(s, VN, to)
            payload = {"template": "appointment/reminder.txt", "data": appointment(starts_at)}
            await s.execute(
                timers_t.insert(),
                [
                    {
                        "conversation_id": convo,
                        "name": f"extra-{new_token()[:8]}",
                        "kind": "remind",
                        "token": new_token(),
                        "due_at": now,
                        "payload": payload,
                        "state": TimerState.SCHEDULED.value,
                        "created_at": now,
                    }
                    for _ in range(count)
                ],
            )


async def flow_rig(db_url: str, sandbox: Sandbox, aiohttp_client: Any, clock: Clock) -> FlowRig:
    env = {
        "SMSBOT_API_KEY": TOKEN,
        "SMSBOT_DEFAULT_SENDER": VN,
        "SMSBOT_FLOWS_DIR": str(REPO / "flows"),
        "SMSBOT_TEMPLATES_DIR": str(REPO / "templates"),
    }
    assert sandbox.url is not None
    runtime = FlowRuntime.from_settings(settings_for(db_url, sandbox.url, **env))
    bot = await new_bot(db_url, sandbox, runtime, clock, timeout=5.0, env=env)
    client = await aiohttp_client(create_app(bot, run_workers=not isinstance(clock, VirtualClock)))
    return FlowRig(bot, client, sandbox, clock)


async def assert_nothing_after_the_confirmation(rig: FlowRig, to: str = PHONE) -> None:
    """The promise, read from what the provider got and from our own outbox."""
    record = [m for m in rig.sandbox.messages if m.recipient == to]
    confirmations = [i for i, m in enumerate(record) if m.content.startswith(OPT_OUT_CONFIRMATION)]
    assert len(confirmations) == 1, [m.content for m in record]
    after = record[confirmations[0] + 1 :]
    assert after == [], f"sent after the STOP confirmation: {[m.content for m in after]}"
    sent = {m.client_reference for m in record}
    rows = await outbound(rig.bot.db, to)
    for row in rows:
        assert row.outbox == OutboxState.DONE, row
        if row.id in sent:
            assert row.status == DeliveryStatus.ACCEPTED
        else:
            assert row.status == DeliveryStatus.SUPPRESSED, row
            assert row.origin != Origin.COMPLIANCE
    async with rig.bot.db.session() as s:
        opted = (await s.execute(select(func.count()).where(opt_outs_t.c.phone == to))).scalar_one()
        scheduled = (
            await s.execute(
                select(func.count())
                .select_from(timers_t.join(conversations_t))
                .where(
                    conversations_t.c.phone == to,
                    timers_t.c.state == TimerState.SCHEDULED.value,
                )
            )
        ).scalar_one()
    assert opted == 1
    assert scheduled == 0


async def test_stop_wins_over_queued_replies_reminders_and_bulk_starts(
    db_url: str, sandbox: Sandbox, aiohttp_client: Any
) -> None:
    """Virtual clock, steps and sends interleaved by hand: every ordering the race allows."""
    clock = VirtualClock(T0)
    rig = await flow_rig(db_url, sandbox, aiohttp_client, clock)
    starts_at = T0 + dt.timedelta(days=5)
    others = [phone(i) for i in range(30)]
    key_steps = 0
    async with asyncio.timeout(60):
        code, _ = await rig.call(
            "POST",
            "/api/flows/appointment/start",
            json={"to": PHONE, "data": appointment(starts_at)},
        )
        assert code == 202
        await rig.bot.run_until_idle()  # the question goes out before any STOP: allowed
        await rig.post(inbound_body("evt_yes", "YES"))  # confirmed: a reminder is scheduled
        await rig.bot.dispatcher.run_until_idle()  # ... and the confirmation queued, unsent

        # Queued ahead of the STOP: operator messages, reminders firing, a bulk start.
        for n in range(3):
            code, _ = await rig.call("POST", "/api/messages", json={"to": PHONE, "text": f"op {n}"})
            assert code == 202
        await rig.add_reminders(PHONE, 2, starts_at)
        assert await rig.bot.fire_due_timers() == 2
        assert (await rig.bulk([*others[:15], PHONE, *others[15:]], starts_at))["started"] == 31
        assert (await rig.post(inbound_body("evt_stop", "STOP"))).status == 200
        # Queued behind it, before it is processed: all of these still look allowed.
        await rig.add_reminders(PHONE, 2, starts_at)
        assert await rig.bot.fire_due_timers() == 2
        code, _ = await rig.call("POST", "/api/messages", json={"to": PHONE, "text": "op late"})
        assert code == 202
        assert (await rig.bulk([PHONE, phone(99)], starts_at))["started"] == 2
        await rig.post(inbound_body("evt_stop_again", "stop"))  # recorded, not confirmed again

        # Run this phone's steps one at a time, sending between them, so some of its
        # messages reach the sender before the STOP is processed and some after.
        key = ConversationKey(VN, PHONE)
        while await rig.bot.dispatcher.step(key):
            key_steps += 1
            if key_steps in (2, 4):  # steps 5 and 6 (a reminder, a bulk question) stay queued
                await rig.bot.sender.send_once()
        assert key_steps == 12

        # After the STOP: reminders that were already scheduled fire, and fire nothing.
        await rig.add_reminders(PHONE, 2, starts_at)
        assert await rig.bot.fire_due_timers() == 2
        code, _ = await rig.call("POST", "/api/messages", json={"to": PHONE, "text": "nope"})
        assert code == 409
        assert (await rig.bulk([PHONE, phone(98)], starts_at))["skipped_opted_out"] == 1
        await rig.bot.run_until_idle()

    await assert_nothing_after_the_confirmation(rig)
    record = [m.content for m in sandbox.messages if m.recipient == PHONE]
    assert record[0].startswith("Hi Sam")  # sent before the STOP: that is allowed
    suppressed = [r for r in await outbound(rig.bot.db, PHONE) if r.status == "suppressed"]
    assert len(suppressed) >= 2  # the race really left work queued behind the STOP
    for p in [*others, phone(98), phone(99)]:  # everyone else got their bulk question, once
        assert [m.content[:4] for m in sandbox.messages if m.recipient == p] == [
            f"Hi P{p[-3:]}"[:4]
        ]


@pytest.mark.slow
async def test_stop_under_concurrent_load_with_background_workers(
    db_url: str, sandbox: Sandbox, aiohttp_client: Any
) -> None:
    """Real clock and workers: operator sends, reminders and a bulk start race a STOP."""
    clock = SystemClock()
    rig = await flow_rig(db_url, sandbox, aiohttp_client, clock)
    starts_at = clock.now() + dt.timedelta(days=30)
    others = [phone(i) for i in range(120)]
    stop_answered = asyncio.Event()
    async with asyncio.timeout(90):
        code, _ = await rig.call(
            "POST",
            "/api/flows/appointment/start",
            json={"to": PHONE, "data": appointment(starts_at)},
        )
        assert code == 202

        async def operator() -> None:
            for n in range(25):
                code, _ = await rig.call(
                    "POST", "/api/messages", json={"to": PHONE, "text": f"operator {n}"}
                )
                assert code in (202, 409)
                await asyncio.sleep(0.01)

        async def reminders() -> None:
            for _ in range(10):
                await rig.add_reminders(PHONE, 2, starts_at)
                await rig.bot.fire_due_timers()
                await asyncio.sleep(0.02)

        async def bulk() -> None:
            for chunk in (others[:60], others[60:]):
                await rig.bulk([*chunk, PHONE], starts_at)
                await asyncio.sleep(0.05)

        async def stop() -> None:
            await wait_until(lambda: any(m.recipient == PHONE for m in sandbox.messages), 20)
            await asyncio.sleep(0.05)
            assert (await rig.post(inbound_body("evt_stop_live", "STOP"))).status == 200
            await asyncio.sleep(0.05)
            assert (await rig.post(inbound_body("evt_stop_live2", "Stop."))).status == 200
            stop_answered.set()

        await asyncio.gather(operator(), reminders(), bulk(), stop())
        await wait_until(lambda: settled(rig.bot.db), 60, interval=0.1)
        await asyncio.sleep(0.3)  # anything still in flight would land now

    await assert_nothing_after_the_confirmation(rig)
    for p in others:
        assert len([m for m in sandbox.messages if m.recipient == p]) == 1


# --- 2. PostgreSQL goes away under load, and comes back ---------------------------------------


@dataclasses.dataclass
class Delivery:
    """One webhook as the provider would send it, and what the server answered."""

    event_id: str
    body: bytes
    status: int | None = None
    seconds: float = 0.0
    error: str | None = None
    phases: tuple[str, str] = ("", "")  # the test's phase when it was sent and answered


async def deliver(http: aiohttp.ClientSession, url: str, d: Delivery) -> None:
    started = time.monotonic()
    try:
        async with http.post(url, data=d.body, headers=signed(d.body, SystemClock())) as resp:
            await resp.read()
            d.status = resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        d.status, d.error = None, f"{type(exc).__name__}: {exc}"
    d.seconds = time.monotonic() - started


@pytest.mark.slow
@pytest.mark.postgres
async def test_postgres_stopped_under_load_answers_503_then_recovers_without_restart(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    bin_dir = require_binaries()
    pg = PrivatePostgres(bin_dir)
    server: ServerProcess | None = None
    try:
        await asyncio.to_thread(pg.init)
        await asyncio.to_thread(pg.start)
        assert sandbox.url is not None
        # Receipts reconcile a send whose outcome could not be recorded while the database
        # was away; a short lease and grace make a wrong resend show up within the test.
        env = {"SMSBOT_LEASE_SECONDS": "2", "SMSBOT_RESEND_GRACE": "8s", "SMSBOT_WORKERS": "8"}
        server = ServerProcess(pg.url, sandbox.url, tmp_path / "serve.log", **env)
        sandbox.webhook_url = f"{server.url}/webhooks/divergent"
        sandbox.webhook_secret = SECRET
        sandbox.receipt_retry_delays = (0.5, 1.0, 2.0, 4.0)
        await server.start()
        webhook = f"{server.url}/webhooks/divergent"
        deliveries: list[Delivery] = []
        health: list[tuple[str, int | None]] = []
        phase = "before"
        loading = True
        timeout = aiohttp.ClientTimeout(total=15)

        async def phone_texting(http: aiohttp.ClientSession, p: int) -> None:
            n = 0
            while loading:
                event_id = f"evt_pg_{p:02d}_{n:04d}"
                d = Delivery(event_id, inbound_body(event_id, f"pg {p}.{n}", sender=phone(p)))
                deliveries.append(d)
                sent_in = phase
                await deliver(http, webhook, d)
                d.phases = (sent_in, phase)
                n += 1
                await asyncio.sleep(0.05)

        async def probe_health(http: aiohttp.ClientSession) -> None:
            while loading:
                try:
                    async with http.get(f"{server.url}/healthz") as resp:
                        health.append((phase, resp.status))
                except (aiohttp.ClientError, TimeoutError):
                    health.append((phase, None))
                await asyncio.sleep(0.1)

        async with aiohttp.ClientSession(timeout=timeout) as http, asyncio.timeout(150):
            load = [asyncio.create_task(phone_texting(http, p)) for p in range(12)]
            probe = asyncio.create_task(probe_health(http))
            await asyncio.sleep(1.5)
            phase = "stopping"
            await asyncio.to_thread(pg.stop, "fast")
            phase = "down"
            await asyncio.sleep(3.0)
            phase = "restarting"
            await asyncio.to_thread(pg.start)
            restarted = time.monotonic()
            phase = "up"
            await wait_until(lambda: (phase, 200) in health, 15)
            await asyncio.sleep(2.0)  # load goes on after the recovery
            loading = False
            await asyncio.gather(*load, probe)

            answered = [d for d in deliveries if d.status is not None]
            assert len(answered) == len(deliveries), [d.error for d in deliveries if d.error][:3]
            assert {d.status for d in deliveries} <= {200, 503}, collections.Counter(
                d.status for d in deliveries
            )
            slowest = max(d.seconds for d in deliveries)
            assert slowest < 5.0, f"a webhook took {slowest:.1f}s"
            refused = [d for d in deliveries if d.status == 503]
            assert refused, "no webhook met the outage"
            assert {d.status for d in deliveries if d.phases == ("before", "before")} == {200}
            assert {d.status for d in deliveries if d.phases == ("down", "down")} == {503}
            assert {d.status for d in deliveries if d.phases[0] == "up"} == {200}  # recovered
            assert ("down", 503) in health
            assert {s for p, s in health if p == "down"} <= {503}
            assert server.proc is not None and server.proc.poll() is None  # never restarted

            # The provider retries what was refused: now it is taken.
            for d in refused:
                for _ in range(20):
                    await deliver(http, webhook, d)
                    if d.status == 200:
                        break
                    await asyncio.sleep(0.2)
                assert d.status == 200, d

            expected = collections.Counter(
                (
                    phone(int(d.event_id[7:9])),
                    f"You said: pg {int(d.event_id[7:9])}.{int(d.event_id[10:])}",
                )
                for d in deliveries
            )
            await wait_until(lambda: len(sandbox.messages) >= len(deliveries), 60, 0.1)
            # past lease + grace after the restart: a send that would wrongly repeat, has
            await asyncio.sleep(max(0.0, restarted + 11.0 - time.monotonic()))
        sent_once_each(sandbox, expected)
        assert await server.terminate() == 0
    finally:
        if server is not None:
            server.close()
        await asyncio.to_thread(pg.close)


@pytest.mark.slow
@pytest.mark.postgres
async def test_postgres_unresponsive_webhooks_answer_503_within_seconds(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    pg = PrivatePostgres(require_binaries())
    server: ServerProcess | None = None
    try:
        await asyncio.to_thread(pg.init)
        await asyncio.to_thread(pg.start)
        assert sandbox.url is not None
        server = ServerProcess(pg.url, sandbox.url, tmp_path / "serve.log")
        await server.start()
        webhook = f"{server.url}/webhooks/divergent"
        timeout = aiohttp.ClientTimeout(total=8)
        async with aiohttp.ClientSession(timeout=timeout) as http, asyncio.timeout(60):
            first = Delivery("evt_frz_0", inbound_body("evt_frz_0", "before"))
            await deliver(http, webhook, first)
            assert first.status == 200
            pg.freeze()
            frozen = [Delivery(f"evt_frz_{i}", inbound_body(f"evt_frz_{i}", "x")) for i in (1, 2)]
            health: list[int | None] = []

            async def probe() -> None:
                try:
                    async with http.get(f"{server.url}/healthz") as resp:
                        health.append(resp.status)
                except TimeoutError:
                    health.append(None)

            await asyncio.gather(probe(), *(deliver(http, webhook, d) for d in frozen))
            pg.thaw()
        assert [(d.status, d.seconds < 8) for d in frozen] == [(503, True), (503, True)], [
            (d.status, d.error, round(d.seconds, 1)) for d in frozen
        ]
        assert health == [503]
    finally:
        if server is not None:
            server.close()
        await asyncio.to_thread(pg.close)


class GatedProvider:
    """A provider whose calls wait at a gate: a send that is slow to reach the provider."""

    def __init__(self, inner: DivergentClient) -> None:
        self.inner = inner
        self.name = inner.name
        self.max_batch = inner.max_batch
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def send(self, message: OutboundSms) -> SendResult:
        self.waiting.set()
        await self.gate.wait()
        return await self.inner.send(message)

    async def send_many(self, messages: Sequence[OutboundSms]) -> list[BulkOutcome]:
        self.waiting.set()
        await self.gate.wait()
        return await self.inner.send_many(messages)

    async def close(self) -> None:
        await self.inner.close()


@pytest.mark.postgres
async def test_stop_confirmation_is_not_overtaken_by_a_send_in_flight_in_another_process(
    pg_database: str, sandbox: Sandbox
) -> None:
    db_url = pg_database.replace("postgresql://", "postgresql+asyncpg://", 1)
    clock = VirtualClock(T0)
    env = {
        "SMSBOT_DEFAULT_SENDER": VN,
        "SMSBOT_FLOWS_DIR": str(REPO / "flows"),
        "SMSBOT_TEMPLATES_DIR": str(REPO / "templates"),
    }
    assert sandbox.url is not None
    runtime = FlowRuntime.from_settings(settings_for(db_url, sandbox.url, **env))
    first = await new_bot(db_url, sandbox, runtime, clock, timeout=5.0, env=env)
    second = await new_bot(db_url, sandbox, runtime, clock, timeout=5.0, env=env)
    slow = GatedProvider(DivergentClient(API_KEY, sandbox.url, timeout=5.0))
    first.sender.provider = slow
    await first.start(background=False)
    await second.start(background=False)
    try:
        async with asyncio.timeout(30):
            entry = inbound_entry("evt_hours", "HOURS")
            await first.inbox.accept(entry)
            await first.dispatcher.run_until_idle()  # the HOURS answer is queued
            # Process 1 claims it, and its call to the provider is slow to get there.
            sending = asyncio.create_task(first.sender.send_once())
            await slow.waiting.wait()
            # Meanwhile process 2 takes the STOP; its confirmation waits for the send in flight.
            await second.inbox.accept(inbound_entry("evt_stop_mp", "STOP"))
            await second.run_until_idle()
            assert sandbox.messages == []  # nothing overtakes the reply still on its way
            slow.gate.set()
            await sending
            await second.run_until_idle()  # now the confirmation goes
        record = [m.content for m in sandbox.messages if m.recipient == PHONE]
        assert len(record) == 2, record
        assert record[-1].startswith(OPT_OUT_CONFIRMATION), record
    finally:
        slow.gate.set()
        await first.stop()
        await second.stop()
        await slow.close()


def inbound_entry(event_id: str, text: str) -> InboxEntry:
    """The inbox row the intake stores for an inbound SMS from PHONE to VN."""
    return InboxEntry(
        source="divergent",
        event_id=event_id,
        kind=EventKind.INBOUND,
        payload={"body": text, "message_id": None, "received_at": None},
        virtual_number=VN,
        phone=PHONE,
    )
