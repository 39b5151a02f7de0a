"""The dispatcher: claims inbox events and runs them one at a time per conversation.

For each conversation key (virtual number, phone) the oldest pending event is processed inside
one transaction that holds the conversation row's lock: on PostgreSQL `FOR UPDATE SKIP LOCKED`
(a key another process is working on is skipped), on SQLite the single writer plus an
in-process lock per key. The claim *is* the transaction, so a process killed mid-step leaves
nothing claimed: its transaction rolls back and another process takes the event at once.
Delivery receipts have no conversation and are applied in batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import and_, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from smsbot.clock import Clock
from smsbot.inbox import insert_ignoring_conflicts
from smsbot.metrics import Metrics
from smsbot.receipts import apply_receipts
from smsbot.status import DeliveryStatus
from smsbot.steps import (
    ConversationKey,
    ConversationSnapshot,
    DispatchEvent,
    StepHandler,
    StepResult,
)
from smsbot.store.engine import Database
from smsbot.store.models import (
    Direction,
    EventKind,
    EventState,
    Origin,
    OutboxState,
    TimerState,
    conversations_t,
    events_t,
    messages_t,
    new_id,
    opt_outs_t,
    timers_t,
)
from smsbot.text import analyze

log = logging.getLogger(__name__)

KEYED_KINDS = (EventKind.INBOUND, EventKind.START, EventKind.TIMER, EventKind.SEND_FAILED)


@dataclasses.dataclass(frozen=True, slots=True)
class StepOutcome:
    """What one committed step did; passed to the after-commit listeners."""

    key: ConversationKey
    event_id: int
    queued_messages: int
    timers_changed: bool


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
        max_attempts: int = 5,
        step_timeout: float = 30.0,
        poll_interval: float = 0.2,
        on_commit: Callable[[StepOutcome], None] | None = None,
    ) -> None:
        self.db = db
        self.handler = handler
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.workers = workers
        self.max_attempts = max_attempts
        self.step_timeout = step_timeout
        self.poll_interval = poll_interval
        self.on_commit = on_commit
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._busy: dict[ConversationKey, asyncio.Task[None]] = {}

    def notify(self) -> None:
        """Wake the dispatcher: new events were committed."""
        self._wakeup.set()

    async def run(self) -> None:
        """Dispatch until stop() is called; in-flight steps are finished, never abandoned."""
        self._stopping = False
        try:
            while not self._stopping:
                progressed = await self._guarded(self.dispatch_round)
                if not progressed and not self._stopping:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), self.poll_interval)
                    self._wakeup.clear()
        finally:
            if self._busy:
                await asyncio.gather(*self._busy.values(), return_exceptions=True)

    def stop(self) -> None:
        """Ask run() to stop claiming new work; it returns once steps in flight are done."""
        self._stopping = True
        self._wakeup.set()

    async def run_until_idle(self, max_rounds: int = 10_000) -> int:
        """Process everything that is due now, then return how many steps ran (tests, CLI)."""
        done = 0
        for _ in range(max_rounds):
            n = await self._drain_once()
            if n == 0:
                return done
            done += n
        raise RuntimeError("run_until_idle: still busy after max_rounds; is a step looping?")

    async def _drain_once(self) -> int:
        done = await apply_receipts(self.db, self.clock, self.metrics)
        for key in await self.due_keys(limit=self.workers * 8):
            while await self.step(key):
                done += 1
        return done

    async def _guarded(self, fn: Callable[[], Any]) -> bool:
        try:
            return bool(await fn())
        except Exception:  # the database is down or flapping: log, back off, try again
            log.exception("dispatcher round failed; retrying")
            await asyncio.sleep(self.poll_interval * 5)
            return False

    async def dispatch_round(self) -> bool:
        """Start steps for due conversations (up to the worker limit); apply receipts."""
        applied = await apply_receipts(self.db, self.clock, self.metrics)
        free = self.workers - len(self._busy)
        started = 0
        if free > 0:
            for key in await self.due_keys(limit=free + len(self._busy)):
                if key in self._busy:
                    continue
                task = asyncio.create_task(self._work_key(key), name=f"smsbot-step-{key}")
                self._busy[key] = task
                task.add_done_callback(functools.partial(self._done, key))
                started += 1
                if started >= free:
                    break
        elif self._busy:
            await asyncio.wait(list(self._busy.values()), return_when=asyncio.FIRST_COMPLETED)
        return applied > 0 or started > 0

    def _done(self, key: ConversationKey, _task: asyncio.Task[None]) -> None:
        self._busy.pop(key, None)
        self._wakeup.set()

    async def _work_key(self, key: ConversationKey) -> None:
        # Drain this key's due events in order, a bounded number so other keys get a turn.
        for _ in range(50):
            try:
                if not await self.step(key):
                    return
            except Exception:
                log.exception("step for %s failed outside the handler; will retry", key)
                return

    async def due_keys(self, limit: int) -> list[ConversationKey]:
        """Return keys whose oldest pending event is due, oldest first."""
        now = self.clock.now()
        older = events_t.alias("older")
        oldest_pending = (
            select(func.min(older.c.id))
            .where(
                older.c.state == EventState.PENDING.value,
                older.c.virtual_number == events_t.c.virtual_number,
                older.c.phone == events_t.c.phone,
            )
            .scalar_subquery()
        )
        stmt = (
            select(events_t.c.virtual_number, events_t.c.phone, events_t.c.next_attempt_at)
            .where(
                events_t.c.state == EventState.PENDING.value,
                events_t.c.virtual_number.is_not(None),
                events_t.c.id == oldest_pending,
            )
            .order_by(events_t.c.id)
            .limit(limit)
        )
        async with self.db.session() as s:
            rows = (await s.execute(stmt)).all()
        return [ConversationKey(vn, phone) for vn, phone, due in rows if due is None or due <= now]

    async def step(self, key: ConversationKey) -> bool:
        """Run the oldest due event of `key`; return True when an event was finished."""
        started = time.perf_counter()
        outcome: StepOutcome | None = None
        async with self.db.session() as s, s.begin():
            convo = await self._lock_conversation(s, key)
            if convo is None:
                return False  # another process holds this conversation right now
            row = (
                await s.execute(
                    select(events_t)
                    .where(
                        events_t.c.state == EventState.PENDING.value,
                        events_t.c.virtual_number == key.virtual_number,
                        events_t.c.phone == key.phone,
                    )
                    .order_by(events_t.c.id)
                    .limit(1)
                )
            ).first()
            now = self.clock.now()
            if row is None or (row.next_attempt_at is not None and row.next_attempt_at > now):
                return False
            event = DispatchEvent(
                id=row.id,
                kind=EventKind(row.kind),
                payload=row.payload,
                received_at=row.received_at,
            )
            if event.kind is EventKind.TIMER and not await self._claim_timer(s, convo, event, now):
                await self._finish_event(s, event.id, now, EventState.IGNORED)
                self.metrics.inc("smsbot_events_processed_total", kind="timer", result="stale")
                return True
            snapshot = await self._snapshot(s, convo, key)
            try:
                result = await asyncio.wait_for(
                    self.handler.handle(event, snapshot, now), self.step_timeout
                )
            except Exception as exc:
                parked = await self._record_failure(s, row, exc, now)
                self.metrics.inc(
                    "smsbot_events_processed_total",
                    kind=event.kind.value,
                    result="failed" if parked else "retry",
                )
                return parked
            outcome = await self._apply(s, convo, snapshot, event, result, now)
        self.metrics.inc("smsbot_events_processed_total", kind=event.kind.value, result="ok")
        self.metrics.observe("smsbot_step_seconds", time.perf_counter() - started)
        if self.on_commit is not None and outcome is not None:
            self.on_commit(outcome)
        return True

    async def _lock_conversation(self, s: AsyncSession, key: ConversationKey) -> Any | None:
        where = and_(
            conversations_t.c.virtual_number == key.virtual_number,
            conversations_t.c.phone == key.phone,
        )
        locking = select(conversations_t).where(where)
        if self.db.is_postgres:
            locking = locking.with_for_update(skip_locked=True)
        row = (await s.execute(locking)).first()
        if row is not None:
            return row
        if self.db.is_postgres:
            exists = (await s.execute(select(conversations_t.c.id).where(where))).first()
            if exists is not None:
                return None  # it exists, so SKIP LOCKED skipped it: someone else holds it
        await s.execute(
            insert_ignoring_conflicts(self.db, conversations_t)
            .values(virtual_number=key.virtual_number, phone=key.phone, data={}, version=0)
            .on_conflict_do_nothing(index_elements=["virtual_number", "phone"])
        )
        return (await s.execute(locking)).first()

    async def _snapshot(
        self, s: AsyncSession, convo: Any, key: ConversationKey
    ) -> ConversationSnapshot:
        opted = await s.execute(
            select(opt_outs_t.c.id).where(
                opt_outs_t.c.virtual_number == key.virtual_number, opt_outs_t.c.phone == key.phone
            )
        )
        return ConversationSnapshot(
            id=convo.id,
            key=key,
            flow=convo.flow,
            state=convo.state,
            data=dict(convo.data or {}),
            version=convo.version,
            state_token=convo.state_token,
            opted_out=opted.first() is not None,
            started_at=convo.started_at,
            last_activity_at=convo.last_activity_at,
        )

    async def _claim_timer(
        self, s: AsyncSession, convo: Any, event: DispatchEvent, now: dt.datetime
    ) -> bool:
        # The guard that makes a timer fire once: only a still-scheduled timer whose token
        # matches the firing may run; it is marked fired in this same transaction.
        result = await s.execute(
            update(timers_t)
            .where(
                timers_t.c.conversation_id == convo.id,
                timers_t.c.name == event.payload.get("name"),
                timers_t.c.token == event.payload.get("token"),
                timers_t.c.state == TimerState.SCHEDULED.value,
            )
            .values(state=TimerState.FIRED.value, fired_at=now)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def _record_failure(
        self, s: AsyncSession, row: Any, exc: BaseException, now: dt.datetime
    ) -> bool:
        attempts = int(row.attempts) + 1
        # An error that says it will never succeed (e.g. a rejected start) is parked at once.
        retryable = getattr(exc, "retryable", True)
        parked: bool = attempts >= self.max_attempts or retryable is False
        error = f"{type(exc).__name__}: {exc}"[:2000]
        log.warning(
            "event %s (%s) failed, attempt %d/%d: %s",
            row.id,
            row.kind,
            attempts,
            self.max_attempts,
            type(exc).__name__,
        )
        await s.execute(
            update(events_t)
            .where(events_t.c.id == row.id)
            .values(
                attempts=attempts,
                last_error=error,
                state=EventState.FAILED.value if parked else EventState.PENDING.value,
                next_attempt_at=None if parked else now + backoff(attempts),
                processed_at=now if parked else None,
            )
        )
        return parked

    async def _finish_event(
        self, s: AsyncSession, event_id: int, now: dt.datetime, state: EventState
    ) -> None:
        await s.execute(
            update(events_t)
            .where(events_t.c.id == event_id)
            .values(state=state.value, processed_at=now)
        )

    async def _apply(
        self,
        s: AsyncSession,
        convo: Any,
        snapshot: ConversationSnapshot,
        event: DispatchEvent,
        result: StepResult,
        now: dt.datetime,
    ) -> StepOutcome:
        key = snapshot.key
        values: dict[str, Any] = {
            "flow": result.flow,
            "state": result.state if result.flow is not None else None,
            "data": dict(result.data),
            "version": convo.version + 1,
            "last_activity_at": now,
        }
        if result.state_entered:
            values["state_token"] = new_id()[:16]
        if result.flow is not None and result.flow != convo.flow:
            values.update(started_at=now, ended_at=None, end_reason=None)
        elif result.flow is None and convo.flow is not None:
            values.update(ended_at=now, end_reason=(result.end_reason or "ended")[:100])
        await s.execute(
            update(conversations_t).where(conversations_t.c.id == convo.id).values(**values)
        )
        if event.kind is EventKind.INBOUND:
            body = str(event.payload.get("body", ""))
            sms = analyze(body)
            await s.execute(
                messages_t.insert().values(
                    id=new_id(),
                    direction=Direction.INBOUND.value,
                    virtual_number=key.virtual_number,
                    phone=key.phone,
                    body=body,
                    provider_message_id=event.payload.get("message_id"),
                    segments=sms.segments,
                    encoding=sms.encoding.value,
                    event_id=event.id,
                    created_at=event.received_at,
                    attempts=0,
                )
            )
        opted_out = snapshot.opted_out
        if result.opt_out is True:
            await s.execute(
                insert_ignoring_conflicts(self.db, opt_outs_t)
                .values(
                    virtual_number=key.virtual_number,
                    phone=key.phone,
                    keyword=(result.opt_keyword or "STOP")[:50],
                    created_at=now,
                )
                .on_conflict_do_nothing(index_elements=["virtual_number", "phone"])
            )
            opted_out = True
        elif result.opt_out is False:
            await s.execute(
                delete(opt_outs_t).where(
                    opt_outs_t.c.virtual_number == key.virtual_number,
                    opt_outs_t.c.phone == key.phone,
                )
            )
            opted_out = False
        queued = 0
        rows = []
        for reply in result.replies:
            # Opt-out is enforced here as well as in the router: after STOP only the
            # compliance confirmation is ever queued, whatever a flow asks for.
            suppressed = opted_out and reply.origin is not Origin.COMPLIANCE
            sms = analyze(reply.text)
            queued += not suppressed
            rows.append(
                {
                    "id": new_id(),
                    "direction": Direction.OUTBOUND.value,
                    "virtual_number": key.virtual_number,
                    "phone": key.phone,
                    "body": reply.text,
                    "origin": reply.origin.value,
                    "status": (
                        DeliveryStatus.SUPPRESSED if suppressed else DeliveryStatus.QUEUED
                    ).value,
                    "outbox": (OutboxState.DONE if suppressed else OutboxState.PENDING).value,
                    "send_after": reply.send_after or now,
                    "segments": sms.segments,
                    "encoding": sms.encoding.value,
                    "event_id": event.id,
                    "created_at": now,
                    "status_at": now,
                    "attempts": 0,
                }
            )
        if rows:
            await s.execute(messages_t.insert(), rows)
        timers_changed = await self._apply_timers(s, convo.id, result, now)
        await self._finish_event(s, event.id, now, EventState.DONE)
        return StepOutcome(key, event.id, queued, timers_changed)

    async def _apply_timers(
        self, s: AsyncSession, convo_id: int, result: StepResult, now: dt.datetime
    ) -> bool:
        scheduled = timers_t.c.state == TimerState.SCHEDULED.value
        mine = timers_t.c.conversation_id == convo_id
        if result.cancel_all_timers:
            await s.execute(
                update(timers_t).where(mine, scheduled).values(state=TimerState.CANCELLED.value)
            )
        if result.cancel_timers:
            await s.execute(
                update(timers_t)
                .where(mine, scheduled, timers_t.c.name.in_(result.cancel_timers))
                .values(state=TimerState.CANCELLED.value)
            )
        for t in result.timers:
            values = {
                "kind": t.kind,
                "token": new_id()[:16],
                "due_at": t.due_at,
                "payload": dict(t.payload),
                "state": TimerState.SCHEDULED.value,
                "created_at": now,
                "fired_at": None,
            }
            updated = await s.execute(
                update(timers_t).where(mine, timers_t.c.name == t.name).values(**values)
            )
            if not updated.rowcount:  # type: ignore[attr-defined]
                await s.execute(
                    timers_t.insert().values(conversation_id=convo_id, name=t.name, **values)
                )
        return bool(result.timers or result.cancel_timers or result.cancel_all_timers)


def backoff(attempt: int, base: float = 1.0, cap: float = 300.0) -> dt.timedelta:
    """Return the wait before retry number `attempt` (1, 2, 4, … seconds, capped)."""
    return dt.timedelta(seconds=min(cap, base * 2 ** (attempt - 1)))
