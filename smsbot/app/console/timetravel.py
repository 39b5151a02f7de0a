"""Moving the bot's clock forward from the console, so a reminder can be seen firing.

Only a clock that can move offers it: the OffsetClock `smsbot serve` runs on with the sandbox
provider, or a test's VirtualClock. With a real provider the bot runs on the wall clock and the
console has no control for it.

Time moves like the test kit's `advance`: to each instant a timer or a held message falls due,
in order, firing the timers and letting the bot finish that work before moving on, so every
reminder fires at its own time and none is late enough to count as missed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from sqlalchemy import func, or_, select

from smsbot.clock import Clock, OffsetClock, VirtualClock
from smsbot.pipeline.bot import Bot
from smsbot.store.models import EVENT_PENDING, OutboxState, events_t, messages_t

log = logging.getLogger(__name__)

MAX_ADVANCE = dt.timedelta(days=400)
SETTLE_TIMEOUT = 20.0  # seconds to wait for the bot to finish what one instant brought
SETTLE_POLL = 0.05

MovableClock = OffsetClock | VirtualClock


def movable(clock: Clock) -> MovableClock | None:
    """The clock, if the console may move it; else None."""
    return clock if isinstance(clock, OffsetClock | VirtualClock) else None


def _move(clock: MovableClock, when: dt.datetime) -> None:
    if when > clock.now():  # an OffsetClock may have passed it on its own meanwhile
        clock.set(when)


async def advance(bot: Bot, clock: MovableClock, target: dt.datetime) -> int:
    """Move `clock` to `target` one due instant at a time; return how many timers fired."""
    fired = 0
    while (due := await bot.next_due(target)) is not None:
        _move(clock, due)
        fired += await _fire_and_settle(bot)
    _move(clock, target)
    return fired + await _fire_and_settle(bot)


async def next_due(bot: Bot, limit: dt.timedelta = MAX_ADVANCE) -> dt.datetime | None:
    """When the next timer or held message falls due, within `limit`."""
    return await bot.next_due(bot.clock.now() + limit)


async def _fire_and_settle(bot: Bot) -> int:
    fired = await bot.fire_due_timers()
    bot.notify_senders()  # messages held until now (quiet hours) are due
    if not bot.runs_workers:
        await bot.run_until_idle()
        return fired
    try:
        async with asyncio.timeout(SETTLE_TIMEOUT):
            # The background loops may be in another process: the database is where to look.
            while await _busy(bot):  # noqa: ASYNC110
                await asyncio.sleep(SETTLE_POLL)
    except TimeoutError:
        log.warning(
            "the bot was still busy %.0f s after the clock moved; moving on", SETTLE_TIMEOUT
        )
    return fired


async def _busy(bot: Bot) -> bool:
    """True while events or messages that are due now wait for the background workers."""
    now = bot.clock.now()
    e, m = events_t, messages_t
    events = select(func.count()).where(
        EVENT_PENDING,
        or_(e.c.next_attempt_at.is_(None), e.c.next_attempt_at <= now),
    )
    messages = select(func.count()).where(
        or_(
            m.c.outbox == OutboxState.INFLIGHT.value,
            (m.c.outbox == OutboxState.PENDING.value) & (m.c.send_after <= now),
        )
    )
    async with bot.db.session() as s:
        return any([(await s.execute(q)).scalar_one() for q in (events, messages)])
