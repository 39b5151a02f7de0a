"""Timers: fire_due on a virtual clock, the APScheduler path in real time, leader election."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import inspect, select, update

from smsbot.channels.sandbox import Sandbox
from smsbot.clock import Clock, SystemClock, VirtualClock
from smsbot.config import Settings
from smsbot.engine.contract import (
    ConversationSnapshot,
    DispatchEvent,
    EchoHandler,
    EventKind,
    Origin,
    StepResult,
    TimerRequest,
)
from smsbot.pipeline.bot import Bot
from smsbot.pipeline.inbox import Inbox, InboxEntry
from smsbot.pipeline.leader import TIMER_LOCK_KEY, LeaderElection
from smsbot.pipeline.scheduler import JOBSTORE_TABLE, TimerScheduler
from smsbot.store.engine import Database
from smsbot.store.models import (
    EventState,
    TimerState,
    events_t,
    messages_t,
    new_token,
    opt_outs_t,
    timers_t,
)
from tests.support import PHONE, VN, conversation_id, make_bot

T0 = dt.datetime(2026, 1, 15, 9, 0, tzinfo=dt.UTC)
LATENESS = dt.timedelta(hours=6)  # the default SMSBOT_REMINDER_MAX_LATENESS


@pytest.fixture
async def bot(db_url: str, sandbox: Sandbox) -> AsyncIterator[Bot]:
    """A bot on a virtual clock with its background loops off: tests drive it."""
    b = await make_bot(db_url, sandbox, EchoHandler(), VirtualClock(T0))
    await b.start(background=False)
    yield b
    await b.stop()


async def add_timer(
    db: Database,
    due_at: dt.datetime,
    *,
    phone: str = PHONE,
    name: str = "reminder",
    text: str = "don't forget",
    created_at: dt.datetime | None = None,
) -> int:
    """Insert a scheduled timer (and its conversation) as a committed step would."""
    async with db.session() as s, s.begin():
        convo = await conversation_id(s, VN, phone)
        timer_id: int = (
            await s.execute(
                timers_t.insert()
                .values(
                    conversation_id=convo,
                    name=name,
                    kind="remind",
                    token=new_token(),
                    due_at=due_at,
                    payload={"text": text},
                    state=TimerState.SCHEDULED.value,
                    created_at=created_at or due_at - dt.timedelta(hours=1),
                )
                .returning(timers_t.c.id)
            )
        ).scalar_one()
    return timer_id


async def reschedule(db: Database, timer_id: int, due_at: dt.datetime) -> None:
    """What the dispatcher does when a step schedules a timer of the same name again."""
    async with db.session() as s, s.begin():
        await s.execute(
            update(timers_t)
            .where(timers_t.c.id == timer_id)
            .values(token=new_token(), due_at=due_at, state=TimerState.SCHEDULED.value)
        )


async def set_state(db: Database, timer_id: int, state: TimerState) -> None:
    async with db.session() as s, s.begin():
        await s.execute(update(timers_t).where(timers_t.c.id == timer_id).values(state=state.value))


async def timer_state(db: Database, timer_id: int) -> TimerState:
    async with db.session() as s:
        row = (await s.execute(select(timers_t.c.state).where(timers_t.c.id == timer_id))).one()
    return TimerState(row.state)


async def timer_events(db: Database) -> list[Any]:
    async with db.session() as s:
        query = select(events_t).where(events_t.c.source == "timer").order_by(events_t.c.id)
        return list((await s.execute(query)).all())


async def wait_until(predicate: Callable[[], bool | Awaitable[bool]], timeout: float) -> None:
    """Poll `predicate` (plain or async) until it holds; fail after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while True:
            held = predicate()
            if not isinstance(held, bool):
                held = await held
            if held:
                return
            await asyncio.sleep(0.02)


def _settings(db_url: str, **extra: str) -> Settings:
    env = {"SMSBOT_DATABASE_URL": db_url, **extra}
    return Settings.from_env(env, toml_path=Path("/nonexistent/smsbot.toml"))


