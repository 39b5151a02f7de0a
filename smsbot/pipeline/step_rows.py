"""A step's rows, built and bound before its write transaction (effects.write_effects runs them).

What a step writes (its conversation's new state, its history, its messages, its timers) is
known once the step has run; only two ids may be learnt later, inside the write: a conversation
the write itself inserts, and an event the write itself stores (bulk starts, timer firings).
Building those rows (a reply's segments, new ids and tokens, every value through its column's
bind processor: JSON, datetimes) was about two thirds of the Python a bulk chunk ran inside its
write transaction, with SQLite's one write lock held and the other start processes and
`smsbot serve` waiting for it (bench/README.md). `bind(items, now, dialect)` does it first:
passed as `Database.write`'s `before`, it runs in the writer's thread just before BEGIN
(pipeline/starts.commit). The transaction then sets the ids (`StepRows.fill`, a few list
assignments a step) and hands the rows to sqlite3.

Dispatcher batches and timer firings build their rows inside the write, with the same code:
in one `smsbot serve` no other process waits for the lock, and binding them ahead measured
worse (in the event loop, 8-11 % fewer turns a second; in the writer's thread before BEGIN,
fewer in 5 of 6 alternating pairs).

The rows are `prepared.Binder` rows: lists of bound values on SQLite (`Database.binds_ahead`),
plain mappings run through Core on PostgreSQL. A step's first reply, when it was offered to its
sender (`Stepped.lease`), stays a mapping until the write: `handover.take` may claim it there.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from sqlalchemy import JSON, Connection, Dialect, bindparam, update

from smsbot.engine.contract import (
    ConversationKey,
    ConversationSnapshot,
    DispatchEvent,
    EventKind,
    Origin,
    StepResult,
)
from smsbot.pipeline import history
from smsbot.sms.status import DeliveryStatus
from smsbot.sms.text import analyze
from smsbot.store.models import (
    DEFAULT_WORKSPACE,
    Direction,
    OutboxState,
    TimerState,
    conversations_t,
    messages_t,
    new_id,
    new_token,
    timers_t,
)
from smsbot.store.prepared import Prepared, write_dialect
from smsbot.store.types import utc_param
from smsbot.store.upsert import insert_on_conflict


@dataclasses.dataclass(slots=True)
class Stepped:
    """One event whose handler returned a result, waiting to be written."""

    convo: Any  # the locked conversations row
    snapshot: ConversationSnapshot
    event: DispatchEvent
    result: StepResult
    # The event's workspace (the owner of the number): every row the step writes is its.
    workspace: str = DEFAULT_WORKSPACE
    # Set when the first reply was offered to the sender (handover.offer): its claim's lease.
    lease: dt.timedelta | None = None
    rows: StepRows | None = None  # bound ahead of the write (bind), else in it


@dataclasses.dataclass(frozen=True, slots=True)
class NewConversation:
    """A conversation row the step's own transaction inserted, as write_effects reads it: no
    timer can name it yet, so there is none to cancel. `written`: inserted as the step leaves
    it (StepRows.create), so there is no UPDATE to make either."""

    id: int
    written: bool = False
    version: int = 0
    flow: str | None = None
    state: str | None = None
    state_token: str | None = None
    started_at: dt.datetime | None = None
    ended_at: dt.datetime | None = None
    end_reason: str | None = None
    end_state: str | None = None


# Prepared (store/prepared.py): compiled once, run through sqlite3's executemany on SQLite.
UPDATE_CONVERSATION = Prepared(
    update(conversations_t)
    .where(conversations_t.c.id == bindparam("b_id"))
    .values(
        workspace=bindparam("b_workspace"),
        flow=bindparam("b_flow"),
        state=bindparam("b_state"),
        data=bindparam("b_data", type_=JSON()),
        version=bindparam("b_version"),
        state_token=bindparam("b_token"),
        last_activity_at=utc_param("b_now"),
        started_at=utc_param("b_started"),
        ended_at=utc_param("b_ended"),
        end_reason=bindparam("b_reason"),
        end_state=bindparam("b_end_state"),
    )
)
NEW_CONVERSATION = insert_on_conflict(conversations_t, ["virtual_number", "phone"])
# Rows an ON CONFLICT skips return nothing: the answers are matched by key, not by position.
CREATE_CONVERSATION = Prepared(
    NEW_CONVERSATION.returning(
        conversations_t.c.virtual_number, conversations_t.c.phone, conversations_t.c.id
    )
)
# A timer set again under the same name replaces the scheduled one (new token, new due time).
_RESET = ("workspace", "kind", "token", "due_at", "payload", "state", "created_at", "fired_at")
UPSERT_TIMER = Prepared(insert_on_conflict(timers_t, ["conversation_id", "name"], update=_RESET))
INSERT_MESSAGES = Prepared(messages_t.insert())

# The parameter names of each statement's rows: one shape a statement (executemany).
_UPDATE_KEYS: tuple[str, ...] = (
    "b_id", "b_workspace", "b_flow", "b_state", "b_data", "b_version", "b_token", "b_now",
    "b_started", "b_ended", "b_reason", "b_end_state",
)  # fmt: skip
_CONVERSATION_KEYS: tuple[str, ...] = (
    "virtual_number", "phone", "workspace", "flow", "state", "data", "version", "state_token",
    "last_activity_at", "started_at", "ended_at", "end_reason", "end_state",
)  # fmt: skip
_MESSAGE_KEYS: tuple[str, ...] = (
    "id", "direction", "workspace", "virtual_number", "phone", "body", "origin", "status",
    "outbox", "provider_message_id", "send_after", "segments", "encoding", "event_id",
    "created_at", "status_at", "attempts", "lease_until",
)  # fmt: skip
_TIMER_KEYS: tuple[str, ...] = (
    "conversation_id", "workspace", "name", "kind", "token", "due_at", "payload", "state",
    "created_at", "fired_at",
)  # fmt: skip
_UNKNOWN = 0  # an id the write sets (StepRows.fill)
_STAND_IN = NewConversation(_UNKNOWN)  # the empty conversation the write will create


class Binders:
    """The binders of the statements a step's rows go to, for one kind of write connection."""

    def __init__(self, dialect: Dialect | None) -> None:
        self.update = UPDATE_CONVERSATION.binder(dialect, _UPDATE_KEYS)
        self.create = CREATE_CONVERSATION.binder(dialect, _CONVERSATION_KEYS)
        self.history = history.INSERT.binder(dialect, history.KEYS)
        self.messages = INSERT_MESSAGES.binder(dialect, _MESSAGE_KEYS)
        self.timers = UPSERT_TIMER.binder(dialect, _TIMER_KEYS)


