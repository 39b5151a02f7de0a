"""The outbox sender: claims queued messages and hands them to the provider, once each.

A message is claimed (outbox `inflight`, with a lease) in one short transaction, sent outside
any transaction, and its outcome recorded in another. A process that dies mid-send leaves a
lapsed lease. A delivery receipt carrying the message's `clientReference` (our message id)
proves the provider has it, and it is never sent again; without one, it is sent again once the
lease and a grace period for late receipts (SMSBOT_RESEND_GRACE) have passed. Only a message
the provider accepted but never sent a receipt for within that grace can go twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    and_,
    case,
    exists,
    literal,
    or_,
    select,
    update,
)

from smsbot.channels.base import BulkOutcome, OutboundSms, SmsProvider
from smsbot.channels.errors import PermanentError, ProviderError, RateLimitedError
from smsbot.clock import Clock
from smsbot.engine.contract import Origin
from smsbot.pipeline.metrics import Metrics
from smsbot.pipeline.rate_limit import RateLimiter
from smsbot.pipeline.receipts import enqueue_send_failed
from smsbot.sms.status import DeliveryStatus
from smsbot.store.engine import Database
from smsbot.store.models import OutboxState, messages_t, opt_out_blocks
from smsbot.store.types import UTCDateTime

log = logging.getLogger(__name__)

# Answers to a person: the outbox's interactive lane (see Sender._due).
INTERACTIVE = (Origin.REPLY.value, Origin.COMPLIANCE.value)

SWEEP_EVERY = dt.timedelta(seconds=1)  # how often lapsed claims are looked for


@dataclasses.dataclass(frozen=True, slots=True)
class Claimed:
    """One outbound message claimed for sending."""

    id: str
    sender: str
    recipient: str
    body: str
    encoding: str
    attempts: int
    created_at: dt.datetime
    origin: str | None = None


class Sender:
    """Sends what the outbox holds: bulk calls when several are ready, retries with backoff."""

    def __init__(
        self,
        db: Database,
        provider: SmsProvider,
        clock: Clock,
        *,
        metrics: Metrics | None = None,
        batch_size: int = 500,
        rate_per_second: float = 10.0,
        lease_seconds: float = 30.0,
        resend_grace: dt.timedelta = dt.timedelta(minutes=2),
        poll_interval: float = 0.2,
        give_up_after: dt.timedelta = dt.timedelta(hours=24),
        on_event: Callable[[], None] | None = None,
    ) -> None:
        self.db = db
        self.provider = provider
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.batch_size = max(1, min(batch_size, provider.max_batch * 4))
        self.limiter = RateLimiter(rate_per_second)
        self.lease = dt.timedelta(seconds=lease_seconds)
        self.resend_grace = resend_grace
        self.poll_interval = poll_interval
        self.give_up_after = give_up_after
        self.on_event = on_event
        self._wakeup = asyncio.Event()
        self._stopping = False
        # After a 429 with Retry-After the provider wants silence from this account, not just
        # for the refused messages: nothing is claimed before this time.
        self._quiet_until: dt.datetime | None = None
        self._last_sweep: dt.datetime | None = None
        # Whether the next claim can skip the look first (see claim()).
        self._queued = False  # messages were queued in this process since the last claim
        self._full = False  # the last claim filled a batch: there may be more

    def notify(self) -> None:
        """Wake the sender: new messages were queued."""
        self._queued = True
        self._wakeup.set()

    def stop(self) -> None:
        """Ask run() to return after the batch in flight."""
        self._stopping = True
        self._wakeup.set()

    async def run(self) -> None:
        """Send until stop() is called."""
        self._stopping = False
        while not self._stopping:
            try:
                sent = await self.send_once()
            except Exception:  # database or provider trouble: log, back off, go on
                log.exception("sender round failed; retrying")
                sent = 0
                await asyncio.sleep(self.poll_interval * 5)
            if sent == 0 and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), self.poll_interval)
                self._wakeup.clear()

    async def send_until_idle(self, max_rounds: int = 10_000) -> int:
        """Send everything that is due now; return how many were handed over (tests, CLI)."""
        total = 0
        for _ in range(max_rounds):
            n = await self.send_once()
            if n == 0:
                return total
            total += n
        raise RuntimeError("send_until_idle: still sending after max_rounds")

    async def send_once(self) -> int:
        """Claim one batch, send it, record the outcome; return how many were claimed."""
        claimed = await self.claim()
        if not claimed:
            return 0
        messages = [
            OutboundSms(
                sender=c.sender,
                recipient=c.recipient,
                content=c.body,
                client_reference=c.id,
                unicode=c.encoding == "UCS-2",
            )
            for c in claimed
        ]
        by_ref = {c.id: c for c in claimed}
        if len(messages) == 1:
            outcomes = [await self._send_single(messages[0])]
        else:
            outcomes = await self.provider.send_many(messages)
        await self._record(outcomes, by_ref)
        return len(claimed)

    async def _send_single(self, message: OutboundSms) -> BulkOutcome:
        try:
            result = await self.provider.send(message)
        except ProviderError as exc:
            return BulkOutcome(messages=[message], error=exc)
        return BulkOutcome(messages=[message], batch_id=result.provider_message_id, message_count=1)

    async def claim(self) -> list[Claimed]:
        """Claim up to a batch of due messages, within each sender's rate limit."""
        now = self.clock.now()
        if self._quiet_until is not None and now < self._quiet_until:
            return []
        sweep = self._last_sweep is None or now - self._last_sweep >= SWEEP_EVERY
        # A claim is a write transaction (on SQLite, the one writer's lock). Straight to it when
        # messages were just queued here or the last claim filled a batch; otherwise, and for
        # the sweep, look first with a read, so that a round with nothing to send (or nothing
        # the rate limit lets through, and no lapsed claim to recover) writes nothing.
        if sweep:
            self._last_sweep = now
        if sweep or not (self._queued or self._full):
            senders, lapsed = await self.db.read(lambda conn: self._look(conn, now, sweep))
            sweep = lapsed  # the look was the sweep's check
            if not lapsed and not any(self.limiter.ready(s) for s in senders):
                if senders:
                    await asyncio.sleep(self.limiter.wait_hint())
                return []
        self._queued = False
        due, taken, blocked = await self.db.write(lambda conn: self._claim(conn, now, sweep))
        self._full = len(taken) >= self.batch_size
        if blocked:
            self.metrics.inc("smsbot_messages_suppressed_total", blocked)
        if not taken:
            if due:
                await asyncio.sleep(self.limiter.wait_hint())
            return []
        return [
            Claimed(
                r.id,
                r.virtual_number,
                r.phone,
                r.body,
                r.encoding,
                r.attempts + 1,
                r.created_at,
                r.origin,
            )
            for r in taken
        ]

    def _look(self, conn: Connection, now: dt.datetime, sweep: bool) -> tuple[set[str], bool]:
        """In a read: the senders of the messages a claim would take now; any lapsed claim?"""
        senders = {vn for (vn,) in conn.execute(self._due(now, messages_t.c.virtual_number))}
        lapsed = select(messages_t.c.id).where(self._lapsed(now)).limit(1)
        return senders, sweep and conn.execute(lapsed).first() is not None

    def _due(
        self,
        now: dt.datetime,
        *columns: ColumnElement[Any],
        interactive: bool = False,
        limit: int | None = None,
    ) -> Select[Any]:
        """The messages a claim takes, oldest first: due, and none to the same phone in flight.

        `interactive`: only answers to a person (replies, STOP/START/HELP) that are the oldest
        pending message of their conversation, so the lane never reorders a conversation.
        """
        m = messages_t
        # One send at a time per conversation, across processes: a message waits while
        # another to the same phone from the same number is in flight. So a reply claimed
        # just before a STOP reaches the provider before the STOP's confirmation, never after.
        other = m.alias("other")
        in_flight = exists().where(
            and_(
                other.c.virtual_number == m.c.virtual_number,
                other.c.phone == m.c.phone,
                other.c.outbox == OutboxState.INFLIGHT.value,
                other.c.lease_until >= now,
            )
        )
        query = select(*columns).where(
            m.c.outbox == OutboxState.PENDING.value, m.c.send_after <= now, ~in_flight
        )
        if interactive:
            older = m.alias("older")
            query = query.where(
                m.c.origin.in_(INTERACTIVE),  # on ix_messages_lane, past any bulk backlog
                ~exists().where(
                    and_(
                        older.c.virtual_number == m.c.virtual_number,
                        older.c.phone == m.c.phone,
                        older.c.outbox == OutboxState.PENDING.value,
                        older.c.id != m.c.id,
                        # written earlier, or in the same instant and not an answer itself
                        # (one step's messages share a time): left to the send-order lane
                        or_(
                            older.c.created_at < m.c.created_at,
                            and_(
                                older.c.created_at == m.c.created_at,
                                older.c.origin.not_in(INTERACTIVE),
                            ),
                        ),
                    )
                ),
            )
        return query.order_by(m.c.send_after, m.c.created_at).limit(limit or self.batch_size)

    def _claim(self, conn: Connection, now: dt.datetime, sweep: bool) -> tuple[int, list[Any], int]:
        """In the claim's transaction: (how many were due, the rows taken, how many blocked)."""
        m = messages_t
        if sweep:
            self._recover_lapsed(conn, now)
        # a number's own STOP, and for an alphanumeric sender any of the phone's (opt_out_blocks)
        opted_out = exists().where(opt_out_blocks(m.c.virtual_number, m.c.phone))
        columns = (
            m.c.id,
            m.c.virtual_number,
            m.c.phone,
            m.c.body,
            m.c.encoding,
            m.c.attempts,
            m.c.created_at,
            m.c.origin,
            opted_out.label("opted_out"),
        )

        def run(query: Select[Any]) -> list[Any]:
            if self.db.is_postgres:
                query = query.with_for_update(of=m, skip_locked=True)
            return list(conn.execute(query).all())

        # Two lanes: answers to people first, up to half the batch, so a reply never waits
        # behind a campaign's backlog; then everything in send order, so bulk keeps moving.
        rows = run(self._due(now, *columns, interactive=True, limit=max(1, self.batch_size // 2)))
        if (room := self.batch_size - len(rows)) > 0:
            rest = self._due(now, *columns, limit=room)
            if rows:
                rest = rest.where(m.c.id.not_in([r.id for r in rows]))
            rows += run(rest)
        # Opt-out is checked as the message is claimed: only the STOP confirmation itself
        # goes to a phone that opted out; everything else is marked suppressed, never sent.
        blocked = {r.id for r in rows if r.opted_out and r.origin != Origin.COMPLIANCE.value}
        if blocked:
            conn.execute(
                update(m)
                .where(m.c.id.in_(blocked))
                .values(
                    outbox=OutboxState.DONE.value,
                    status=DeliveryStatus.SUPPRESSED.value,
                    status_at=now,
                )
            )
            rows = [r for r in rows if r.id not in blocked]
        taken = [r for r in rows if self.limiter.take(r.virtual_number)]
        if taken:
            conn.execute(
                update(m)
                .where(m.c.id.in_([r.id for r in taken]))
                .values(
                    outbox=OutboxState.INFLIGHT.value,
                    lease_until=now + self.lease,
                    attempts=m.c.attempts + 1,
                )
            )
        return len(rows), taken, len(blocked)

    async def _record(self, outcomes: Sequence[BulkOutcome], by_ref: dict[str, Claimed]) -> None:
        now = self.clock.now()
        sent: list[tuple[list[str], str | None]] = []
        failed: list[tuple[Claimed, str, dict[str, Any]]] = []
        for outcome in outcomes:
            ids = [msg.client_reference for msg in outcome.messages if msg.client_reference]
            if outcome.error is None:
                sent.append((ids, outcome.batch_id))
                self.metrics.inc("smsbot_messages_sent_total", len(ids))
                continue
            error = outcome.error
            reason = str(error)[:500]
            failed += [(by_ref[r], reason, self._after_error(by_ref[r], error, now)) for r in ids]
            log.warning("provider refused %d message(s): %s", len(ids), type(error).__name__)
        gave_up = await self.db.write(lambda conn: self._write_outcomes(conn, sent, failed, now))
        if gave_up:
            self.metrics.inc("smsbot_messages_failed_total", gave_up)
            if self.on_event is not None:
                self.on_event()

    def _write_outcomes(
        self,
        conn: Connection,
        sent: list[tuple[list[str], str | None]],
        failed: list[tuple[Claimed, str, dict[str, Any]]],
        now: dt.datetime,
    ) -> int:
        """Record each send's outcome; return how many messages failed for good."""
        m = messages_t
        # A receipt may have arrived before this answer: never move status back (nor wipe
        # the error it recorded; only an earlier attempt's error goes). One UPDATE does both.
        queued = m.c.status == DeliveryStatus.QUEUED.value
        for ids, batch_id in sent:
            conn.execute(
                update(m)
                .where(m.c.id.in_(ids))
                .values(
                    outbox=OutboxState.DONE.value,
                    sent_at=now,
                    batch_id=batch_id if len(ids) > 1 else None,
                    provider_message_id=batch_id if len(ids) == 1 else None,
                    status=case((queued, DeliveryStatus.ACCEPTED.value), else_=m.c.status),
                    status_at=case((queued, literal(now, UTCDateTime())), else_=m.c.status_at),
                    error=case((queued, None), else_=m.c.error),
                )
            )
        gave_up = 0
        for claimed, reason, values in failed:
            conn.execute(update(m).where(m.c.id == claimed.id).values(error=reason, **values))
            if values.get("status") == DeliveryStatus.FAILED.value:
                gave_up += 1
                # In this transaction: the flow hears of it exactly once, crash or not.
                enqueue_send_failed(conn, claimed, reason, now)
        return gave_up

    def _lapsed(self, now: dt.datetime) -> ColumnElement[bool]:
        """Claims whose process died (their lease lapsed) that _recover_lapsed settles now.

        If a receipt (matched by clientReference) has moved the status on, the provider has
        the message: it is done and must not go again. With no receipt we cannot tell whether
        the call got through, so it waits `resend_grace` for one (the provider retries
        receipts) before it is sent again.
        """
        m = messages_t
        return and_(
            m.c.outbox == OutboxState.INFLIGHT.value,
            m.c.lease_until < now,
            or_(
                m.c.status != DeliveryStatus.QUEUED.value,
                m.c.lease_until < now - self.resend_grace,
            ),
        )

    def _recover_lapsed(self, conn: Connection, now: dt.datetime) -> None:
        m = messages_t
        moved_on = m.c.status != DeliveryStatus.QUEUED.value
        conn.execute(
            update(m)
            .where(self._lapsed(now))
            .values(
                outbox=case((moved_on, OutboxState.DONE.value), else_=OutboxState.PENDING.value)
            )
        )

    def _after_error(self, c: Claimed, error: ProviderError, now: dt.datetime) -> dict[str, Any]:
        give_up = now - c.created_at > self.give_up_after
        if isinstance(error, PermanentError) or give_up:
            return {
                "outbox": OutboxState.DONE.value,
                "status": DeliveryStatus.FAILED.value,
                "status_at": now,
            }
        if isinstance(error, RateLimitedError) and error.retry_after is not None:
            delay = dt.timedelta(seconds=error.retry_after)
            until = now + delay
            self._quiet_until = max(self._quiet_until or until, until)
        else:
            delay = dt.timedelta(seconds=min(60.0, 2.0 ** min(c.attempts, 6)))
        self.metrics.inc("smsbot_send_retries_total")
        return {"outbox": OutboxState.PENDING.value, "send_after": now + delay}
