"""Health: queue depths, send rate, failures, parked events and timers, refreshing itself.

Figures come from the database, so they cover every process sharing it; the timer leader and
the counters since start are this process's own. The message queries walk the outbox index
(outbox, send_after), so they stay cheap however many messages are stored.

The figures are the session's workspace's. Only the admin sees the deployment's: the queues
of every workspace together, whether this process runs the timers, and its counters.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from typing import Any

from aiohttp import web
from sqlalchemy import func, select

from smsbot.app.console.render import render, session_of
from smsbot.app.server.keys import BOT
from smsbot.pipeline.bot import Bot
from smsbot.pipeline.receipts import DELIVERY_FAILURES
from smsbot.store.models import (
    EVENT_PENDING,
    TIMER_SCHEDULED,
    EventState,
    OutboxState,
    events_t,
    is_value,
    messages_t,
    timers_t,
)

log = logging.getLogger(__name__)

RATE_WINDOWS = (dt.timedelta(minutes=5), dt.timedelta(hours=1))
FAILURE_WINDOW = dt.timedelta(hours=24)
REFRESH_SECONDS = 5


@dataclasses.dataclass(slots=True)
class Health:
    """What the health page shows."""

    database: bool
    inbox: dict[str, int] = dataclasses.field(default_factory=dict)  # pending events by kind
    retrying: int = 0
    parked: int = 0
    outbox_due: int = 0
    outbox_held: int = 0
    outbox_inflight: int = 0
    sent: dict[str, float] = dataclasses.field(default_factory=dict)  # window -> per minute
    failures: dict[str, int] = dataclasses.field(default_factory=dict)  # status -> count
    timers_scheduled: int = 0
    next_timer: dt.datetime | None = None
    leader: bool = False
    counters: dict[str, float] = dataclasses.field(default_factory=dict)
    unowned: int = 0  # webhooks for numbers no workspace owns, kept for reconciliation
    workspace: str | None = None  # whose figures these are; None: every workspace's
    deployment: Health | None = None  # the admin's: every workspace's figures


def _label(window: dt.timedelta) -> str:
    minutes = int(window.total_seconds() // 60)
    if minutes < 60:
        return f"last {minutes} minutes"
    return "last hour" if minutes == 60 else f"last {minutes // 60} hours"


async def measure(bot: Bot, workspace: str, admin: bool) -> Health:
    """Read every figure of `workspace` (and the deployment's for the admin); a database that
    does not answer is itself the finding."""
    health = Health(database=await bot.db.ping(), workspace=workspace)
    if admin:
        health.deployment = Health(database=health.database, leader=bot.scheduler.is_leader)
        health.deployment.counters = {
            "sent": bot.metrics.value("smsbot_messages_sent_total"),
            "failed at send": bot.metrics.value("smsbot_messages_failed_total"),
            "send retries": bot.metrics.value("smsbot_send_retries_total"),
            "suppressed (opted out)": bot.metrics.value("smsbot_messages_suppressed_total"),
        }
    if not health.database:
        return health
    try:
        await _read(bot, health)
        if health.deployment is not None:
            await _read(bot, health.deployment)
    except Exception as exc:  # the page must answer while the database misbehaves
        log.warning("console health: %s", type(exc).__name__)
        health.database = False
    return health


async def _read(bot: Bot, health: Health) -> None:
    now = bot.clock.now()
    e, m, t = events_t, messages_t, timers_t
    ws = health.workspace
    # Each query within the workspace; without one (the admin's deployment figures), all rows.
    in_e = [e.c.workspace == ws] if ws is not None else []
    in_m = [m.c.workspace == ws] if ws is not None else []
    in_t = [t.c.workspace == ws] if ws is not None else []
    done = m.c.outbox == OutboxState.DONE.value
    async with bot.db.session() as s:
        pending = await s.execute(
            select(e.c.kind, func.count(), func.sum(e.c.attempts))
            .where(EVENT_PENDING, *in_e)
            .group_by(e.c.kind)
        )
        for kind, count, attempts in pending:
            health.inbox[str(kind)] = int(count)
            health.retrying += int(attempts or 0) > 0
        health.parked = await _count(s, is_value(e.c.state, EventState.FAILED), *in_e)
        if ws is None:
            unmatched = is_value(e.c.state, EventState.UNMATCHED)
            health.unowned = await _count(s, unmatched, e.c.workspace.is_(None))
        pending_out = m.c.outbox == OutboxState.PENDING.value
        health.outbox_due = await _count(s, pending_out, m.c.send_after <= now, *in_m)
        health.outbox_held = await _count(s, pending_out, m.c.send_after > now, *in_m)
        health.outbox_inflight = await _count(s, m.c.outbox == OutboxState.INFLIGHT.value, *in_m)
        for window in RATE_WINDOWS:
            # A message sent in the window was due at most a day before it (else: a backlog).
            sent = await _count(
                s, done, m.c.send_after >= now - window - dt.timedelta(days=1),
                m.c.sent_at >= now - window, *in_m,
            )  # fmt: skip
            health.sent[_label(window)] = sent / (window.total_seconds() / 60)
        failed = await s.execute(
            select(m.c.status, func.count())
            .where(
                done,
                m.c.send_after >= now - FAILURE_WINDOW - dt.timedelta(days=1),
                m.c.status.in_([f.value for f in DELIVERY_FAILURES]),
                m.c.status_at >= now - FAILURE_WINDOW,
                *in_m,
            )
            .group_by(m.c.status)
        )
        health.failures = {str(status): int(n) for status, n in failed}
        health.timers_scheduled = await _count(s, TIMER_SCHEDULED, *in_t)
        health.next_timer = (
            await s.execute(select(func.min(t.c.due_at)).where(TIMER_SCHEDULED, *in_t))
        ).scalar_one_or_none()


async def _count(s: Any, *conditions: Any) -> int:
    return int((await s.execute(select(func.count()).where(*conditions))).scalar_one())


async def health_page(request: web.Request) -> web.Response:
    """GET /console/health: the page; its body refreshes from /console/health/live."""
    health = await _measure(request)
    return render(request, "health.html", h=health, refresh=REFRESH_SECONDS)


async def health_fragment(request: web.Request) -> web.Response:
    """GET /console/health/live: the figures alone (htmx)."""
    health = await _measure(request)
    return render(request, "health_live.html", h=health, refresh=REFRESH_SECONDS)


async def _measure(request: web.Request) -> Health:
    session = session_of(request)
    return await measure(request.config_dict[BOT], session.workspace, session.is_admin)


def add_routes(router: web.UrlDispatcher) -> None:
    """Register this module's pages."""
    router.add_get("/health", health_page)
    router.add_get("/health/live", health_fragment)
