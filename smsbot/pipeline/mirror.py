"""APScheduler while this process leads: the timers table mirrored into its date jobs.

On the elected leader (smsbot.pipeline.leader) a JobMirror runs APScheduler with its
persistent job store in the same database. Its loop sweeps (at once on taking over, then every
sweep interval: whatever is due that no job fired), brings campaign fires up to date, and adds
one date job for each scheduled timer due within MIRROR_HORIZON. A job only names its timer:
the job function (fire_timer in scheduler.py, whose path the job store keeps as text) hands the
id to the TimerScheduler, which fires it; a job APScheduler reports missed is handed over too.
Deposed, the mirror stops APScheduler at once. The firing itself is scheduler.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from typing import TYPE_CHECKING, Any

from apscheduler.events import EVENT_JOB_MISSED
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers import SchedulerNotRunningError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger
from sqlalchemy import Engine, create_engine

from smsbot.pipeline.due_timers import unfired_page

if TYPE_CHECKING:
    from smsbot.pipeline.scheduler import TimerScheduler

log = logging.getLogger(__name__)

JOBSTORE_TABLE = "apscheduler_jobs"
# Timers due within this become APScheduler jobs; later ones wait in our table until then.
MIRROR_HORIZON = dt.timedelta(minutes=10)
SYNC_OVERLAP = dt.timedelta(minutes=2)  # how long a mirrored job is remembered after its time
STOP_TIMEOUT = 2.0
JOBS_PER_PAUSE = 100
EXECUTOR_THREADS = 2  # a job only hands its timer id to the event loop

_active: TimerScheduler | None = None  # this process's leading scheduler, for the job function


def leading() -> TimerScheduler | None:
    """This process's leading scheduler, which the job function hands its timer to; or None."""
    return _active


def job_id(timer_id: int) -> str:
    """The APScheduler job id of a timer: stable, so a reschedule replaces the old job."""
    return f"timer:{timer_id}"