# -- fire_due, on a virtual clock ----------------------------------------------------------------


async def test_a_due_timer_becomes_one_timer_event_however_often_fired(db: Database) -> None:
    clock = VirtualClock(T0)
    scheduler = TimerScheduler(_settings(db.url), db, Inbox(db, clock), clock)
    timer_id = await add_timer(db, T0 + dt.timedelta(minutes=5))
    assert await scheduler.fire_due(T0) == 0  # not due yet
    assert await scheduler.fire_due(T0 + dt.timedelta(minutes=5)) == 1
    assert await scheduler.fire_due(T0 + dt.timedelta(minutes=6)) == 0
    [event] = await timer_events(db)
    async with db.session() as s:
        token = (
            await s.execute(select(timers_t.c.token).where(timers_t.c.id == timer_id))
        ).scalar_one()
    assert event.event_id == f"timer:{timer_id}:{token}"
    assert (event.kind, event.virtual_number, event.phone) == ("timer", VN, PHONE)
    assert event.payload == {
        "name": "reminder",
        "kind": "remind",
        "token": token,
        "payload": {"text": "don't forget"},
        "due_at": (T0 + dt.timedelta(minutes=5)).isoformat(),
    }
    # the dispatcher marks it FIRED when it runs the event; until then it is still scheduled
    assert await timer_state(db, timer_id) is TimerState.SCHEDULED


async def test_a_cancelled_timer_never_fires(db: Database) -> None:
    clock = VirtualClock(T0)
    scheduler = TimerScheduler(_settings(db.url), db, Inbox(db, clock), clock)
    timer_id = await add_timer(db, T0)
    await set_state(db, timer_id, TimerState.CANCELLED)
    assert await scheduler.fire_due(T0 + dt.timedelta(hours=1)) == 0
    assert await timer_events(db) == []


