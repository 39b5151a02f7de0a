"""Timer firings stepped as they fire: a page of due timers read, stepped and written at once.

Through the inbox (scheduler.py), a firing costs two transactions besides its step's: its
event's insert, then the dispatcher reads the event back and finishes it. Here the scheduler
hands a page of due timers to the dispatcher (`Dispatcher.fire_timers`): each conversation's
firing is stepped from one read, and one write transaction inserts the firing's inbox event
already finished beside the step's effects, as bulk starts do (starts.py).

The promises are the inbox path's, kept by falling back to it:
- **fired once**: the write marks the timer FIRED only if it is still scheduled with the token
  that was read (timer_claims.claim_fires). The event id (`timer:ID:TOKEN`) is unique: a firing that
  something else stored first (the sweep of another leader) is left to that event's step;
- **one step at a time per conversation, in order**: a step is kept only if, in the write, its
  conversation is at the version that was read (locked on PostgreSQL, SKIP LOCKED) and has no
  pending event. Otherwise its firing is stored as a pending event, behind the others, and the
  dispatcher steps it like any other; so is a conversation's second firing in the page. A step
  that raised is stored pending with its failure counted, as the dispatcher counts one;
- **nothing lost**: one transaction. A crash before its commit leaves the timer scheduled, and
  the next firing or the sweep fires it again.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection

from smsbot.engine.contract import ConversationKey, DispatchEvent, EventKind
from smsbot.pipeline import claims, contacts, handover, timer_claims
from smsbot.pipeline.batch import Batches, snapshot_of
from smsbot.pipeline.effects import StepOutcome, finish_events, write_effects
from smsbot.pipeline.inbox import NEW_EVENT, InboxEntry, event_row
from smsbot.pipeline.step_rows import Stepped
from smsbot.pipeline.stepping import run_step
from smsbot.store.models import DEFAULT_WORKSPACE, EventState, events_t
from smsbot.store.prepared import Prepared

_INSERT_EVENTS = Prepared(NEW_EVENT.returning(events_t.c.event_id, events_t.c.id))


@dataclasses.dataclass(frozen=True, slots=True)
class Due:
    """A due timer's row (due_timers.Page), the conversation it fires into, and its inbox
    event (due_timers.firing)."""

    row: Any
    key: ConversationKey
    entry: InboxEntry


@dataclasses.dataclass(slots=True)
class Fired:
    """What firing a page did."""

    outcomes: list[StepOutcome] = dataclasses.field(default_factory=list)
    stepped: list[Stepped] = dataclasses.field(default_factory=list)
    queued: int = 0  # stored as pending events for the dispatcher
    stale: list[str] = dataclasses.field(default_factory=list)  # workspaces of stale firings
    failed: list[tuple[Any, BaseException]] = dataclasses.field(default_factory=list)
    parked: int = 0
    write_seconds: float = 0.0  # how long the write held the writer (SQLite)

    @property
    def stored(self) -> int:
        """Firings this page stored: stepped, stale (ignored) or queued for the dispatcher."""
        return len(self.stepped) + len(self.stale) + self.queued


@dataclasses.dataclass(frozen=True, slots=True)
class _Failure:
    """The fields claims.record_failures reads of a failed firing's stored event."""

    id: int
    kind: str
    workspace: str
    attempts: int = 0


