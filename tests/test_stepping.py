"""A step under the step timeout (pipeline/stepping.run_step): a step that never suspends runs to
its end at once, one that suspends goes on from where it stopped, one that waits too long is cut
short, and the dispatcher counts that as the step's failure."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from sqlalchemy import select

from smsbot.app.server.app import create_app
from smsbot.channels.sandbox import Sandbox
from smsbot.clock import VirtualClock
from smsbot.engine.contract import (
    ConversationKey,
    ConversationSnapshot,
    DispatchEvent,
    EchoHandler,
    EventKind,
    StepResult,
)
from smsbot.pipeline.stepping import run_step
from smsbot.store.models import EventState, events_t
from tests.support import PHONE, VN, Harness, inbound_body, make_bot

T0 = dt.datetime(2026, 1, 15, 14, 0, tzinfo=dt.UTC)
EVENT = DispatchEvent(1, EventKind.INBOUND, {"body": "hi"}, T0)


def snapshot() -> ConversationSnapshot:
    return ConversationSnapshot(
        1, ConversationKey(VN, PHONE), None, None, {}, 0, None, False, None, None
    )


class Scripted:
    """A step handler that does `before`, then returns its reply, and records what it saw."""

    def __init__(self, before: Any = None) -> None:
        self.before = before
        self.finished = False
        self.cancelled = False

    async def handle(
        self, event: DispatchEvent, convo: ConversationSnapshot, now: dt.datetime
    ) -> StepResult:
        try:
            if self.before is not None:
                await self.before()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        self.finished = True
        result = StepResult.unchanged(convo)
        result.flow = "scripted"
        return result


async def test_a_step_that_never_waits_returns_its_result() -> None:
    handler = Scripted()
    result = await run_step(handler, EVENT, snapshot(), T0, 5.0)
    assert handler.finished and result.flow == "scripted"


async def test_a_step_that_waits_goes_on_from_where_it_stopped() -> None:
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[str] = loop.create_future()

    async def waits() -> None:
        await asyncio.sleep(0)  # a bare yield
        loop.call_soon(answer.set_result, "ok")
        assert await answer == "ok"  # a future, answered by the loop
        await asyncio.to_thread(lambda: None)  # and a thread's answer

    handler = Scripted(waits)
    result = await run_step(handler, EVENT, snapshot(), T0, 5.0)
    assert handler.finished and result.flow == "scripted"


async def test_a_step_that_waits_too_long_is_cut_short_and_sees_its_cancellation() -> None:
    handler = Scripted(asyncio.Event().wait)  # never set
    with pytest.raises(TimeoutError):
        await run_step(handler, EVENT, snapshot(), T0, 0.05)
    assert handler.cancelled and not handler.finished


async def test_a_step_cancelled_from_outside_is_cancelled_inside() -> None:
    handler = Scripted(asyncio.Event().wait)
    task = asyncio.create_task(run_step(handler, EVENT, snapshot(), T0, 30.0))
    await asyncio.sleep(0)  # the step is waiting now
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert handler.cancelled


@pytest.mark.parametrize("suspend_first", [False, True])
async def test_a_step_that_raises_raises_its_own_error(suspend_first: bool) -> None:
    async def fails() -> None:
        if suspend_first:
            await asyncio.sleep(0)
        raise ValueError("bad date")

    with pytest.raises(ValueError, match="bad date"):
        await run_step(Scripted(fails), EVENT, snapshot(), T0, 5.0)


class Hangs:
    """Echo, except the step of 'hang' waits for ever."""

    def __init__(self) -> None:
        self.echo = EchoHandler()

    async def handle(
        self, event: DispatchEvent, convo: ConversationSnapshot, now: dt.datetime
    ) -> StepResult:
        if event.payload.get("body") == "hang":
            await asyncio.Event().wait()
        return await self.echo.handle(event, convo, now)


async def test_the_dispatcher_counts_a_step_cut_short_as_a_failed_attempt(
    db_url: str, sandbox: Sandbox, aiohttp_client: Any
) -> None:
    clock = VirtualClock(T0)
    bot = await make_bot(db_url, sandbox, Hangs(), clock)
    bot.dispatcher.batches.step_timeout = 0.05
    client = await aiohttp_client(create_app(bot, run_workers=False))
    harness = Harness(bot, client, sandbox, clock)
    try:
        assert (await harness.post(inbound_body("evt_hang", "hang"))).status == 200
        assert (
            await harness.post(inbound_body("evt_hi", "hi", sender="+447700900999"))
        ).status == 200
        await bot.run_until_idle()
        async with bot.db.session() as s:
            rows = (await s.execute(select(events_t).order_by(events_t.c.id))).all()
    finally:
        await bot.stop()
    hang, hi = rows
    assert hang.state == EventState.PENDING.value and hang.attempts == 1
    assert "TimeoutError" in (hang.last_error or "")
    assert hi.state == EventState.DONE.value  # the other conversation's step went through
    assert [m.content for m in sandbox.messages] == ["You said: hi"]
