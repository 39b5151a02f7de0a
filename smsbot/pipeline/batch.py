"""One step batch: what the dispatcher does with a list of due conversations.

Two shapes, one result (every step of the batch written in one transaction, or none):

- **SQLite** (`_step_then_write`): read, step in the event loop with nothing locked, then one
  write transaction that checks and writes, start to commit in the writer's thread. SQLite has
  one writer for the whole database, so a transaction open while the flows run would hold
  every webhook's commit back. The write keeps a step only if its conversation is still at the
  version it was computed from (every step moves it) and its event is still pending; a step
  that lost that race is stepped again at once from the newer state.
- **PostgreSQL** (`_step_locked`): lock the rows with `FOR UPDATE SKIP LOCKED`, step, write,
  commit: one transaction. A row lock holds back no other writer there, only another process
  that wants the same conversation, which skips it and takes the next: the lock is how
  processes share the conversations.

The claim and the writes are synchronous Core (`claims.py`, `effects.py`, `contacts.py`) run in
the database's thread (SQLite) or through run_sync (PostgreSQL). A step's first reply due now
is offered to its sender before the write (`handover.py`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection

from smsbot.engine.contract import (
    ConversationKey,
    ConversationSnapshot,
    DispatchEvent,
    EventKind,
    StepHandler,
)
from smsbot.pipeline import claims, contacts, handover, timer_claims
from smsbot.pipeline.effects import StepOutcome, finish_events, write_effects
from smsbot.pipeline.metrics import Metrics
from smsbot.pipeline.step_rows import Stepped
from smsbot.pipeline.stepping import run_step
from smsbot.store.engine import Database
from smsbot.store.models import DEFAULT_WORKSPACE, EventState


@dataclasses.dataclass(slots=True)
class Claim:
    """What a batch's steps need, read (SQLite) or locked (PostgreSQL) for its conversations."""

    convos: dict[ConversationKey, Any]  # the rows; SQLite: a key with no row yet is missing
    events: dict[ConversationKey, Any]  # each conversation's oldest due event
    opted: set[ConversationKey]
    live_timers: set[int]  # the timer events whose firing is still scheduled
    people: dict[tuple[str, str], Any]  # (workspace, phone) -> ContactSnapshot


@dataclasses.dataclass(slots=True)
class Work:
    """A claimed batch, stepped: what to write, and what the write dropped."""

    claim: Claim
    stepped: list[Stepped] = dataclasses.field(default_factory=list)
    stale: list[tuple[int, str]] = dataclasses.field(default_factory=list)  # (event, workspace)
    failed: list[tuple[Any, BaseException]] = dataclasses.field(default_factory=list)
    conflicts: list[Stepped] = dataclasses.field(default_factory=list)
    write_seconds: float = 0.0  # how long the write held SQLite's writer (PostgreSQL: 0)

    def absorb(self, other: Work) -> None:
        """Count a retry's steps with these (the metrics); its conflicts replace these."""
        self.stepped += other.stepped
        self.stale += other.stale
        self.failed += other.failed


@dataclasses.dataclass(frozen=True, slots=True)
class _Restore:
    """The read met an erased phone that is back: its opt-outs are restored first (rare)."""

    owners: list[tuple[str, ConversationKey]]  # the batch's (workspace, key) pairs


