"""Write what a batch of steps decided, in the dispatcher's transaction, with few statements.

Every row a batch touches is written with one executemany per kind (conversations, messages,
opt-outs, timers, events), so a batch of 200 steps costs about as many round trips as one.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from sqlalchemy import JSON, Connection, and_, bindparam, delete, update

from smsbot.engine.contract import (
    ConversationKey,
    ConversationSnapshot,
    DispatchEvent,
    EventKind,
    Origin,
    StepResult,
)
from smsbot.pipeline import handover, history
from smsbot.pipeline.outbox import Claimed
from smsbot.sms.status import DeliveryStatus
from smsbot.sms.text import analyze
from smsbot.store.models import (
    DEFAULT_WORKSPACE,
    TIMER_SCHEDULED,
    Direction,
    EventState,
    OutboxState,
    TimerState,
    conversations_t,
    events_t,
    messages_t,
    new_id,
    new_token,
    opt_outs_t,
    timers_t,
)
from smsbot.store.prepared import Prepared
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


@dataclasses.dataclass(frozen=True, slots=True)
class NewConversation:
    """A conversation row the step's own transaction inserted, as write_effects reads it: no
    timer can name it yet, so there is none to cancel. `written`: inserted as the step leaves
    it (new_conversation_row), so there is no UPDATE to make either."""

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


@dataclasses.dataclass(frozen=True, slots=True)
class StepOutcome:
    """What one committed step did; passed to the after-commit listeners."""

    key: ConversationKey
    event_id: int
    queued_messages: int
    timers_changed: bool
    handed: Claimed | None = None  # the first reply, claimed for its sender (handover.py)


# Prepared (store/prepared.py): compiled once, run through sqlite3's executemany on SQLite.
_UPDATE_CONVERSATION = Prepared(
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
_FINISH_EVENT = Prepared(
    update(events_t)
    .where(events_t.c.id == bindparam("b_id"))
    .values(state=bindparam("b_state"), processed_at=utc_param("b_now"))
)
_CANCEL_ALL_TIMERS = Prepared(
    update(timers_t)
    .where(timers_t.c.conversation_id == bindparam("b_convo"), TIMER_SCHEDULED)
    .values(state=TimerState.CANCELLED.value)
)
_CANCEL_TIMER = Prepared(
    update(timers_t)
    .where(
        timers_t.c.conversation_id == bindparam("b_convo"),
        timers_t.c.name == bindparam("b_name"),
        TIMER_SCHEDULED,
    )
    .values(state=TimerState.CANCELLED.value)
)
# A timer set again under the same name replaces the scheduled one (new token, new due time).
_RESET = ("workspace", "kind", "token", "due_at", "payload", "state", "created_at", "fired_at")
_UPSERT_TIMER = Prepared(insert_on_conflict(timers_t, ["conversation_id", "name"], update=_RESET))
_INSERT_MESSAGES = Prepared(messages_t.insert())
_OPT_OUT = insert_on_conflict(opt_outs_t, ["virtual_number", "phone"])


def conversation_values(item: Stepped, now: dt.datetime) -> dict[str, Any]:
    """The conversation row after this step, as executemany parameters."""
    c, r = item.convo, item.result
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


def new_conversation_row(item: Stepped, now: dt.datetime) -> dict[str, Any]:
    """The row of a conversation that did not exist, as this step leaves it (to INSERT)."""
    v = conversation_values(item, now)
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


def write_effects(
    conn: Connection, items: list[Stepped], now: dt.datetime, *, events_done: bool = False
) -> list[StepOutcome]:
    """Write every item's state, messages, opt-out change and timers; mark its event done
    (`events_done`: they were inserted done)."""
    if not items:
        return []
    updates = [
        conversation_values(i, now)
        for i in items
        if not (isinstance(i.convo, NewConversation) and i.convo.written)
    ]
    if updates:
        _UPDATE_CONVERSATION.many(conn, updates)
    history.record(conn, items, now)
    messages: list[dict[str, Any]] = []
    offered: list[tuple[Stepped, dict[str, Any]]] = []
    steps: list[tuple[Stepped, int, bool]] = []
    for item in items:
        key, event, result = item.snapshot.key, item.event, item.result
        if event.kind is EventKind.INBOUND:
            messages.append(_inbound_row(item.workspace, key, event))
        opted_out = _apply_opt_out(conn, key, item, now)
        queued = 0
        for n, reply in enumerate(result.replies):
            # Opt-out is enforced here as well as in the router: after STOP only the
            # compliance confirmation is ever queued, whatever a flow asks for.
            suppressed = opted_out and reply.origin is not Origin.COMPLIANCE
            queued += not suppressed
            # The sender goes by (send_after, created_at): a microsecond apart, one step's
            # replies keep the order the flow queued them in.
            created = now + dt.timedelta(microseconds=n)
            send_after = reply.send_after or now
            row = _reply_row(
                item.workspace, key, event, reply.text, reply.origin, send_after, suppressed,
                created,
            )  # fmt: skip
            messages.append(row)
            if n == 0 and item.lease is not None and not suppressed:
                offered.append((item, row))
        timers = bool(result.timers or result.cancel_timers or result.cancel_all_timers)
        timers |= result.contact is not None  # its campaign fires may move (pipeline/campaigns)
        steps.append((item, queued, timers))
    handed = handover.take(conn, offered, now)
    outcomes = [
        StepOutcome(i.snapshot.key, i.event.id, queued, timers, handed.get(i.event.id))
        for i, queued, timers in steps
    ]
    if messages:
        _INSERT_MESSAGES.many(conn, messages)
    _write_timers(conn, items, now)
    if not events_done:
        finish_events(conn, [i.event.id for i in items], EventState.DONE, now)
    return outcomes


def finish_events(
    conn: Connection, event_ids: list[int], state: EventState, now: dt.datetime
) -> None:
    """Mark events finished (done, ignored, …) in one executemany."""
    if event_ids:
        _FINISH_EVENT.many(
            conn, [{"b_id": i, "b_state": state.value, "b_now": now} for i in event_ids]
        )


def _inbound_row(workspace: str, key: ConversationKey, event: DispatchEvent) -> dict[str, Any]:
    body = str(event.payload.get("body", ""))
    sms = analyze(body)
    return _message(
        workspace,
        key,
        event,
        body,
        Direction.INBOUND,
        None,
        None,
        None,
        sms,
        event.received_at,
        provider_message_id=event.payload.get("message_id"),
    )


def _reply_row(
    workspace: str,
    key: ConversationKey,
    event: DispatchEvent,
    text: str,
    origin: Origin,
    send_after: dt.datetime | None,
    suppressed: bool,
    now: dt.datetime,
) -> dict[str, Any]:
    status = DeliveryStatus.SUPPRESSED if suppressed else DeliveryStatus.QUEUED
    outbox = OutboxState.DONE if suppressed else OutboxState.PENDING
    return _message(
        workspace,
        key,
        event,
        text,
        Direction.OUTBOUND,
        origin,
        status,
        outbox,
        analyze(text),
        now,
        send_after=send_after or now,
        status_at=now,
    )


def _message(
    workspace: str,
    key: ConversationKey,
    event: DispatchEvent,
    body: str,
    direction: Direction,
    origin: Origin | None,
    status: DeliveryStatus | None,
    outbox: OutboxState | None,
    sms: Any,
    created_at: dt.datetime,
    *,
    provider_message_id: str | None = None,
    send_after: dt.datetime | None = None,
    status_at: dt.datetime | None = None,
) -> dict[str, Any]:
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
        "event_id": event.id,
        "created_at": created_at,
        "status_at": status_at,
        "attempts": 0,
        "lease_until": None,
    }


def _apply_opt_out(conn: Connection, key: ConversationKey, item: Stepped, now: dt.datetime) -> bool:
    result = item.result
    if result.opt_out is True:
        conn.execute(
            _OPT_OUT.values(
                workspace=item.workspace,
                virtual_number=key.virtual_number,
                phone=key.phone,
                keyword=(result.opt_keyword or "STOP")[:50],
                created_at=now,
            )
        )
        return True
    if result.opt_out is False:
        conn.execute(
            delete(opt_outs_t).where(
                and_(
                    opt_outs_t.c.virtual_number == key.virtual_number,
                    opt_outs_t.c.phone == key.phone,
                )
            )
        )
        return False
    return item.snapshot.opted_out


def _write_timers(conn: Connection, items: list[Stepped], now: dt.datetime) -> None:
    old = [i for i in items if not isinstance(i.convo, NewConversation)]  # may have timers
    cancel_all = [{"b_convo": i.convo.id} for i in old if i.result.cancel_all_timers]
    cancel = [
        {"b_convo": i.convo.id, "b_name": name} for i in old for name in i.result.cancel_timers
    ]
    latest = {(i.convo.id, t.name): (i, t) for i in items for t in i.result.timers}
    upserts = [
        {
            "conversation_id": i.convo.id,
            "workspace": i.workspace,
            "name": t.name,
            "kind": t.kind,
            "token": new_token(),
            "due_at": t.due_at,
            "payload": dict(t.payload),
            "state": TimerState.SCHEDULED.value,
            "created_at": now,
            "fired_at": None,
        }
        for i, t in latest.values()  # the same name twice: the last one wins
    ]
    if cancel_all:
        _CANCEL_ALL_TIMERS.many(conn, cancel_all)
    if cancel:
        _CANCEL_TIMER.many(conn, cancel)
    if upserts:
        _UPSERT_TIMER.many(conn, upserts)
