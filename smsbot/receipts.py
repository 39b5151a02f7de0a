"""Delivery receipts: match each to our message and move its status forward, never back."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import or_, select, update

from smsbot.clock import Clock
from smsbot.metrics import Metrics
from smsbot.status import DeliveryStatus
from smsbot.store.engine import Database
from smsbot.store.models import (
    Direction,
    EventKind,
    EventState,
    events_t,
    messages_t,
)

log = logging.getLogger(__name__)


async def apply_receipts(db: Database, clock: Clock, metrics: Metrics, limit: int = 500) -> int:
    """Apply up to `limit` pending receipts in one transaction; return how many were handled."""
    now = clock.now()
    claim = (
        select(events_t.c.id, events_t.c.payload)
        .where(
            events_t.c.state == EventState.PENDING.value,
            events_t.c.kind == EventKind.RECEIPT.value,
        )
        .order_by(events_t.c.id)
        .limit(limit)
    )
    if db.is_postgres:
        claim = claim.with_for_update(skip_locked=True)
    async with db.session() as s, s.begin():
        events = (await s.execute(claim)).all()
        for event_id, payload in events:
            matched = await _apply_one(s, payload, now)
            state = EventState.DONE if matched else EventState.UNMATCHED
            if not matched:
                log.info("receipt event %s matches no message; kept for reconciliation", event_id)
            await s.execute(
                update(events_t)
                .where(events_t.c.id == event_id)
                .values(state=state.value, processed_at=now)
            )
            metrics.inc("smsbot_receipts_total", result="matched" if matched else "unmatched")
    return len(events)


async def _apply_one(s: Any, payload: dict[str, Any], now: Any) -> bool:
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
    row = (
        await s.execute(
            select(messages_t.c.id, messages_t.c.status)
            .where(messages_t.c.direction == Direction.OUTBOUND.value, or_(*conditions))
            .limit(1)
        )
    ).first()
    if row is None:
        return False
    new = DeliveryStatus(payload["status"])
    current = DeliveryStatus(row.status) if row.status else DeliveryStatus.QUEUED
    if current.can_become(new):
        values: dict[str, Any] = {"status": new.value, "status_at": now}
        if provider_id:
            values["provider_message_id"] = provider_id
        if payload.get("error_code"):
            values["error"] = f"provider error code {payload['error_code']}"[:500]
        await s.execute(update(messages_t).where(messages_t.c.id == row.id).values(**values))
    return True