_MADE: dict[bool, Binders] = {}  # by "runs through Core": every sqlite3 dialect binds alike


def binders(dialect: Dialect | None) -> Binders:
    """The binders for `dialect` (`Database.binds_ahead`), made once per kind of connection."""
    found = _MADE.get(dialect is None)
    if found is None:
        found = _MADE[dialect is None] = Binders(dialect)
    return found


def binders_for(conn: Connection) -> Binders:
    """The binders for rows that `conn` runs (prepared.write_dialect)."""
    return binders(write_dialect(conn))


@dataclasses.dataclass(slots=True)
class StepRows:
    """One step's rows, bound; `fill` sets the ids the write learns."""

    binders: Binders
    update: Any | None  # the conversation's UPDATE (None: the step inserts it, `create`)
    create: Any | None  # its INSERT as the step leaves it (NewConversation.written)
    history: list[Any]
    messages: list[Any]
    offered: dict[str, Any] | None  # the first reply, offered to its sender (handover.take)
    timers: dict[str, Any]  # by timer name: set twice in one step, the last one wins
    opted_out: bool  # after this step: its replies are suppressed, bar compliance ones
    queued: int  # replies to send
    timers_changed: bool

    def fill(self, convo_id: int, event_id: int) -> None:
        """Set the conversation's and the event's ids, learnt in the write."""
        b = self.binders
        if self.update is not None:
            b.update.put(self.update, "b_id", convo_id)
        for row in self.history:
            b.history.put(row, "conversation_id", convo_id)
            b.history.put(row, "event_id", event_id)
        for row in self.messages:
            b.messages.put(row, "event_id", event_id)
        if self.offered is not None:
            self.offered["event_id"] = event_id
        for row in self.timers.values():
            b.timers.put(row, "conversation_id", convo_id)


def bind(items: list[Stepped], now: dt.datetime, dialect: Dialect | None) -> None:
    """Build and bind each item's rows before the write (see above); `dialect` is
    `Database.binds_ahead`."""
    b = binders(dialect)
    for item in items:
        item.rows = rows_of(item, now, b)


def rows_of(item: Stepped, now: dt.datetime, b: Binders) -> StepRows:
    """One item's rows, with the ids the write may learn left unknown."""
    convo = item.convo
    if convo is None:  # the write creates it, empty, then updates it as the step leaves it
        convo = _STAND_IN
    written = isinstance(convo, NewConversation) and convo.written
    values = conversation_values(item, convo, now)
    create = b.create(_new_conversation_row(item, values, now)) if written else None
    update = None if written else b.update(values)
    changes = [b.history(row) for row in history.changes(item, convo, now)]
    key, event, result = item.snapshot.key, item.event, item.result
    messages: list[Any] = []
    if event.kind is EventKind.INBOUND:
        messages.append(b.messages(_inbound_row(item.workspace, key, event)))
    opted_out = opted_out_after(item)
    offered = None
    queued = 0
    for n, reply in enumerate(result.replies):
        # Opt-out is enforced here as well as in the router: after STOP only the compliance
        # confirmation is ever queued, whatever a flow asks for.
        suppressed = opted_out and reply.origin is not Origin.COMPLIANCE
        queued += not suppressed
        # The sender goes by (send_after, created_at): a microsecond apart, one step's replies
        # keep the order the flow queued them in.
        created = now + dt.timedelta(microseconds=n)
        send_after = reply.send_after or now
        row = _reply_row(
            item.workspace, key, reply.text, reply.origin, send_after, suppressed, created
        )
        if n == 0 and item.lease is not None and not suppressed:
            offered = row  # bound in the write, after handover.take
        else:
            messages.append(b.messages(row))
    timers = {
        t.name: b.timers(
            {
                "conversation_id": _UNKNOWN,
                "workspace": item.workspace,
                "name": t.name,
                "kind": t.kind,
                "token": new_token(),
                "due_at": t.due_at,
                "payload": dict(t.payload),
                "state": TimerState.SCHEDULED.value,
                "created_at": now,
                "fired_at": None,
            }
        )
        for t in result.timers
    }
    changed = bool(result.timers or result.cancel_timers or result.cancel_all_timers)
    changed |= result.contact is not None  # its campaign fires may move (pipeline/campaigns)
    return StepRows(
        b, update, create, changes, messages, offered, timers, opted_out, queued, changed
    )


