"""Timer firings stepped as they fire (pipeline/firings.py): once, in order, never lost."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from sqlalchemy import select, update

from smsbot.channels.sandbox import Sandbox
from smsbot.clock import VirtualClock
from smsbot.engine.contract import (
    ConversationKey,
    ConversationSnapshot,
    DispatchEvent,
    EchoHandler,
    EventKind,
    StepResult,
    TimerRequest,
)
from smsbot.pipeline.bot import Bot
from smsbot.pipeline.due_timers import firing
from smsbot.pipeline.firings import Due
from smsbot.pipeline.inbox import InboxEntry, event_row
from smsbot.store.models import (
    Direction,
    EventState,
    TimerState,
    conversations_t,
    events_t,
    messages_t,
    timers_t,
)
from tests.support import PHONE, VN, make_bot
from tests.test_scheduler import T0, add_timer, set_state, timer_events, timer_state

Hook = Callable[[DispatchEvent, ConversationSnapshot], Awaitable[None]]


class Hooked:
    """EchoHandler, with a hook run inside each step and a record of what each step saw."""

    def __init__(self) -> None:
        self.echo = EchoHandler()
        self.hook: Hook | None = None
        self.seen: list[tuple[EventKind, int]] = []  # (event kind, conversation version)
        self.fail = 0  # raise in this many steps first
        self.unwritable = False  # ask for a timer whose payload the database cannot store
        self.unwritable_phones: set[str] = set()  # the same, for these conversations only

    async def handle(
        self, event: DispatchEvent, convo: ConversationSnapshot, now: dt.datetime
    ) -> StepResult:
        self.seen.append((event.kind, convo.version))
        if self.hook is not None:
            await self.hook(event, convo)
        if self.fail > 0:
            self.fail -= 1
            raise RuntimeError("the flow broke")
        result = await self.echo.handle(event, convo, now)
        if self.unwritable or convo.key.phone in self.unwritable_phones:
            result.timers.append(TimerRequest("bad", "remind", now, {"not json": {1, 2}}))
        return result


@pytest.fixture
def handler() -> Hooked:
    return Hooked()


@pytest.fixture
async def bot(db_url: str, sandbox: Sandbox, handler: Hooked) -> AsyncIterator[Bot]:
    b = await make_bot(db_url, sandbox, handler, VirtualClock(T0))
    await b.start(background=False)
    yield b
    await b.stop()


async def outbound(bot: Bot) -> list[str]:
    async with bot.db.session() as s:
        query = select(messages_t.c.body).where(messages_t.c.direction == Direction.OUTBOUND)
        return list((await s.execute(query.order_by(messages_t.c.created_at))).scalars())


async def test_a_firing_is_stepped_where_it_fires(bot: Bot, sandbox: Sandbox) -> None:
    timer_id = await add_timer(bot.db, T0)
    assert await bot.fire_due_timers() == 1
    # stepped and written by the firing itself: its reply waits for the sender, its event done
    assert await outbound(bot) == ["don't forget"]
    [event] = await timer_events(bot.db)
    assert (event.state, event.processed_at) == (EventState.DONE.value, T0)
    assert await timer_state(bot.db, timer_id) is TimerState.FIRED
    assert await bot.fire_due_timers() == 0
    await bot.run_until_idle()
    assert [m.content for m in sandbox.messages] == ["don't forget"]


async def test_a_timer_cancelled_during_its_step_sends_nothing(
    bot: Bot, sandbox: Sandbox, handler: Hooked
) -> None:
    timer_id = await add_timer(bot.db, T0)

    async def cancel(event: DispatchEvent, convo: ConversationSnapshot) -> None:
        await set_state(bot.db, timer_id, TimerState.CANCELLED)  # another step, meanwhile

    handler.hook = cancel
    assert await bot.fire_due_timers() == 1
    await bot.run_until_idle()
    assert sandbox.messages == []
    assert await outbound(bot) == []
    assert [e.state for e in await timer_events(bot.db)] == [EventState.IGNORED.value]
    assert await timer_state(bot.db, timer_id) is TimerState.CANCELLED


async def test_a_conversation_that_moved_during_the_step_is_stepped_again(
    bot: Bot, sandbox: Sandbox, handler: Hooked
) -> None:
    await add_timer(bot.db, T0)

    async def move(event: DispatchEvent, convo: ConversationSnapshot) -> None:
        handler.hook = None  # once
        async with bot.db.session() as s, s.begin():
            await s.execute(
                update(conversations_t)
                .where(conversations_t.c.id == convo.id)
                .values(version=conversations_t.c.version + 1)
            )

    handler.hook = move
    assert await bot.fire_due_timers() == 1
    assert await outbound(bot) == []  # not written: queued behind the step that moved it
    [event] = await timer_events(bot.db)
    assert event.state == EventState.PENDING.value
    await bot.run_until_idle()
    assert [m.content for m in sandbox.messages] == ["don't forget"]
    assert handler.seen == [(EventKind.TIMER, 0), (EventKind.TIMER, 1)]  # again, from the new


async def test_a_firing_waits_behind_the_conversations_pending_event(
    bot: Bot, sandbox: Sandbox, handler: Hooked
) -> None:
    await add_timer(bot.db, T0)
    inbound = InboxEntry("divergent", "in-1", EventKind.INBOUND, {"body": "hello"}, VN, PHONE)
    await bot.inbox.accept_many([inbound])
    assert await bot.fire_due_timers() == 1
    assert handler.seen == []  # not stepped: the inbound message goes first
    await bot.run_until_idle()
    assert [kind for kind, _ in handler.seen] == [EventKind.INBOUND, EventKind.TIMER]
    assert [m.content for m in sandbox.messages][-1] == "don't forget"
    assert len(sandbox.messages) == 2


async def test_a_page_stores_its_events_in_due_order_whether_stepped_or_queued(
    bot: Bot, sandbox: Sandbox, handler: Hooked
) -> None:
    phones = ["+447700900301", "+447700900302", "+447700900303", "+447700900304"]
    for n, phone in enumerate(phones):
        await add_timer(bot.db, T0 - dt.timedelta(minutes=4 - n), phone=phone)
    for phone in phones[1::2]:  # these have a text waiting: their firing is queued behind it
        waiting = InboxEntry(
            "divergent", f"in-{phone}", EventKind.INBOUND, {"body": "hi"}, VN, phone
        )
        await bot.inbox.accept_many([waiting])
    assert await bot.fire_due_timers() == 4
    assert len(handler.seen) == 2  # two stepped where they fired, two left to the dispatcher
    events = await timer_events(bot.db)
    assert [e.phone for e in events] == phones  # ids in due order, not stepped ones first
    assert [e.state for e in events] == ["done", "pending", "done", "pending"]
    await bot.run_until_idle()
    assert len(sandbox.messages) == 6


async def test_two_firings_of_one_conversation_step_one_at_a_time(
    bot: Bot, sandbox: Sandbox, handler: Hooked
) -> None:
    await add_timer(bot.db, T0, name="first", text="one")
    await add_timer(bot.db, T0, name="second", text="two")
    assert await bot.fire_due_timers() == 2
    await bot.run_until_idle()
    assert [m.content for m in sandbox.messages] == ["one", "two"]
    assert handler.seen == [(EventKind.TIMER, 0), (EventKind.TIMER, 1)]
    events = await timer_events(bot.db)
    assert [e.state for e in events] == [EventState.DONE.value] * 2


async def test_a_failing_step_is_retried_by_the_dispatcher(
    bot: Bot, sandbox: Sandbox, handler: Hooked
) -> None:
    timer_id = await add_timer(bot.db, T0)
    handler.fail = 1
    assert await bot.fire_due_timers() == 1
    [event] = await timer_events(bot.db)
    assert (event.state, event.attempts) == (EventState.PENDING.value, 1)
    assert "the flow broke" in event.last_error
    assert await timer_state(bot.db, timer_id) is TimerState.SCHEDULED  # not claimed
    assert isinstance(bot.clock, VirtualClock)
    bot.clock.advance(dt.timedelta(seconds=5))  # past the first retry's backoff
    await bot.run_until_idle()
    assert [m.content for m in sandbox.messages] == ["don't forget"]
    assert await timer_state(bot.db, timer_id) is TimerState.FIRED


async def test_a_firing_already_stored_is_stepped_once_by_its_event(
    bot: Bot, sandbox: Sandbox, handler: Hooked
) -> None:
    # Another leader's sweep stored the firing first: the page read before it is not stepped.
    timer_id = await add_timer(bot.db, T0)
    async with bot.db.session() as s:
        row = (await s.execute(select(timers_t).where(timers_t.c.id == timer_id))).one()
    due = Due(row, ConversationKey(VN, PHONE), firing(row, ConversationKey(VN, PHONE)))
    await bot.inbox.accept_many([due.entry])
    assert await bot.dispatcher.fire_timers([due]) == (0, [])  # its event was there: not stored
    assert handler.seen == []  # the conversation has a pending event: that one goes first
    assert await outbound(bot) == []
    await bot.run_until_idle()
    assert [m.content for m in sandbox.messages] == ["don't forget"]
    assert [e.state for e in await timer_events(bot.db)] == [EventState.DONE.value]


async def test_a_firing_stepped_elsewhere_during_the_step_is_not_written_twice(
    bot: Bot, sandbox: Sandbox, handler: Hooked
) -> None:
    # Another process stored the same firing and stepped it while this one stepped its own.
    timer_id = await add_timer(bot.db, T0)

    async def elsewhere(event: DispatchEvent, convo: ConversationSnapshot) -> None:
        handler.hook = None
        async with bot.db.session() as s, s.begin():
            row = (await s.execute(select(timers_t).where(timers_t.c.id == timer_id))).one()
            entry = firing(row, ConversationKey(VN, PHONE))
            await s.execute(
                events_t.insert().values(event_row(entry, T0) | {"state": EventState.DONE.value})
            )
            await s.execute(
                update(timers_t)
                .where(timers_t.c.id == timer_id)
                .values(state=TimerState.FIRED.value)
            )

    handler.hook = elsewhere
    assert await bot.fire_due_timers() == 0  # its event was stored meanwhile: not this one's
    assert len(handler.seen) == 1
    assert await outbound(bot) == []
    await bot.run_until_idle()
    assert sandbox.messages == []  # the other process's step sent it (not in this sandbox)
    assert [e.state for e in await timer_events(bot.db)] == [EventState.DONE.value]


async def test_a_conversation_in_a_dispatcher_batch_gets_its_firing_queued(
    bot: Bot, sandbox: Sandbox, handler: Hooked
) -> None:
    await add_timer(bot.db, T0)
    key = ConversationKey(VN, PHONE)
    bot.dispatcher._busy.add(key)  # a batch of the dispatcher holds it
    assert await bot.fire_due_timers() == 1
    assert handler.seen == []
    bot.dispatcher._busy.discard(key)
    await bot.run_until_idle()
    assert [m.content for m in sandbox.messages] == ["don't forget"]


async def test_a_page_whose_write_fails_goes_through_the_inbox(
    bot: Bot, sandbox: Sandbox, handler: Hooked
) -> None:
    await add_timer(bot.db, T0)
    handler.unwritable = True
    assert await bot.fire_due_timers() == 1  # stored as an event for the dispatcher
    assert await outbound(bot) == []  # nothing of the failed write
    [event] = await timer_events(bot.db)
    assert (event.state, event.attempts) == (EventState.PENDING.value, 0)
    await bot.run_until_idle()  # the dispatcher steps it alone: the failure is counted there
    [event] = await timer_events(bot.db)
    assert event.attempts == 1 and "not JSON serializable" in event.last_error
    assert sandbox.messages == []


def phone_(n: int) -> str:
    return f"+4477009001{n:02d}"


async def sent_to(sandbox: Sandbox) -> dict[str, list[str]]:
    """Each phone's texts, in the order the provider received them."""
    texts: dict[str, list[str]] = {}
    for m in sandbox.messages:
        texts.setdefault(m.recipient, []).append(m.content)
    return texts


