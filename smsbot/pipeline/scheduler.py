"""Timers: reminders, wait timeouts and expiries fire as inbox events, exactly once.

The timers table is the source of truth; a step writes its timers in its own transaction. A
firing is an inbox event (source "timer", id "timer:{timer id}:{token}"). A page of due
conversation timers is handed to the dispatcher, which steps each firing at once and writes
its event done with the step (`firings.py`), or stores it pending, serialised behind the
conversation's other events; campaign fires are stored pending. The event id is unique, so a
double firing is one event; the token check marks the timer fired in the step's transaction,
so a stale firing (the timer was moved, cancelled or already fired) changes nothing. A timer
later than SMSBOT_REMINDER_MAX_LATENESS is marked MISSED instead.

On the elected leader (smsbot.pipeline.leader) APScheduler runs one date job per timer,
mirrored from the table into its persistent job store in the same database, and a periodic
sweep fires anything due that a job did not: mirror.py runs those (a JobMirror, which the
TimerScheduler owns). This module is the firing they ask for, a job through fire_timer (the job
function, kept here: the job store holds its path). fire_due() is that firing on demand (tests,
`smsbot chat`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sqlalchemy import Connection, update

from smsbot.clock import Clock
from smsbot.config import Settings
from smsbot.pipeline.campaigns import CampaignSync, cancel_fires
from smsbot.pipeline.due_timers import BATCH, fired_already, firing, unfired_page
from smsbot.pipeline.firings import Due
from smsbot.pipeline.inbox import AcceptOutcome, Inbox
from smsbot.pipeline.leader import LeaderElection
from smsbot.pipeline.metrics import Metrics
from smsbot.pipeline.mirror import JOBSTORE_TABLE as JOBSTORE_TABLE  # re-exported
from smsbot.pipeline.mirror import JobMirror, leading
from smsbot.pipeline.mirror import job_id as job_id  # re-exported: the jobs' ids
from smsbot.pipeline.timer_claims import BY_ID, reads_by_id, scheduled_by_id
from smsbot.store.engine import Database
from smsbot.store.models import TimerState, timers_t
from smsbot.store.prepared import Prepared

log = logging.getLogger(__name__)

# By text: the job store keeps a reference, not code, so fire_timer stays in this module. Migration
# 0003 rewrites the reference that databases stored before the package layout changed
# ("smsbot.scheduler:fire_timer").
FIRE_JOB = "smsbot.pipeline.scheduler:fire_timer"
SYNC_INTERVAL = 1.0  # how often the leader mirrors new timers into jobs (sooner when notified)
SWEEP_INTERVAL = 5.0  # the safety net: fire whatever is due that no job fired
_BY_DUE = reads_by_id(timers_t.c.due_at)  # a timer's id, state and due time
_MARK_MISSED = Prepared(
    update(timers_t)
    .where(BY_ID, ~fired_already())
    .values(state=TimerState.MISSED.value)
    .returning(timers_t.c.id, timers_t.c.name, timers_t.c.due_at)
)


def fire_timer(timer_id: int, token: str) -> None:
    """APScheduler job (in a pool thread): have the leading scheduler fire this timer.

    `token` names the schedule the job was made for (it shows in APScheduler's logs); the
    firing re-reads the row, so whichever schedule is current and due is the one that fires.
    """
    scheduler = leading()
    if scheduler is None:
        log.info("timer %s (%s) came due after this process stopped leading", timer_id, token)
        return
    scheduler.request_fire(timer_id)


class TimerScheduler:
    """Fires due timers as inbox events; while this process leads, runs APScheduler too (its
    JobMirror)."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        inbox: Inbox,
        clock: Clock,
        *,
        metrics: Metrics | None = None,
        on_fired: Callable[[], None] | None = None,
        sync_interval: float = SYNC_INTERVAL,
        sweep_interval: float = SWEEP_INTERVAL,
        campaigns: CampaignSync | None = None,
        stepper: Callable[[Sequence[Due]], Awaitable[tuple[int, list[Due]]]] | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.inbox = inbox
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.on_fired = on_fired
        self.sync_interval = sync_interval
        self.sweep_interval = sweep_interval
        self.campaigns = campaigns  # campaign fires kept in step with contacts (the leader's)
        # Steps a page of a conversation's timers as it fires (Dispatcher.fire_timers), in
        # place of storing their events for the dispatcher; None: every firing is an event.
        self.stepper = stepper
        # APScheduler while leading (mirror.py); the election starts and stops it.
        self._jobs = JobMirror(self, FIRE_JOB)
        self.election = LeaderElection(
            settings.database_url, on_elected=self._jobs.start, on_deposed=self._jobs.stop
        )
        self.last_sync: dt.datetime | None = None  # the leader's last complete sync (health)
        self._loop: asyncio.AbstractEventLoop | None = None  # the leader's (take_requests)
        self._requested: set[int] = set()  # timer ids whose jobs ran, to fire in one batch
        self._fire_wanted = asyncio.Event()

    @property
    def is_leader(self) -> bool:
        """True while this process runs the timers."""
        return self.election.is_leader

    def notify(self) -> None:
        """Timers were scheduled or changed: mirror them into jobs now, not at the next tick."""
        self._jobs.changed.set()

    async def start(self) -> None:
        """Campaign for leadership; the winner runs APScheduler until stop()."""
        await self.election.start()

    async def stop(self) -> None:
        """Stop running timers (if leading) and campaigning."""
        await self.election.stop()

    async def fire_due(self, now: dt.datetime) -> int:
        """Fire every scheduled timer due by `now`; return how many firings were stored
        (stepped at once, ignored as stale, or pending for the dispatcher).

        A timer more than SMSBOT_REMINDER_MAX_LATENESS late is marked MISSED instead (and
        logged). Calling it again fires nothing twice. Campaign fires of contacts that changed
        are brought up to date first.
        """
        await self.sync_campaigns(now)
        return await self._fire(now, None, via="due")

    async def sync_campaigns(self, now: dt.datetime) -> None:
        """(Re)schedule and cancel campaign fires of the contacts that changed (see campaigns)."""
        if self.campaigns is not None and self.campaigns.active:
            await self.campaigns.run(self.db, now)

    def request_fire(self, timer_id: int) -> None:
        """Fire this timer soon if it is due; thread-safe (APScheduler's threads call it)."""
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: the process is exiting
            loop.call_soon_threadsafe(self._want, timer_id)

    # -- what the JobMirror runs while leading --------------------------------------------------

    def take_requests(self, loop: asyncio.AbstractEventLoop) -> None:
        """Have request_fire hand its timer ids to `loop` (the leader's) from now on."""
        self._loop = loop

    async def sweep(self, now: dt.datetime) -> int:
        """Fire every timer due by `now` that no job fired; return how many firings were stored."""
        return await self._fire(now, None, via="sweep")

    async def fire_requested(self) -> None:
        """Fire the timers whose jobs ran, in batches, until the JobMirror resigns."""
        # Jobs that run together (a burst of reminders) are fired in one query and one commit.
        while not self._jobs.resigning:
            await self._fire_wanted.wait()
            self._fire_wanted.clear()
            while self._requested and not self._jobs.resigning:
                ids = [self._requested.pop() for _ in range(min(BATCH, len(self._requested)))]
                try:
                    await self._fire(self.clock.now(), ids, via="job")
                except Exception:  # the database is away: the sweep fires them later
                    log.exception("firing %d timers failed; the sweep will retry", len(ids))

    def wake_requests(self) -> None:
        """Wake fire_requested, so that it sees the JobMirror resigning."""
        self._fire_wanted.set()

    def drop_requests(self) -> None:
        """Forget the timer ids whose jobs ran and were not fired (the next sweep fires them)."""
        self._requested.clear()

    # -- firing -----------------------------------------------------------------------------------

    async def _fire(self, now: dt.datetime, ids: list[int] | None, *, via: str) -> int:
        cutoff = now - self.settings.reminder_max_lateness
        fired = 0
        after: tuple[dt.datetime, int] | None = None
        while True:
            page = await self.db.read(unfired_page(now, ids, after, keys=True))
            late = [r.id for r in page.unfired if r.due_at <= cutoff]
            keyed = [(r, page.key(r)) for r in page.unfired if r.due_at > cutoff]
            due = [Due(r, key, firing(r, key)) for r, key in keyed if key is not None]
            if orphans := page.orphans():  # campaign fires whose contact was deleted
                await self.db.write(functools.partial(cancel_fires, ids=orphans))
            if due:
                fired += await self._store(due)
            if late:
                await self._mark_missed(late, cutoff, now)
            if page.last is None:
                break
            after = page.last
        if fired:
            self.metrics.inc("smsbot_timers_fired_total", fired, via=via)
            if self.on_fired is not None:
                self.on_fired()
        return fired

    async def _store(self, due: list[Due]) -> int:
        """Step the firings of conversations' timers (`stepper`), or store them as inbox events
        (a campaign's fires, which may have no conversation yet, always); return how many."""
        fired, direct, events = 0, [], []
        for d in due:
            if self.stepper is not None and d.row.conversation_id is not None:
                direct.append(d)
            else:
                events.append(d.entry)
        if direct and self.stepper is not None:
            fired, left = await self.stepper(direct)
            events += [d.entry for d in left]  # a write failed: the dispatcher's path, one by one
        if events:
            outcomes = await self.inbox.accept_many(events)
            fired += outcomes.count(AcceptOutcome.NEW)
        return fired

    async def _mark_missed(self, ids: list[int], cutoff: dt.datetime, now: dt.datetime) -> None:
        # By primary key alone (timer_claims.scheduled_by_id): next to `id IN (…)`, the state and
        # due time let SQLite's planner read every late scheduled timer on ix_timers_due, and a
        # sweep after an outage marks them a page at a time (tests/test_query_plans.py).
        def mark(conn: Connection) -> list[Any]:
            # still scheduled and not rescheduled since it was read; not fired meanwhile either
            _, missed = scheduled_by_id(
                conn, ids, _BY_DUE, lambda r: r.due_at <= cutoff, _MARK_MISSED
            )
            return missed

        missed = await self.db.write(mark)  # locked on PostgreSQL
        for m in missed:
            log.warning(
                "timer %s (%s) MISSED: due %s, %s late, more than SMSBOT_REMINDER_MAX_LATENESS",
                m.id,
                m.name,
                m.due_at.isoformat(),
                now - m.due_at,
            )
        if missed:
            self.metrics.inc("smsbot_timers_missed_total", len(missed))

    def _want(self, timer_id: int) -> None:
        self._requested.add(timer_id)
        self._fire_wanted.set()
