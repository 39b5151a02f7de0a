"""The dispatcher: claims inbox events and runs them one at a time per conversation.

A round takes conversations whose oldest pending event is due and steps a batch of them
(`batch.py`): each conversation's oldest event runs through the step handler, and every effect
of the batch is written in ONE transaction. A conversation thus sees one event at a time, in
arrival order, while a batch of many conversations costs one commit. Nothing is claimed outside
that transaction: a process killed mid-step leaves nothing claimed, and another process takes
the events at once. Delivery receipts, which belong to no conversation, are applied in batches
of their own.

Batches run on `workers` tasks (PostgreSQL; SQLite: one at a time); a conversation is in one
batch at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import InterfaceError, OperationalError

from smsbot.clock import Clock
from smsbot.engine.contract import ConversationKey, StepHandler
from smsbot.pipeline import claims, handover
from smsbot.pipeline.batch import Batches
from smsbot.pipeline.claims import backoff
from smsbot.pipeline.effects import StepOutcome
from smsbot.pipeline.firings import Due, Firings
from smsbot.pipeline.metrics import Metrics
from smsbot.pipeline.receipts import apply_receipts
from smsbot.pipeline.step_rows import Stepped
from smsbot.pipeline.stepping import STEP_TIMEOUT
from smsbot.store.engine import Database
from smsbot.store.models import DEFAULT_WORKSPACE

log = logging.getLogger(__name__)

# The database cannot be reached: retry the whole batch later, count nothing against events.
_UNAVAILABLE = (OperationalError, InterfaceError, OSError, TimeoutError)

BATCH_BUDGET = 0.010  # seconds a step batch may keep other writers (webhooks) waiting
MIN_BATCH = 8
# Seconds a few due conversations wait at most for the batch in flight to end, to go with it
# in the next one (dispatch_round): a batch takes milliseconds; a slow step (a flow waiting on
# something) holds the others back no longer than this.
GATHER_WAIT = 0.05

__all__ = ["Dispatcher", "StepOutcome", "backoff"]


class Dispatcher:
    """Runs the step handler for pending inbox events, serialised per conversation."""

    def __init__(
        self,
        db: Database,
        handler: StepHandler,
        clock: Clock,
        *,
        metrics: Metrics | None = None,
        workers: int = 8,
        batch_size: int = 200,
        max_attempts: int = 5,
        step_timeout: float = STEP_TIMEOUT,
        poll_interval: float = 0.2,
        gather_wait: float = GATHER_WAIT,
        on_commit: Callable[[StepOutcome], None] | None = None,
        takers: handover.Takers | None = None,
    ) -> None:
        self.db = db
        self.handler = handler
        self.clock = clock
        self.metrics = metrics or Metrics()
        # SQLite has one writer. Two batches at once (one's flows running while the other
        # writes) measured slower in the turns benchmark than one (716-770 vs 936-1,210
        # turns/s): each was half the size, and a batch's reads and write cost per batch.
        self.workers = workers if db.is_postgres else 1
        self.batch_size = batch_size
        self._size = batch_size  # the next batch's size: shrinks while it makes writers wait
        self.max_attempts = max_attempts
        self.step_timeout = step_timeout
        self.poll_interval = poll_interval
        self.gather_wait = gather_wait
        self.on_commit = on_commit
        self.batches = Batches(
            db,
            handler,
            self.metrics,
            max_attempts=max_attempts,
            step_timeout=step_timeout,
            takers=takers,
        )
        self.firings = Firings(self.batches)
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._busy: set[ConversationKey] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._gathering = False  # too few were due for a batch beside one in flight
        self._late = False  # the batches in flight did not end within gather_wait

    def notify(self) -> None:
        """Wake the dispatcher: new events were committed."""
        self._wakeup.set()

    async def run(self) -> None:
        """Dispatch until stop() is called; batches in flight are finished, never abandoned.

        A stop() that comes before run() starts (a bot stopped as soon as it started) ends it
        at once; the flag is cleared as run() returns, so a later run() dispatches again.
        """
        try:
            while not self._stopping:
                progressed = await self._guarded(self.dispatch_round)
                if not progressed and not self._stopping:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), self.poll_interval)
                    self._wakeup.clear()
        finally:
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            self._stopping = False

    def stop(self) -> None:
        """Ask run() to stop claiming new work; it returns once batches in flight are done."""
        self._stopping = True
        self._wakeup.set()

    async def run_until_idle(self, max_rounds: int = 100_000) -> int:
        """Process everything that is due now, then return how many events finished."""
        done = 0
        for _ in range(max_rounds):
            n = await apply_receipts(self.db, self.clock, self.metrics)
            keys = await self.due_keys(limit=self.batch_size)
            if keys:
                n += await self.step_safely(keys)
            if n == 0:
                return done
            done += n
        raise RuntimeError("run_until_idle: still busy after max_rounds; is a step looping?")

    async def _guarded(self, fn: Callable[[], Any]) -> bool:
        try:
            return bool(await fn())
        except Exception:  # the database is down or flapping: log, back off, try again
            log.exception("dispatcher round failed; retrying")
            await asyncio.sleep(self.poll_interval * 5)
            return False

    async def dispatch_round(self) -> bool:
        """Start batches for due conversations (up to the worker limit); apply receipts."""
        applied = await apply_receipts(self.db, self.clock, self.metrics)
        free = self.workers - len(self._tasks)
        if self._tasks and free <= 0:
            await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
            return True
        if self._tasks and self._gathering:
            self._gathering = False
            ended, _ = await asyncio.wait(
                self._tasks, timeout=self.gather_wait, return_when=asyncio.FIRST_COMPLETED
            )
            self._late = not ended
            return True
        keys = await self.due_keys(limit=self._size * free + len(self._busy))
        keys = [k for k in keys if k not in self._busy]
        if self._tasks and 0 < len(keys) < self._size and not self._late:
            # Another batch starts beside one in flight only for a full batch (a backlog); fewer
            # wait for it to end (gather_wait at most) and go with what arrived meanwhile. A
            # batch costs mostly per transaction and per read, and batches side by side read
            # the same due keys (on PostgreSQL another process's too, then skip the locked
            # ones): with every round starting a batch, two processes under benchmark 2's load
            # ran 2-5 batches at once of ~24 keys, ~15 of them stepped, at 1,284-1,317 turns/s;
            # like this ~100 keys and ~50 steps a batch, 2,255 turns/s (bench/README.md,
            # session 21). SQLite runs one batch at a time anyway (workers).
            self._gathering = True
            return True
        self._late = False
        size = self._size  # full batches over the free workers (a backlog), else one batch
        for start in range(0, len(keys), size):
            batch = keys[start : start + size]
            self._busy.update(batch)
            task = asyncio.create_task(self._run_batch(batch), name="smsbot-step-batch")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return applied > 0 or bool(keys)

    async def _run_batch(self, keys: list[ConversationKey]) -> None:
        try:
            await self.step_safely(keys)
        except Exception:  # the database is away: nothing was claimed, try again later
            log.exception("stepping failed; will retry")
            await asyncio.sleep(self.poll_interval * 5)
        finally:
            self._busy.difference_update(keys)
            self._wakeup.set()

    async def step_safely(self, keys: list[ConversationKey]) -> int:
        """step_batch, but one conversation whose effects the database refuses cannot block others.

        A batch that fails for any reason but an unreachable database is stepped again key by
        key; a key that fails alone has the failure counted on its event (retried, then parked)
        in a fresh transaction, so the conversation moves on like after a failing handler.
        """
        try:
            return await self.step_batch(keys)
        except _UNAVAILABLE:
            raise
        except Exception as exc:
            if len(keys) > 1:
                log.warning("a batch of %d steps failed; stepping them one by one", len(keys))
                return sum([await self.step_safely([key]) for key in keys])
            return await self._record_write_failure(keys[0], exc)

    async def _record_write_failure(self, key: ConversationKey, exc: Exception) -> int:
        now = self.clock.now()

        def record(conn: Connection) -> int:
            events = claims.oldest_events(conn, [key], now)
            if key not in events:
                return 0
            failed = [(events[key], exc)]
            return claims.record_failures(conn, failed, now, max_attempts=self.max_attempts)

        return await self.db.write(record)

    async def fire_timers(self, due: Sequence[Due]) -> tuple[int, list[Due]]:
        """Step due timers' firings where they fire (firings.py), in batches sized as the step
        batches are (they hold the writer as long); return how many were stored (stepped,
        ignored or queued) and the firings left for the inbox (a batch whose write failed)."""
        stored, rest = 0, list(due)
        while rest:
            size = self._size
            batch, rest = rest[:size], rest[size:]
            started, waits = time.perf_counter(), self.db.urgent_waits
            held = {d.key for d in batch} & self._busy  # in a step batch now: queued behind it
            mine = {d.key for d in batch} - held
            self._busy.update(mine)
            try:
                fired = await self.firings.run(batch, self.clock.now(), held)
            except _UNAVAILABLE:
                raise
            except Exception as exc:  # one step's effects refused: the inbox steps them singly
                left = batch + rest
                log.warning(
                    "writing %d stepped timer firings failed (%s); %d go through the inbox",
                    len(batch), type(exc).__name__, len(left),
                )  # fmt: skip
                return stored, left
            finally:
                self._busy.difference_update(mine)
            stored += fired.stored
            self._adapt(len(batch), fired.write_seconds, self.db.urgent_waits != waits)
            self._count(fired.stepped, fired.stale, fired.failed, time.perf_counter() - started)
            if self.on_commit is not None:
                for outcome in fired.outcomes:
                    self.on_commit(outcome)
            if fired.queued:
                self.notify()
        return stored, []

    async def due_keys(self, limit: int) -> list[ConversationKey]:
        """Up to `limit` due keys: inbound texts first (half a batch at most), then the rest."""
        now = self.clock.now()
        return await self.db.read(lambda conn: claims.due_keys(conn, now, limit))

    async def step(self, key: ConversationKey) -> bool:
        """Run the oldest due event of one conversation; True when an event finished."""
        return await self.step_batch([key]) > 0

    async def step_batch(self, keys: Sequence[ConversationKey]) -> int:
        """Run the oldest due event of each conversation and write them all in one transaction;
        return how many events finished."""
        started = time.perf_counter()
        waits = self.db.urgent_waits
        done = await self.batches.run(keys, self.clock.now())
        if done is None:
            return 0
        outcomes, work, finished = done
        self._adapt(len(keys), work.write_seconds, self.db.urgent_waits != waits)
        stale = [workspace for _, workspace in work.stale]
        self._count(work.stepped, stale, work.failed, time.perf_counter() - started)
        if self.on_commit is not None:
            for outcome in outcomes:
                self.on_commit(outcome)
        return finished

    def _adapt(self, size: int, seconds: float, contended: bool) -> None:
        # SQLite has one writer: while a batch writes, webhooks wait to be stored. A batch whose
        # write kept one waiting and took longer than BATCH_BUDGET halves the next one; batches that
        # kept none waiting grow back to batch_size. (PostgreSQL never waits here: full batches.)
        if contended and seconds > BATCH_BUDGET:
            self._size = max(MIN_BATCH, min(self._size, size) // 2)
        elif not contended:
            self._size = min(self.batch_size, self._size + max(1, self._size // 4))

    def _count(
        self,
        stepped: Sequence[Stepped],
        stale: Sequence[str],
        failed: Sequence[tuple[Any, BaseException]],
        seconds: float,
    ) -> None:
        counts: Counter[tuple[str, str, str]] = Counter()
        for item in stepped:
            counts[(item.event.kind, "ok", item.workspace)] += 1  # a StrEnum: its value
        for workspace in stale:
            counts[("timer", "stale", workspace)] += 1
        for row, exc in failed:
            parked = claims.parks(row, exc, self.max_attempts)
            workspace = str(row.workspace or DEFAULT_WORKSPACE)
            counts[(str(row.kind), "failed" if parked else "retry", workspace)] += 1
        for (kind, result, workspace), n in counts.items():
            self.metrics.inc(
                "smsbot_events_processed_total", n, kind=kind, result=result, workspace=workspace
            )
        self.metrics.inc("smsbot_step_batches_total")  # steps per batch: events / batches
        if stepped:  # a batch's time spread over its steps
            self.metrics.observe("smsbot_step_seconds", seconds / len(stepped), len(stepped))