class Firings:
    """Steps pages of due timers with a dispatcher's database, handler and limits (its Batches)."""

    def __init__(self, batches: Batches) -> None:
        self.db = batches.db
        self.handler = batches.handler
        self.max_attempts = batches.max_attempts
        self.step_timeout = batches.step_timeout
        self.takers = batches.takers

    async def run(self, due: Sequence[Due], now: dt.datetime, busy: set[ConversationKey]) -> Fired:
        """Step the first firing of each conversation not in `busy`, queue the rest; see above."""
        first: dict[ConversationKey, Due] = {}
        queued: list[Due] = []
        for d in due:
            if d.key in first or d.key in busy:
                queued.append(d)
            else:
                first[d.key] = d
        firsts = list(first.values())
        look = await self.db.read(lambda conn: _read(conn, firsts)) if firsts else None
        stepped: list[tuple[Due, Stepped]] = []
        failed: list[tuple[Due, BaseException]] = []
        if look is None:  # none, or an erased phone is back: the dispatcher restores it first
            queued += firsts
        else:
            convos, waiting, opted, people = look
            for key, d in first.items():
                convo = convos.get(key)
                if convo is None or key in waiting:
                    queued.append(d)
                    continue
                workspace = _workspace(d)
                event = DispatchEvent(0, EventKind.TIMER, d.entry.payload, now)
                snapshot = snapshot_of(convo, key, key in opted)
                snapshot.contact = people.get((workspace, key.phone))
                try:
                    result = await run_step(self.handler, event, snapshot, now, self.step_timeout)
                except Exception as exc:
                    failed.append((d, exc))
                    continue
                stepped.append((d, Stepped(convo, snapshot, event, result, workspace)))
        if self.takers is not None:
            handover.offer([item for _, item in stepped], now, self.takers)
        started = time.perf_counter()
        fired = await self.db.write(lambda conn: self._write(conn, stepped, queued, failed, now))
        fired.write_seconds = time.perf_counter() - started
        return fired

    def _write(
        self,
        conn: Connection,
        stepped: list[tuple[Due, Stepped]],
        queued: list[Due],
        failed: list[tuple[Due, BaseException]],
        now: dt.datetime,
    ) -> Fired:
        """One transaction: keep the steps whose conversation did not move, queue the rest."""
        done = Fired()
        keys = [d.key for d, _ in stepped]
        free = set(keys) - claims.waiting(conn, keys)
        versions = claims.versions(conn, [k for k in keys if k in free], lock=True)
        kept: list[tuple[Due, Stepped]] = []
        for d, item in stepped:
            if versions.get(d.key) != item.convo.version:
                queued.append(d)  # moved, or held by another process, since the read
            else:
                kept.append((d, item))
        states = [(d, EventState.DONE) for d, _ in kept]
        states += [(d, EventState.PENDING) for d in queued]
        states += [(d, EventState.PENDING) for d, _ in failed]
        states.sort(key=_due_order)  # event ids in the order the timers fell due
        ids = dict(_INSERT_EVENTS.inserted(conn, [_event(d, s, now) for d, s in states]))
        # A firing whose event was already stored is that event's to step (once): skipped.
        mine = [(d, item, ids[d.entry.event_id]) for d, item in kept if d.entry.event_id in ids]
        live = timer_claims.claim_fires(conn, {(d.row.id, d.row.token): i for d, _, i in mine}, now)
        items: list[Stepped] = []
        stale: list[int] = []
        for _, item, event_id in mine:
            if event_id not in live:  # cancelled or moved since the read: nothing to step
                stale.append(event_id)
                done.stale.append(item.workspace)
                continue
            item.event = DispatchEvent(event_id, EventKind.TIMER, item.event.payload, now)
            items.append(item)
        finish_events(conn, stale, EventState.IGNORED, now)
        contacts.write_contacts(conn, items, now)
        done.outcomes = write_effects(conn, items, now, events_done=True)
        done.stepped = items
        failures: list[tuple[Any, BaseException]] = []
        for d, exc in failed:
            if (event_id := ids.get(d.entry.event_id)) is not None:
                failures.append((_Failure(event_id, EventKind.TIMER.value, _workspace(d)), exc))
        done.failed = failures
        done.parked = claims.record_failures(conn, failures, now, max_attempts=self.max_attempts)
        done.queued = sum(d.entry.event_id in ids for d in queued) + len(failures) - done.parked
        return done


def _event(d: Due, state: EventState, now: dt.datetime) -> dict[str, Any]:
    """The firing's webhook_events row: DONE (stepped here) or PENDING (the dispatcher's)."""
    return event_row(d.entry, now) | {
        "state": state.value,
        "processed_at": None if state is EventState.PENDING else now,
    }


def _due_order(pair: tuple[Due, EventState]) -> tuple[Any, int]:
    return pair[0].row.due_at, pair[0].row.id  # the page's own order (due_timers)


def _workspace(d: Due) -> str:
    return str(d.row.workspace or DEFAULT_WORKSPACE)  # the timer's: its conversation's


def _read(conn: Connection, dues: list[Due]) -> Any:
    """The conversations, which have pending events, opt-outs and contacts; None when an
    erased phone is back (the dispatcher restores its opt-outs before stepping it)."""
    keys = [d.key for d in dues]
    convos = claims.read_conversations(conn, keys)
    owners = [(_workspace(d), d.key) for d in dues]
    if contacts.any_suppressed(conn, owners):
        return None
    waiting = claims.waiting(conn, keys)
    opted = claims.opted_out(conn, keys)
    people = contacts.load_contacts(conn, ((w, k.phone) for w, k in owners))
    return convos, waiting, opted, people