async def test_firings_in_several_batches_keep_each_conversation_in_order(
    bot: Bot, sandbox: Sandbox, handler: Hooked
) -> None:
    # Batches of two: A's second firing meets A's first in its batch (queued as a pending
    # event); its third finds that one pending and is queued behind it.
    a, b, c = phone_(1), phone_(2), phone_(3)
    plan = [(a, "a1"), (b, "b1"), (a, "a2"), (c, "c1"), (b, "b2"), (a, "a3")]
    for n, (phone, text) in enumerate(plan):
        await add_timer(bot.db, T0 + dt.timedelta(seconds=n), phone=phone, name=text, text=text)
    bot.dispatcher.batch_size = bot.dispatcher._size = 2
    assert isinstance(bot.clock, VirtualClock)
    bot.clock.advance(dt.timedelta(seconds=10))
    assert await bot.fire_due_timers() == 6
    assert bot.dispatcher._busy == set()
    await bot.run_until_idle()
    assert await sent_to(sandbox) == {a: ["a1", "a2", "a3"], b: ["b1", "b2"], c: ["c1"]}
    events = await timer_events(bot.db)
    assert [e.state for e in events] == [EventState.DONE.value] * 6
    stored: dict[str, list[str]] = {}
    for e in events:  # in the order they were stored
        stored.setdefault(e.phone, []).append(e.payload["name"])
    assert stored == {a: ["a1", "a2", "a3"], b: ["b1", "b2"], c: ["c1"]}
    async with bot.db.session() as s:
        versions = dict(
            (await s.execute(select(conversations_t.c.phone, conversations_t.c.version))).all()
        )
    assert versions == {a: 3, b: 2, c: 1}  # one step a firing: none written twice