class JobMirror:
    """APScheduler and the leader's loop, for one TimerScheduler (its `owner`), while it leads.

    The owner's election starts and stops it. The firing is the owner's: its sweep, and its
    firing of the timers whose jobs ran, which this runs as a task while leading.
    """

    def __init__(self, owner: TimerScheduler, job: str) -> None:
        self.owner = owner
        self.job = job  # the job function's reference, as text: the job store keeps it
        self.aps: Any = None  # the BackgroundScheduler while leading
        self.job_engine: Engine | None = None  # its job store's (synchronous) engine
        self.tasks: list[asyncio.Task[None]] = []
        self.resigning = False
        self.changed = asyncio.Event()
        self.mirrored: dict[int, tuple[str, dt.datetime]] = {}  # timer id -> (token, due_at)

    async def start(self) -> None:
        """Elected: start APScheduler, the leader's loop and the owner's firing of jobs."""
        global _active
        owner = self.owner
        if _active is not None and _active is not owner:
            # The job function finds its scheduler through _active: one per process.
            raise RuntimeError("another TimerScheduler already runs timers in this process")
        _active = owner
        owner.take_requests(asyncio.get_running_loop())
        aps, engine = self._new_apscheduler()
        try:
            await asyncio.to_thread(aps.start)  # creates the job store's table if need be
        except BaseException:
            _active = None
            await asyncio.to_thread(engine.dispose)
            raise
        self.aps, self.job_engine = aps, engine
        self.resigning = False
        self.mirrored.clear()
        owner.last_sync = None
        if owner.campaigns is not None:
            owner.campaigns.reset()  # a new leader reads every contact once
        owner.metrics.set("smsbot_timer_leader", 1)
        self.tasks = [
            asyncio.create_task(self._lead(), name="smsbot-timers-sync"),
            asyncio.create_task(owner.fire_requested(), name="smsbot-timers-fire"),
        ]

    async def stop(self) -> None:
        """Deposed (or stopping): no job runs from now on; let the tasks end; shut down."""
        global _active
        owner = self.owner
        if _active is owner:
            _active = None  # first: a job that runs from now on does nothing
        owner.metrics.set("smsbot_timer_leader", 0)
        owner.last_sync = None
        self.resigning = True
        aps, self.aps = self.aps, None  # a mirror in progress stops adding jobs
        engine, self.job_engine = self.job_engine, None
        if aps is not None:  # no job starts from now on; it is shut down once tasks are done
            with contextlib.suppress(SchedulerNotRunningError):
                await asyncio.to_thread(aps.pause)
        self.changed.set()
        owner.wake_requests()
        tasks, self.tasks = self.tasks, []
        if tasks:
            # Let a firing in flight commit; one stuck on the database is cancelled (rolled
            # back), and the next leader's catch-up fires it.
            _, stuck = await asyncio.wait(tasks, timeout=STOP_TIMEOUT)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
        owner.drop_requests()
        if aps is not None and engine is not None:
            try:
                await asyncio.wait_for(asyncio.to_thread(_shut_down, aps, engine), STOP_TIMEOUT)
            except Exception as exc:
                log.warning("APScheduler did not shut down cleanly: %s", type(exc).__name__)

    async def _lead(self) -> None:
        owner = self.owner
        next_sweep = 0.0  # at once: the catch-up for what fell due while nobody led
        while not self.resigning:
            try:
                if time.monotonic() >= next_sweep:
                    await owner.sweep(owner.clock.now())
                    next_sweep = time.monotonic() + owner.sweep_interval
                await owner.sync_campaigns(owner.clock.now())
                synced = await self._mirror()
                if not self.resigning:
                    owner.last_sync = synced
            except Exception:  # the database is away: keep leading, retry on the next tick
                log.exception("timer sync failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), owner.sync_interval)
            self.changed.clear()

    async def _mirror(self) -> dt.datetime:
        """Add a job for each scheduled timer due within MIRROR_HORIZON; return when it ran.

        Only near timers become jobs: our timers table is the durable record of the rest, and a
        deployment with 100,000 appointments next month keeps a small job store (and its single
        SQLite writer free) instead of copying every timer the moment it is created.
        """
        started = self.owner.clock.now()
        after: tuple[dt.datetime, int] | None = None
        while not self.resigning:
            page = await self.owner.db.read(unfired_page(started + MIRROR_HORIZON, None, after))
            fresh = [r for r in page.unfired if self.mirrored.get(r.id, ("",))[0] != r.token]
            if fresh:
                await asyncio.to_thread(self._add_jobs, self.aps, fresh)
                self.mirrored.update({r.id: (r.token, r.due_at) for r in fresh})
            if page.last is None:
                break
            after = page.last
        # A job whose time has passed has run (or been reported missed): forget it.
        past = started - SYNC_OVERLAP
        self.mirrored = {k: v for k, v in self.mirrored.items() if v[1] >= past}
        return started

    def _add_jobs(self, aps: Any, rows: list[Any]) -> None:
        # In a worker thread: the job store makes blocking database calls. A cancelled or fired
        # timer's job is not removed; it fires harmlessly (nothing is due) and is gone.
        lateness = int(self.owner.settings.reminder_max_lateness.total_seconds())
        for start in range(0, len(rows), JOBS_PER_PAUSE):
            if aps is None or self.aps is not aps:
                return  # leadership ended while this batch was being added
            # Every add wakes APScheduler for a round of job-store queries that holds its lock;
            # paused, a burst of adds costs one round instead of one each.
            with contextlib.suppress(SchedulerNotRunningError):
                aps.pause()
            try:
                for r in rows[start : start + JOBS_PER_PAUSE]:
                    aps.add_job(
                        self.job,
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
                if self.aps is aps:  # else stop() paused it for good
                    with contextlib.suppress(SchedulerNotRunningError):
                        aps.resume()

    def _new_apscheduler(self) -> tuple[Any, Engine]:
        url = self.owner.settings.sync_database_url
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

    def _on_job_missed(self, event: Any) -> None:
        # In an executor thread. The timer is re-read by id, and the lateness rule marks it
        # MISSED (or fires a punctual newer schedule of it that the job had not caught up with).
        prefix, _, timer_id = str(event.job_id).partition(":")
        if prefix == "timer" and timer_id.isdecimal():
            self.owner.request_fire(int(timer_id))


def _shut_down(aps: Any, engine: Engine) -> None:
    # wait=False: a job only hands an id to the event loop; nothing to wait for.
    aps.shutdown(wait=False)
    # APScheduler's thread runs one more round after its job store closed the pool, on a
    # fresh one; close that too, or its connection lingers until garbage collection.
    engine.dispose()