class Batches:
    """Runs step batches for a dispatcher: its database, handler and limits."""

    def __init__(
        self,
        db: Database,
        handler: StepHandler,
        metrics: Metrics,
        *,
        max_attempts: int,
        step_timeout: float,
        takers: handover.Takers | None,
    ) -> None:
        self.db = db
        self.handler = handler
        self.metrics = metrics
        self.max_attempts = max_attempts
        self.step_timeout = step_timeout
        self.takers = takers  # each workspace's sender, to hand replies to (handover.py)

    async def run(
        self, keys: Sequence[ConversationKey], now: dt.datetime
    ) -> tuple[list[StepOutcome], Work, int] | None:
        """Step the oldest due event of each conversation; (outcomes, work, events finished)."""
        if self.db.is_postgres:
            return await self._step_locked(keys, now)
        return await self._step_then_write(keys, now)

    async def _step_locked(
        self, keys: Sequence[ConversationKey], now: dt.datetime
    ) -> tuple[list[StepOutcome], Work, int] | None:
        """PostgreSQL: lock the rows (SKIP LOCKED), step, write, commit (see above)."""
        async with self.db.transaction() as tx:
            claim = await tx.run(lambda conn: self._claim(conn, keys, now))
            if claim is None:
                return None
            work = await self._step_all(claim, now)
            outcomes, parked = await tx.run(lambda conn: self._write(conn, work, now))
        return outcomes, work, len(work.stepped) + len(work.stale) + parked

    async def _step_then_write(
        self, keys: Sequence[ConversationKey], now: dt.datetime, retries: int = 2
    ) -> tuple[list[StepOutcome], Work, int] | None:
        """SQLite: read, step unlocked, then check and write in one transaction (see above);
        a step that lost its race is stepped again at once (`retries` times, then next round)."""
        claim = await self.db.read(lambda conn: self._look(conn, keys, now))
        if isinstance(claim, _Restore):
            owners = claim.owners
            await self.db.write(lambda conn: contacts.restore_suppressed(conn, owners))
            claim = await self.db.read(lambda conn: self._look(conn, keys, now))
        if not isinstance(claim, Claim):
            return None
        work = await self._step_all(claim, now)
        started = time.perf_counter()
        outcomes, parked = await self.db.write(lambda conn: self._check_and_write(conn, work, now))
        work.write_seconds = time.perf_counter() - started
        finished = len(work.stepped) + len(work.stale) + parked
        if work.conflicts:
            self.metrics.inc("smsbot_step_conflicts_total", len(work.conflicts))
            if retries > 0:  # at once, from the state that won: their events are still due
                again = await self._step_then_write(
                    [i.snapshot.key for i in work.conflicts], now, retries - 1
                )
                if again is not None:
                    outcomes += again[0]
                    work.absorb(again[1])
                    finished += again[2]
        return outcomes, work, finished

    async def _step_all(self, claim: Claim, now: dt.datetime) -> Work:
        """Run each claimed event through the step handler, in the event loop."""
        work = Work(claim)
        for key, row in claim.events.items():
            event = DispatchEvent(row.id, EventKind(row.kind), row.payload, row.received_at)
            convo = claim.convos.get(key)
            workspace = _workspace(convo, row)
            if event.kind is EventKind.TIMER and event.id not in claim.live_timers:
                work.stale.append((row.id, workspace))
                continue
            snapshot = snapshot_of(convo, key, key in claim.opted)
            snapshot.contact = claim.people.get((workspace, key.phone))
            try:
                result = await run_step(self.handler, event, snapshot, now, self.step_timeout)
            except Exception as exc:
                work.failed.append((row, exc))
                continue
            work.stepped.append(Stepped(convo, snapshot, event, result, workspace))
        if self.takers is not None:
            handover.offer(work.stepped, now, self.takers)
        return work

    def _claim(self, conn: Connection, keys: Sequence[ConversationKey], now: dt.datetime) -> Any:
        """Lock the conversations, read their oldest due events, claim their timer firings."""
        convos = claims.lock_conversations(conn, keys, postgres=self.db.is_postgres)
        events = claims.oldest_events(conn, list(convos), now)
        if not events:
            return None
        # Each event's workspace: its contact and its erased opt-outs are that workspace's.
        owners = [(_workspace(convos[k], row), k) for k, row in events.items()]
        contacts.restore_suppressed(conn, owners)  # erased, then back
        opted = claims.opted_out(conn, list(events))
        people = contacts.load_contacts(conn, ((w, k.phone) for w, k in owners))
        live = timer_claims.claim_timers(conn, convos, events, now)
        return Claim(convos, events, opted, live, people)

    def _look(self, conn: Connection, keys: Sequence[ConversationKey], now: dt.datetime) -> Any:
        """_claim without a lock or a write: what the steps need, read from one snapshot."""
        convos = claims.read_conversations(conn, keys)
        events = claims.oldest_events(conn, list(keys), now)
        if not events:
            return None
        owners = [(_workspace(convos.get(k), row), k) for k, row in events.items()]
        if contacts.any_suppressed(conn, owners):
            return _Restore(owners)
        opted = claims.opted_out(conn, list(events))
        people = contacts.load_contacts(conn, ((w, k.phone) for w, k in owners))
        live = timer_claims.claim_timers(conn, convos, events, now, claim=False)
        return Claim(convos, events, opted, live, people)

    def _check_and_write(
        self, conn: Connection, work: Work, now: dt.datetime
    ) -> tuple[list[StepOutcome], int]:
        """In the write transaction: drop what moved since the read, then write the rest."""
        claim = work.claim
        ids = [i.event.id for i in work.stepped] + [i for i, _ in work.stale]
        ids += [row.id for row, _ in work.failed]
        pending = claims.still_pending(conn, ids)
        known = [i.snapshot.key for i in work.stepped if i.convo is not None]
        versions = claims.versions(conn, known)
        new = {
            i.snapshot.key: i.workspace
            for i in work.stepped
            if i.convo is None and i.event.id in pending
        }
        # a failing first event gets its conversation too: the console shows the error there
        for row, _ in work.failed:
            key = ConversationKey(row.virtual_number, row.phone)
            if key not in claim.convos and row.id in pending:
                new.setdefault(key, str(row.workspace or DEFAULT_WORKSPACE))
        created = claims.create_conversations(conn, new)
        kept: list[Stepped] = []
        for item in work.stepped:
            key = item.snapshot.key
            if item.convo is None:
                item.convo = created.get(key)
            elif versions.get(key) != item.convo.version:
                item.convo = None
            if item.convo is None or item.event.id not in pending:
                work.conflicts.append(item)
            else:
                kept.append(item)
        # A timer step is kept only if its firing is still live, claimed here (fired once).
        timed = {i.snapshot.key: claim.events[i.snapshot.key] for i in kept}
        timed = {k: row for k, row in timed.items() if row.kind == EventKind.TIMER.value}
        if timed:
            convos = {i.snapshot.key: i.convo for i in kept}
            live = timer_claims.claim_timers(conn, convos, timed, now)
            for item in [i for i in kept if i.snapshot.key in timed]:
                if item.event.id not in live:  # cancelled since the read: the firing is stale
                    kept.remove(item)
                    work.stale.append((item.event.id, item.workspace))
        work.stepped = kept
        work.stale = [(i, w) for i, w in work.stale if i in pending]
        work.failed = [(row, exc) for row, exc in work.failed if row.id in pending]
        return self._write(conn, work, now)

    def _write(
        self, conn: Connection, work: Work, now: dt.datetime
    ) -> tuple[list[StepOutcome], int]:
        contacts.write_contacts(conn, work.stepped, now)
        outcomes = write_effects(conn, work.stepped, now)
        finish_events(conn, [i for i, _ in work.stale], EventState.IGNORED, now)
        parked = claims.record_failures(conn, work.failed, now, max_attempts=self.max_attempts)
        return outcomes, parked


def _workspace(convo: Any, event: Any) -> str:
    """The workspace a step works in: its event's (the owner of the number), else its row's."""
    return str(event.workspace or (convo.workspace if convo else None) or DEFAULT_WORKSPACE)


def snapshot_of(convo: Any, key: ConversationKey, opted_out: bool) -> ConversationSnapshot:
    """What a step sees of a conversation row (None: no conversation yet, the row the write
    creates)."""
    if convo is None:
        return ConversationSnapshot(0, key, None, None, {}, 0, None, opted_out, None, None)
    return ConversationSnapshot(
        id=convo.id,
        key=key,
        flow=convo.flow,
        state=convo.state,
        data=dict(convo.data or {}),
        version=convo.version,
        state_token=convo.state_token,
        opted_out=opted_out,
        started_at=convo.started_at,
        last_activity_at=convo.last_activity_at,
    )