async def test_a_failed_write_hands_its_batch_and_the_rest_of_the_page_to_the_inbox(
    bot: Bot, sandbox: Sandbox, handler: Hooked
) -> None:
    # Batches of one: B's write fails; B, C and D go through the inbox, once each.
    phones = [phone_(n) for n in range(1, 5)]
    for n, phone in enumerate(phones):
        await add_timer(bot.db, T0 + dt.timedelta(seconds=n), phone=phone, text=f"t{n}")
    handler.unwritable_phones = {phones[1]}
    bot.dispatcher.batch_size = bot.dispatcher._size = 1
    assert isinstance(bot.clock, VirtualClock)
    bot.clock.advance(dt.timedelta(seconds=10))
    assert await bot.fire_due_timers() == 4  # one stepped and written, three stored pending
    assert bot.dispatcher._busy == set()
    events = await timer_events(bot.db)
    assert [e.state for e in events] == [EventState.DONE.value] + [EventState.PENDING.value] * 3
    assert await outbound(bot) == ["t0"]  # nothing of the failed write
    await bot.run_until_idle()
    assert await sent_to(sandbox) == {phones[0]: ["t0"], phones[2]: ["t2"], phones[3]: ["t3"]}
    events = await timer_events(bot.db)
    assert [e.attempts for e in events] == [0, 1, 0, 0]  # B's failure counted by the dispatcher
