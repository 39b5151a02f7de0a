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
sweep fires anything due that a job did not. fire_due() is that firing on demand (tests,
`smsbot chat`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from apscheduler.events import EVENT_JOB_MISSED
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers import SchedulerNotRunningError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger
from sqlalchemy import Engine, create_engine, select, update

from smsbot.clock import Clock
from smsbot.config import Settings
from smsbot.pipeline.campaigns import CampaignSync, cancel_fires
from smsbot.pipeline.due_timers import BATCH, fired_already, firing, unfired_page
from smsbot.pipeline.firings import Due
from smsbot.pipeline.inbox import AcceptOutcome, Inbox
from smsbot.pipeline.leader import LeaderElection
from smsbot.pipeline.metrics import Metrics
from smsbot.store.engine import Database
from smsbot.store.models import TimerState, timers_t

log = logging.getLogger(__name__)

JOBSTORE_TABLE = "apscheduler_jobs"
# By text: the job store keeps a reference, not code. Migration 0003 rewrites the reference
# that databases stored before the package layout changed ("smsbot.scheduler:fire_timer").
FIRE_JOB = "smsbot.pipeline.scheduler:fire_timer"
SYNC_INTERVAL = 1.0  # how often the leader mirrors new timers into jobs (sooner when notified)
SWEEP_INTERVAL = 5.0  # the safety net: fire whatever is due that no job fired
# Timers due within this become APScheduler jobs; later ones wait in our table until then.
MIRROR_HORIZON = dt.timedelta(minutes=10)
SYNC_OVERLAP = dt.timedelta(minutes=2)  # how long a mirrored job is remembered after its time
STOP_TIMEOUT = 2.0
JOBS_PER_PAUSE = 100
EXECUTOR_THREADS = 2  # a job only hands its timer id to the event loop

_active: TimerScheduler | None = None  # this process's leading scheduler, for the job function


def fire_timer(timer_id: int, token: str) -> None:
    """APScheduler job (in a pool thread): have the leading scheduler fire this timer.

    `token` names the schedule the job was made for (it shows in APScheduler's logs); the
    firing re-reads the row, so whichever schedule is current and due is the one that fires.
    """
    scheduler = _active
    if scheduler is None:
        log.info("timer %s (%s) came due after this process stopped leading", timer_id, token)
        return
    scheduler.request_fire(timer_id)


def job_id(timer_id: int) -> str:
    """The APScheduler job id of a timer: stable, so a reschedule replaces the old job."""
    return f"timer:{timer_id}"


class TimerScheduler:
    """Fires due timers as inbox events; while this process leads, runs APScheduler too."""

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
        self.election = LeaderElection(
            settings.database_url, on_elected=self._start_leading, on_deposed=self._stop_leading
        )
        self.last_sync: dt.datetime | None = None  # the leader's last complete sync (health)
        self._aps: Any = None  # the BackgroundScheduler while leading
        self._job_engine: Engine | None = None  # its job store's (synchronous) engine
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._resigning = False
        self._changed = asyncio.Event()
        self._requested: set[int] = set()  # timer ids whose jobs ran, to fire in one batch
        self._fire_wanted = asyncio.Event()
        self._mirrored: dict[int, tuple[str, dt.datetime]] = {}  # timer id -> (token, due_at)

    @property
    def is_leader(self) -> bool:
        """True while this process runs the timers."""
        return self.election.is_leader

    def notify(self) -> None:
        """Timers were scheduled or changed: mirror them into jobs now, not at the next tick."""
        self._changed.set()

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
        # By primary key alone, state and due time checked here (as timer_claims does): next to
        # `id IN (…)`, SQLite's planner reads every late scheduled timer on ix_timers_due, and a
        # sweep after an outage marks them a page at a time (tests/test_query_plans.py).
        t = timers_t
        found = select(t.c.id, t.c.state, t.c.due_at).where(t.c.id.in_(ids)).with_for_update()
        async with self.db.session() as s, s.begin():
            rows = (await s.execute(found)).all()  # locked on PostgreSQL
            scheduled = TimerState.SCHEDULED.value
            # still scheduled and not rescheduled since it was read
            late = [r.id for r in rows if r.state == scheduled and r.due_at <= cutoff]
            mark = (
                update(t)
                .where(t.c.id.in_(late), ~fired_already())
                .values(state=TimerState.MISSED.value)
                .returning(t.c.id, t.c.name, t.c.due_at)
            )
            missed = (await s.execute(mark)).all() if late else []
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

    async def _fire_requested(self) -> None:
        # Jobs that run together (a burst of reminders) are fired in one query and one commit.
        while not self._resigning:
            await self._fire_wanted.wait()
            self._fire_wanted.clear()
            while self._requested and not self._resigning:
                ids = [self._requested.pop() for _ in range(min(BATCH, len(self._requested)))]
                try:
                    await self._fire(self.clock.now(), ids, via="job")
                except Exception:  # the database is away: the sweep fires them later
                    log.exception("firing %d timers failed; the sweep will retry", len(ids))

    def _on_job_missed(self, event: Any) -> None:
        # In an executor thread. The timer is re-read by id, and the lateness rule marks it
        # MISSED (or fires a punctual newer schedule of it that the job had not caught up with).
        prefix, _, timer_id = str(event.job_id).partition(":")
        if prefix == "timer" and timer_id.isdecimal():
            self.request_fire(int(timer_id))

    # -- leading ----------------------------------------------------------------------------------

    async def _start_leading(self) -> None:
        global _active
        if _active is not None and _active is not self:
            # The job function finds its scheduler through _active: one per process.
            raise RuntimeError("another TimerScheduler already runs timers in this process")
        _active = self
        self._loop = asyncio.get_running_loop()
        aps, engine = self._new_apscheduler()
        try:
            await asyncio.to_thread(aps.start)  # creates the job store's table if need be
        except BaseException:
            _active = None
            await asyncio.to_thread(engine.dispose)
            raise
        self._aps, self._job_engine = aps, engine
        self._resigning = False
        self._mirrored.clear()
        self.last_sync = None
        if self.campaigns is not None:
            self.campaigns.reset()  # a new leader reads every contact once
        self.metrics.set("smsbot_timer_leader", 1)
        self._tasks = [
            asyncio.create_task(self._lead(), name="smsbot-timers-sync"),
            asyncio.create_task(self._fire_requested(), name="smsbot-timers-fire"),
        ]

    async def _stop_leading(self) -> None:
        global _active
        if _active is self:
            _active = None  # first: a job that runs from now on does nothing
        self.metrics.set("smsbot_timer_leader", 0)
        self.last_sync = None
        self._resigning = True
        aps, self._aps = self._aps, None  # a mirror in progress stops adding jobs
        engine, self._job_engine = self._job_engine, None
        if aps is not None:  # no job starts from now on; it is shut down once tasks are done
            with contextlib.suppress(SchedulerNotRunningError):
                await asyncio.to_thread(aps.pause)
        self._changed.set()
        self._fire_wanted.set()
        tasks, self._tasks = self._tasks, []
        if tasks:
            # Let a firing in flight commit; one stuck on the database is cancelled (rolled
            # back), and the next leader's catch-up fires it.
            _, stuck = await asyncio.wait(tasks, timeout=STOP_TIMEOUT)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
        self._requested.clear()
        if aps is not None and engine is not None:
            try:
                await asyncio.wait_for(asyncio.to_thread(_shut_down, aps, engine), STOP_TIMEOUT)
            except Exception as exc:
                log.warning("APScheduler did not shut down cleanly: %s", type(exc).__name__)

    async def _lead(self) -> None:
        next_sweep = 0.0  # at once: the catch-up for what fell due while nobody led
        while not self._resigning:
            try:
                if time.monotonic() >= next_sweep:
                    await self._fire(self.clock.now(), None, via="sweep")
                    next_sweep = time.monotonic() + self.sweep_interval
                await self.sync_campaigns(self.clock.now())
                synced = await self._mirror()
                if not self._resigning:
                    self.last_sync = synced
            except Exception:  # the database is away: keep leading, retry on the next tick
                log.exception("timer sync failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self.sync_interval)
            self._changed.clear()

    async def _mirror(self) -> dt.datetime:
        """Add a job for each scheduled timer due within MIRROR_HORIZON; return when it ran.

        Only near timers become jobs: our timers table is the durable record of the rest, and a
        deployment with 100,000 appointments next month keeps a small job store (and its single
        SQLite writer free) instead of copying every timer the moment it is created.
        """
        started = self.clock.now()
        after: tuple[dt.datetime, int] | None = None
        while not self._resigning:
            page = await self.db.read(unfired_page(started + MIRROR_HORIZON, None, after))
            fresh = [r for r in page.unfired if self._mirrored.get(r.id, ("",))[0] != r.token]
            if fresh:
                await asyncio.to_thread(self._add_jobs, self._aps, fresh)
                self._mirrored.update({r.id: (r.token, r.due_at) for r in fresh})
            if page.last is None:
                break
            after = page.last
        # A job whose time has passed has run (or been reported missed): forget it.
        past = started - SYNC_OVERLAP
        self._mirrored = {k: v for k, v in self._mirrored.items() if v[1] >= past}
        return started

    def _add_jobs(self, aps: Any, rows: list[Any]) -> None:
        # In a worker thread: the job store makes blocking database calls. A cancelled or fired
        # timer's job is not removed; it fires harmlessly (nothing is due) and is gone.
        lateness = int(self.settings.reminder_max_lateness.total_seconds())
        for start in range(0, len(rows), JOBS_PER_PAUSE):
            if aps is None or self._aps is not aps:
                return  # leadership ended while this batch was being added
            # Every add wakes APScheduler for a round of job-store queries that holds its lock;
            # paused, a burst of adds costs one round instead of one each.
            with contextlib.suppress(SchedulerNotRunningError):
                aps.pause()
            try:
                for r in rows[start : start + JOBS_PER_PAUSE]:
                    aps.add_job(
                        FIRE_JOB,
                        trigger=DateTrigger(run_date=r.due_at, timezone=dt.UTC),
                        args=(r.id, r.token),
                        id=job_id(r.id),
                        name=f"timer {r.id}",
                        replace_existing=True,
                        # On purpose: a job that fell due while no process ran it (restart,
                        # takeover) still runs if at most this late, as fire_due would; later,
                        # APScheduler reports EVENT_JOB_MISSED and the timer is marked MISSED.
                        misfire_grace_time=lateness,
                        # Also on purpose: run times that piled up while we were down run once.
                        coalesce=True,
                    )
            finally:
                if self._aps is aps:  # else _stop_leading paused it for good
                    with contextlib.suppress(SchedulerNotRunningError):
                        aps.resume()

    def _new_apscheduler(self) -> tuple[Any, Engine]:
        url = self.settings.sync_database_url
        if url.startswith("sqlite"):
            # sqlite3's own busy wait: the async engine may hold the write lock for a moment
            options: dict[str, Any] = {"connect_args": {"timeout": 10}}
        else:
            # No pre-ping: it would double the round trips of every job-store call. After a
            # database restart one call fails, SQLAlchemy drops the pool, the next succeeds.
            # connect_timeout keeps shutdown bounded while the database is unreachable.
            options = {"pool_size": 2, "max_overflow": 4, "connect_args": {"connect_timeout": 5}}
        engine = create_engine(url, **options)
        # One INFO line per job added and run is noise at this volume; metrics count firings.
        for name in ("apscheduler.scheduler", "apscheduler.executors.default"):
            if logging.getLogger(name).level == logging.NOTSET:
                logging.getLogger(name).setLevel(logging.WARNING)
        aps = BackgroundScheduler(
            jobstores={"default": SQLAlchemyJobStore(engine=engine, tablename=JOBSTORE_TABLE)},
            executors={"default": ThreadPoolExecutor(EXECUTOR_THREADS)},
            timezone=dt.UTC,
        )
        aps.add_listener(self._on_job_missed, EVENT_JOB_MISSED)
        return aps, engine


def _shut_down(aps: Any, engine: Engine) -> None:
    # wait=False: a job only hands an id to the event loop; nothing to wait for.
    aps.shutdown(wait=False)
    # APScheduler's thread runs one more round after its job store closed the pool, on a
    # fresh one; close that too, or its connection lingers until garbage collection.
    engine.dispose()