async def test_a_timer_later_than_the_allowed_lateness_is_marked_missed_and_logged(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    clock = VirtualClock(T0)
    scheduler = TimerScheduler(_settings(db.url), db, Inbox(db, clock), clock)
    too_late = await add_timer(db, T0 - LATENESS, name="too-late")
    await add_timer(db, T0 - LATENESS + dt.timedelta(seconds=1), name="in-time")
    with caplog.at_level(logging.WARNING, logger="smsbot.pipeline.scheduler"):
        assert await scheduler.fire_due(T0) == 1
    assert await timer_state(db, too_late) is TimerState.MISSED
    assert [e.payload["name"] for e in await timer_events(db)] == ["in-time"]
    [record] = [r for r in caplog.records if "MISSED" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert f"timer {too_late} (too-late)" in record.getMessage()
    assert scheduler.metrics.value("smsbot_timers_missed_total") == 1
    assert await scheduler.fire_due(T0 + dt.timedelta(days=1)) == 0  # each decided once


async def test_fire_due_handles_more_timers_than_one_batch(db: Database) -> None:
    clock = VirtualClock(T0)
    scheduler = TimerScheduler(_settings(db.url), db, Inbox(db, clock), clock)
    for i in range(1_203):
        await add_timer(db, T0 - dt.timedelta(seconds=i), phone=f"+4477009{i:05d}")
    assert await scheduler.fire_due(T0) == 1_203
    assert len(await timer_events(db)) == 1_203


# -- through the dispatcher, to the sandbox --------------------------------------------------------


async def test_a_reminder_reaches_the_phone_exactly_once(bot: Bot, sandbox: Sandbox) -> None:
    clock = bot.clock
    assert isinstance(clock, VirtualClock)
    timer_id = await add_timer(bot.db, T0 + dt.timedelta(hours=1), text="Your visit is at 3pm")
    clock.advance(dt.timedelta(hours=1))
    assert await bot.fire_due_timers() == 1
    assert await bot.fire_due_timers() == 0
    await bot.run_until_idle()
    assert await bot.fire_due_timers() == 0  # fired now: the dispatcher marked it
    await bot.run_until_idle()
    assert [(m.recipient, m.content) for m in sandbox.messages] == [(PHONE, "Your visit is at 3pm")]
    assert await timer_state(bot.db, timer_id) is TimerState.FIRED
    async with bot.db.session() as s:
        origin = (await s.execute(select(messages_t.c.origin))).scalar_one()
    assert origin == Origin.REMINDER.value


async def test_a_stale_firing_is_ignored_and_the_rescheduled_timer_fires_once(
    bot: Bot, sandbox: Sandbox
) -> None:
    clock = bot.clock
    assert isinstance(clock, VirtualClock)
    # Through the inbox (a campaign's fire, or a page that could not be stepped at once): the
    # event waits for the dispatcher. Stepped as it fires: tests/test_firings.py.
    bot.scheduler.stepper = None
    timer_id = await add_timer(bot.db, T0)
    assert await bot.fire_due_timers() == 1
    await reschedule(bot.db, timer_id, T0 + dt.timedelta(hours=2))  # before the event ran
    await bot.run_until_idle()
    assert sandbox.messages == []
    [stale] = await timer_events(bot.db)
    assert stale.state == EventState.IGNORED.value
    clock.advance(dt.timedelta(hours=2))
    assert await bot.fire_due_timers() == 1
    assert await bot.fire_due_timers() == 0
    await bot.run_until_idle()
    assert [m.content for m in sandbox.messages] == ["don't forget"]
    assert [e.state for e in await timer_events(bot.db)] == ["ignored", "done"]
    assert await timer_state(bot.db, timer_id) is TimerState.FIRED


async def test_a_timer_cancelled_after_it_fired_sends_nothing(bot: Bot, sandbox: Sandbox) -> None:
    bot.scheduler.stepper = None  # through the inbox, as above
    timer_id = await add_timer(bot.db, T0)
    assert await bot.fire_due_timers() == 1
    await set_state(bot.db, timer_id, TimerState.CANCELLED)  # a step cancelled it meanwhile
    await bot.run_until_idle()
    assert sandbox.messages == []
    assert [e.state for e in await timer_events(bot.db)] == ["ignored"]


async def test_no_reminder_goes_to_a_phone_that_opted_out(bot: Bot, sandbox: Sandbox) -> None:
    timer_id = await add_timer(bot.db, T0)
    async with bot.db.session() as s, s.begin():
        await s.execute(
            opt_outs_t.insert().values(
                virtual_number=VN, phone=PHONE, keyword="STOP", created_at=T0
            )
        )
    assert await bot.fire_due_timers() == 1
    await bot.run_until_idle()
    assert sandbox.messages == []
    assert await timer_state(bot.db, timer_id) is TimerState.FIRED
    async with bot.db.session() as s:
        status = (await s.execute(select(messages_t.c.status))).scalar_one()
    assert status == "suppressed"


async def test_without_background_work_no_apscheduler_runs(bot: Bot) -> None:
    await asyncio.sleep(0)
    assert not bot.scheduler.is_leader
    assert bot.scheduler._jobs.aps is None
    async with bot.db.engine.connect() as conn:
        tables = await conn.run_sync(lambda c: inspect(c).get_table_names())
    assert JOBSTORE_TABLE not in tables


# -- APScheduler, in real time ---------------------------------------------------------------------


async def _leading_bot(db_url: str, sandbox: Sandbox, clock: Clock, **extra: str) -> Bot:
    b = await make_bot(db_url, sandbox, EchoHandler(), clock, **extra)
    b.scheduler.sweep_interval = 60  # only the catch-up at start: jobs do the rest
    await b.start()
    # leading, and the first sync (catch-up and full mirror) is done
    await wait_until(lambda: b.scheduler.last_sync is not None, 15)
    return b


async def test_apscheduler_fires_a_timer_once_from_its_job_store(
    db_url: str, sandbox: Sandbox
) -> None:
    clock = SystemClock()
    b = await _leading_bot(db_url, sandbox, clock)
    try:
        assert b.scheduler.is_leader
        now = clock.now()
        timer_id = await add_timer(b.db, now + dt.timedelta(seconds=0.3), created_at=now)
        b.scheduler.notify()  # as Bot does after a step that scheduled a timer
        await wait_until(lambda: len(sandbox.messages) >= 1, 5)
        await asyncio.sleep(0.3)  # a second send, if there were one, would land now
        assert [m.content for m in sandbox.messages] == ["don't forget"]
        assert await timer_state(b.db, timer_id) is TimerState.FIRED
        assert b.metrics.value("smsbot_timers_fired_total", via="job") == 1
        async with b.db.engine.connect() as conn:
            tables = await conn.run_sync(lambda c: inspect(c).get_table_names())
        assert JOBSTORE_TABLE in tables  # the job store lives in the same database
    finally:
        await b.stop()
    assert not b.scheduler.is_leader


async def test_a_job_later_than_its_grace_is_reported_missed_and_the_timer_marked(
    db_url: str, sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    clock = SystemClock()
    b = await _leading_bot(db_url, sandbox, clock, SMSBOT_REMINDER_MAX_LATENESS="2s")
    try:
        now = clock.now()
        # the catch-up sweep already ran: only APScheduler sees this one, 10 s late
        timer_id = await add_timer(b.db, now - dt.timedelta(seconds=10), created_at=now)
        b.scheduler.notify()

        async def missed() -> bool:
            return await timer_state(b.db, timer_id) is TimerState.MISSED

        await wait_until(missed, 5)
        assert any("was missed by" in r.getMessage() for r in caplog.records)  # APScheduler's
        assert await timer_events(b.db) == []
        assert sandbox.messages == []
    finally:
        await b.stop()


class RemindOnInbound(EchoHandler):
    """Echo, and for each inbound SMS schedule a reminder 0.3 s later (real time)."""

    async def handle(
        self, event: DispatchEvent, convo: ConversationSnapshot, now: dt.datetime
    ) -> StepResult:
        result = await super().handle(event, convo, now)
        if event.kind is EventKind.INBOUND:
            due = now + dt.timedelta(seconds=0.3)
            result.timers.append(TimerRequest("nudge", "remind", due, {"text": "nudge"}))
        return result


async def test_a_step_that_schedules_a_timer_gets_it_fired_by_apscheduler(
    db_url: str, sandbox: Sandbox
) -> None:
    b = await make_bot(db_url, sandbox, RemindOnInbound(), SystemClock())
    b.scheduler.sweep_interval = 60  # only the catch-up at start: the job must do it
    await b.start()
    try:
        await wait_until(lambda: b.scheduler.last_sync is not None, 15)
        entry = InboxEntry("api", "e1", EventKind.INBOUND, {"body": "hi"}, VN, PHONE)
        await b.inbox.accept(entry)
        b.dispatcher.notify()
        await wait_until(lambda: len(sandbox.messages) >= 2, 5)
        await asyncio.sleep(0.3)  # a second reminder, if there were one, would land now
        assert [m.content for m in sandbox.messages] == ["You said: hi", "nudge"]
        assert b.metrics.value("smsbot_timers_fired_total", via="job") == 1
    finally:
        await b.stop()


async def test_timers_due_while_nobody_led_fire_at_start(db_url: str, sandbox: Sandbox) -> None:
    clock = SystemClock()
    db = Database(db_url)
    await db.create_all()
    timer_id = await add_timer(db, clock.now() - dt.timedelta(minutes=5))
    await db.dispose()
    b = await _leading_bot(db_url, sandbox, clock)
    try:
        await wait_until(lambda: len(sandbox.messages) >= 1, 5)
        assert await timer_state(b.db, timer_id) is TimerState.FIRED
    finally:
        await b.stop()


# -- leader election (PostgreSQL) ------------------------------------------------------------------


def timer_lock_holders(plain_url: str) -> list[tuple[int, str]]:
    """(backend pid, application_name) of the sessions holding the timer lock."""
    with psycopg.connect(plain_url) as conn:
        rows = conn.execute(
            "SELECT l.pid, a.application_name FROM pg_locks l"
            " JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.granted"
            # pg_locks spans the cluster: other tests' databases hold this key too
            " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND l.classid = %s AND l.objid = %s AND l.objsubid = 1",
            (TIMER_LOCK_KEY >> 32, TIMER_LOCK_KEY & 0xFFFFFFFF),
        ).fetchall()
    return [(int(pid), str(name)) for pid, name in rows]


def _terminate(plain_url: str, pid: int) -> None:
    with psycopg.connect(plain_url) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))


@pytest.mark.postgres
async def test_of_two_candidates_exactly_one_leads_and_the_other_takes_over(
    pg_database: str,
) -> None:
    url = pg_database.replace("postgresql://", "postgresql+asyncpg://")
    deposed: list[int] = []

    def candidate(i: int) -> LeaderElection:
        async def on_deposed() -> None:
            deposed.append(i)

        return LeaderElection(url, on_deposed=on_deposed)

    a, b = candidate(0), candidate(1)
    both = (a, b)
    overlaps = 0

    async def leaders(expected: int) -> bool:
        nonlocal overlaps
        count = sum(e.is_leader for e in both)
        overlaps += count > 1
        return count == expected

    await asyncio.gather(a.start(), b.start())
    try:
        await wait_until(lambda: leaders(1), 10)
        async with asyncio.timeout(5):  # a few retry rounds: still exactly one
            for _ in range(50):
                assert await leaders(1)
                await asyncio.sleep(0.05)
        leader = a if a.is_leader else b
        [(pid, name)] = await asyncio.to_thread(timer_lock_holders, pg_database)
        assert name.startswith("smsbot-timers pid=")
        await asyncio.to_thread(_terminate, pg_database, pid)  # its connection is cut
        started = asyncio.get_running_loop().time()

        async def taken_over() -> bool:
            await leaders(1)
            return not leader.is_leader and any(e.is_leader for e in both)

        await wait_until(taken_over, 10)
        assert asyncio.get_running_loop().time() - started < 10
        assert deposed == [both.index(leader)]  # the old leader stopped its timers
        assert overlaps == 0
    finally:
        await asyncio.gather(a.stop(), b.stop())
    assert not a.is_leader and not b.is_leader
    assert await asyncio.to_thread(timer_lock_holders, pg_database) == []


async def test_on_sqlite_the_only_process_always_leads(tmp_path: Path) -> None:
    election = LeaderElection(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    await election.start()
    try:
        await wait_until(lambda: election.is_leader, 5)
    finally:
        await election.stop()
    assert not election.is_leader


@pytest.mark.postgres
async def test_a_leader_whose_lock_connection_fails_stops_apscheduler_at_once(
    pg_database: str, sandbox: Sandbox
) -> None:
    url = pg_database.replace("postgresql://", "postgresql+asyncpg://")
    b = await _leading_bot(url, sandbox, SystemClock())
    try:
        assert b.scheduler._jobs.aps is not None
        [(pid, _)] = await asyncio.to_thread(timer_lock_holders, pg_database)
        await asyncio.to_thread(_terminate, pg_database, pid)
        await wait_until(lambda: not b.scheduler.is_leader, 5)
        assert b.scheduler._jobs.aps is None  # stopped before campaigning again
        # nobody else campaigns, so it returns, with a fresh APScheduler and a full sync
        await wait_until(lambda: b.scheduler.last_sync is not None, 10)
        assert b.scheduler.is_leader
        assert b.scheduler._jobs.aps is not None
    finally:
        await b.stop()
    assert await asyncio.to_thread(timer_lock_holders, pg_database) == []


async def test_stop_releases_everything_within_the_budget(db_url: str, sandbox: Sandbox) -> None:
    b = await _leading_bot(db_url, sandbox, SystemClock())
    loop = asyncio.get_running_loop()
    started = loop.time()
    await b.stop()
    assert loop.time() - started < 5
    assert b.scheduler._jobs.aps is None
