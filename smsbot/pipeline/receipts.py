"""Delivery receipts: match each to our message and move its status forward, never back.

A receipt whose workspace is known (the account that sent it: its webhook's workspaceId or
secret, its PureSMS URL) matches only that workspace's messages: two accounts' provider ids
may collide, and one client's receipt must never move another's message.

A receipt that moves a message to a delivery failure also tells the conversation's flow
(`on_send_failed`), like a permanent error at send time does: the SEND_FAILED inbox event is
written in the same transaction as the status, so the hook is neither lost nor doubled.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from sqlalchemy import Connection, or_, select, update

from smsbot.clock import Clock
from smsbot.engine.contract import EventKind
from smsbot.pipeline.inbox import NEW_EVENT, InboxEntry, event_row
from smsbot.pipeline.metrics import Metrics
from smsbot.sms.status import DeliveryStatus
from smsbot.store.engine import Database
from smsbot.store.models import (
    DEFAULT_WORKSPACE,
    EVENT_PENDING,
    Direction,
    EventState,
    events_t,
    messages_t,
)
from smsbot.store.prepared import Prepared

log = logging.getLogger(__name__)

# Final statuses that mean the message never reached the phone through a delivery problem.
# Cancelled, deleted and skipped messages were stopped on purpose, so no flow is told.
DELIVERY_FAILURES = frozenset(
    {DeliveryStatus.FAILED, DeliveryStatus.EXPIRED, DeliveryStatus.REJECTED}
)


_PENDING = (
    select(events_t.c.id, events_t.c.payload, events_t.c.workspace)
    .where(
        EVENT_PENDING,
        events_t.c.kind == EventKind.RECEIPT.value,
    )
    .order_by(events_t.c.id)
)


_ANY_PENDING = Prepared(_PENDING.with_only_columns(events_t.c.id).limit(1))  # store/prepared.py


def _any_pending(conn: Connection) -> bool:
    return bool(_ANY_PENDING.all(conn))


async def apply_receipts(db: Database, clock: Clock, metrics: Metrics, limit: int = 500) -> int:
    """Apply up to `limit` pending receipts in one transaction; return how many were handled."""
    # Most dispatcher rounds find no receipt: look first with a read, so that such a round
    # takes no write transaction (on SQLite, the one writer's lock).
    if not await db.read(_any_pending):
        return 0
    now = clock.now()
    claim = _PENDING.limit(limit)
    if db.is_postgres:
        claim = claim.with_for_update(skip_locked=True)
    results = await db.write(lambda conn: _apply_all(conn, claim, now))
    for result, workspace in results:
        labels = {"result": result} | ({"workspace": workspace} if workspace else {})
        metrics.inc("smsbot_receipts_total", **labels)
    return len(results)


def _apply_all(conn: Connection, claim: Any, now: dt.datetime) -> list[tuple[str, str | None]]:
    results: list[tuple[str, str | None]] = []
    for event_id, payload, workspace in conn.execute(claim).all():
        values: dict[str, Any] = {"processed_at": now}
        try:
            new = DeliveryStatus(payload["status"])
        except (KeyError, TypeError, ValueError):
            # Only a direct write to the inbox can store this (the parsers map every status);
            # parked rather than raised, so one bad row cannot hold back every receipt after it.
            log.warning("receipt event %s has no known delivery status; parked", event_id)
            values.update(state=EventState.FAILED.value, last_error="no known delivery status")
            results.append(("invalid", workspace))
        else:
            matched = _apply_one(conn, payload, new, now, workspace)
            values["state"] = (EventState.DONE if matched else EventState.UNMATCHED).value
            if not matched:
                log.info(
                    "receipt event %s matches no message%s; kept for reconciliation",
                    event_id,
                    f" of workspace {workspace}" if workspace else "",
                )
            results.append(("matched" if matched else "unmatched", workspace))
        conn.execute(update(events_t).where(events_t.c.id == event_id).values(**values))
    return results


def _apply_one(
    conn: Connection,
    payload: dict[str, Any],
    new: DeliveryStatus,
    now: dt.datetime,
    workspace: str | None,
) -> bool:
    ref = payload.get("client_reference")
    provider_id = payload.get("provider_message_id")
    # clientReference is our message id when we sent it; fall back to the provider's id.
    conditions = []
    if ref:
        conditions += [messages_t.c.id == ref, messages_t.c.client_reference == ref]
    if provider_id:
        conditions.append(messages_t.c.provider_message_id == provider_id)
    if not conditions:
        return False
    m = messages_t
    row = (
        conn.execute(
            select(
                m.c.id,
                m.c.status,
                m.c.virtual_number.label("sender"),
                m.c.phone.label("recipient"),
                m.c.body,
                m.c.origin,
                m.c.created_at,
                m.c.workspace,
            )
            .where(
                m.c.direction == Direction.OUTBOUND.value,
                or_(*conditions),
                *([m.c.workspace == workspace] if workspace is not None else []),
            )
            .limit(1)
        )
    ).first()
    if row is None:
        return False
    current = DeliveryStatus(row.status) if row.status else DeliveryStatus.QUEUED
    if not current.can_become(new):
        return True
    values: dict[str, Any] = {"status": new.value, "status_at": now}
    if provider_id:
        values["provider_message_id"] = provider_id
    code = payload.get("error_code")
    if code:
        values["error"] = f"provider error code {code}"[:500]
    # Guarded by the status itself: of two receipts for one message applied at once (two
    # processes on PostgreSQL), only the one that still moves the status forward counts.
    earlier = [old.value for old in DeliveryStatus if old.can_become(new)]
    moved = conn.execute(
        update(m)
        .where(m.c.id == row.id, or_(m.c.status.in_(earlier), m.c.status.is_(None)))
        .values(**values)
        .returning(m.c.id)
    )
    if moved.first() is not None and new in DELIVERY_FAILURES:
        error = f"delivery failed: {new.value.capitalize()}"
        if code:
            error += f" (provider error code {code})"
        log.info("message %s: %s; telling its flow", row.id, error)
        enqueue_send_failed(conn, row, error[:500], now)
    return True


def enqueue_send_failed(conn: Connection, message: Any, error: str, now: dt.datetime) -> None:
    """Queue the SEND_FAILED event for the flow's `on_send_failed`, in the caller's transaction.

    `message` has the outbox's fields: id, sender, recipient, body, origin, created_at, and
    its workspace (the event's; `default` when the row has none). The event id is
    `send-failed:{message id}`, so a message fails a flow once, whether the provider refused
    it at send time or a receipt said so later.
    """
    payload = {
        "message_id": message.id,
        "error": error,
        "text": message.body,
        "origin": message.origin,
        "created_at": message.created_at.isoformat(),
    }
    entry = InboxEntry(
        source="internal",
        event_id=f"send-failed:{message.id}",
        kind=EventKind.SEND_FAILED,
        payload=payload,
        virtual_number=message.sender,
        phone=message.recipient,
        workspace=getattr(message, "workspace", None) or DEFAULT_WORKSPACE,
    )
    conn.execute(NEW_EVENT, [event_row(entry, now)])