def opted_out_after(item: Stepped) -> bool:
    """Whether the conversation's phone is opted out once this step is written."""
    if item.result.opt_out is not None:
        return item.result.opt_out
    return item.snapshot.opted_out


def conversation_values(item: Stepped, c: Any, now: dt.datetime) -> dict[str, Any]:
    """The conversation row `c` after this step, as UPDATE parameters."""
    r = item.result
    values = {
        "b_id": c.id,
        "b_workspace": item.workspace,  # a conversation follows its number's workspace
        "b_flow": r.flow,
        "b_state": r.state if r.flow is not None else None,
        "b_data": dict(r.data),
        "b_version": c.version + 1,
        "b_token": new_token() if r.state_entered else c.state_token,
        "b_now": now,
        "b_started": c.started_at,
        "b_ended": c.ended_at,
        "b_reason": c.end_reason,
        "b_end_state": c.end_state,
    }
    # A run began: another flow, or the same one again after ending the last run in this step.
    if r.flow is not None and (r.flow != c.flow or r.end_reason is not None):
        values.update(b_started=now, b_ended=None, b_reason=None, b_end_state=None)
    elif r.flow is None and c.flow is not None:
        values.update(
            b_ended=now,
            b_reason=(r.end_reason or "ended")[:100],
            b_end_state=r.end_state[:100] if r.end_state else None,
        )
    return values


def _new_conversation_row(item: Stepped, v: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    """The row of a conversation that did not exist, as this step leaves it (to INSERT)."""
    key = item.snapshot.key
    return {
        "virtual_number": key.virtual_number,
        "phone": key.phone,
        "workspace": v["b_workspace"],
        "flow": v["b_flow"],
        "state": v["b_state"],
        "data": v["b_data"],
        "version": v["b_version"],
        "state_token": v["b_token"],
        "last_activity_at": now,
        "started_at": v["b_started"],
        "ended_at": v["b_ended"],
        "end_reason": v["b_reason"],
        "end_state": v["b_end_state"],
    }


def _inbound_row(workspace: str, key: ConversationKey, event: DispatchEvent) -> dict[str, Any]:
    body = str(event.payload.get("body", ""))
    return _message(
        workspace,
        key,
        body,
        Direction.INBOUND,
        None,
        None,
        None,
        event.received_at,
        provider_message_id=event.payload.get("message_id"),
    )


def _reply_row(
    workspace: str,
    key: ConversationKey,
    text: str,
    origin: Origin,
    send_after: dt.datetime,
    suppressed: bool,
    now: dt.datetime,
) -> dict[str, Any]:
    status = DeliveryStatus.SUPPRESSED if suppressed else DeliveryStatus.QUEUED
    outbox = OutboxState.DONE if suppressed else OutboxState.PENDING
    return _message(
        workspace,
        key,
        text,
        Direction.OUTBOUND,
        origin,
        status,
        outbox,
        now,
        send_after=send_after,
        status_at=now,
    )


def _message(
    workspace: str,
    key: ConversationKey,
    body: str,
    direction: Direction,
    origin: Origin | None,
    status: DeliveryStatus | None,
    outbox: OutboxState | None,
    created_at: dt.datetime,
    *,
    provider_message_id: str | None = None,
    send_after: dt.datetime | None = None,
    status_at: dt.datetime | None = None,
) -> dict[str, Any]:
    sms = analyze(body)
    # every row carries every column: executemany needs one shape
    return {
        "id": new_id(),
        "direction": direction.value,
        "workspace": workspace,
        "virtual_number": key.virtual_number,
        "phone": key.phone,
        "body": body,
        "origin": origin.value if origin else None,
        "status": status.value if status else None,
        "outbox": outbox.value if outbox else None,
        "provider_message_id": provider_message_id,
        "send_after": send_after,
        "segments": sms.segments,
        "encoding": sms.encoding.value,
        "event_id": _UNKNOWN,
        "created_at": created_at,
        "status_at": status_at,
        "attempts": 0,
        "lease_until": None,
    }
