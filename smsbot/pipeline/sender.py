"""The outbox sender: claims queued messages and hands them to the provider, once each.

A message is claimed (outbox `inflight`, with a lease) in one short transaction, sent outside
any transaction, and its outcome recorded in another. A process that dies mid-send leaves a
lapsed lease. A delivery receipt carrying the message's `clientReference` (our message id)
proves the provider has it, and it is never sent again; without one, it is sent again once the
lease and a grace period for late receipts (SMSBOT_RESEND_GRACE) have passed. Only a message
the provider accepted but never sent a receipt for within that grace can go twice.

One Sender per workspace, each with its own provider client (its account), rate limits,
Retry-After quiet time and backoff: it claims only its workspace's messages, so one account's
outage, 429s or backlog never hold up another's (docs/workspaces.md).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from smsbot.channels.base import BulkOutcome, OutboundSms, SmsProvider
from smsbot.channels.errors import PermanentError, ProviderError, RateLimitedError
from smsbot.clock import Clock
from smsbot.pipeline.metrics import Metrics
from smsbot.pipeline.outbox import INTERACTIVE, Claimed, Failed, Outbox, Sent
from smsbot.pipeline.rate_limit import RateLimiter
from smsbot.sms.status import DeliveryStatus
from smsbot.store.engine import Database
from smsbot.store.models import DEFAULT_WORKSPACE, OutboxState

log = logging.getLogger(__name__)

__all__ = ["INTERACTIVE", "Claimed", "Sender"]

SWEEP_EVERY = dt.timedelta(seconds=1)  # how often lapsed claims are looked for


class Sender:
    """Sends what one workspace's outbox holds through its account: bulk calls when several are
    ready, retries with backoff."""

    def __init__(
        self,
        db: Database,
        provider: SmsProvider,
        clock: Clock,
        *,
        workspace: str = DEFAULT_WORKSPACE,
        metrics: Metrics | None = None,
        batch_size: int = 500,
        rate_per_second: float = 10.0,
        number_rates: Mapping[str, float] | None = None,
        account_rate: float | None = None,
        lease_seconds: float = 30.0,
        resend_grace: dt.timedelta = dt.timedelta(minutes=2),
        poll_interval: float = 0.2,
        give_up_after: dt.timedelta = dt.timedelta(hours=24),
        on_event: Callable[[], None] | None = None,
    ) -> None:
        self.db = db
        self.provider = provider
        self.clock = clock
        self.workspace = workspace
        self.metrics = metrics or Metrics()
        self.batch_size = max(1, min(batch_size, provider.max_batch * 4))
        self.limiter = RateLimiter(rate_per_second, rates=number_rates, account_rate=account_rate)
        # how claim() waits for the rate limit (tests pass one that returns at once)
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
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
        # Replies a step's transaction claimed for this sender (pipeline/handover.py), sent
        # before the next claim. Offered only while `handover` is on: run() turns it on.
        self.handover = False
        self._handed: collections.deque[Claimed] = collections.deque()

    @property
    def outbox(self) -> Outbox:
        """The SQL of this sender's claims, as its settings are now."""
        return Outbox(
            self.workspace, self.batch_size, self.lease, self.resend_grace, self.db.is_postgres
        )

    def notify(self) -> None:
        """Wake the sender: new messages were queued."""
        self._queued = True
        self._wakeup.set()

    def accepts(self, sender: str) -> bool:
        """Whether a step may hand this sender a reply from `sender` now; takes its token."""
        if not self.handover or self._stopping:
            return False
        if self._quiet_until is not None and self.clock.now() < self._quiet_until:
            return False
        return self.limiter.take(sender)

    def hand(self, claimed: Claimed) -> None:
        """Take a reply a step's transaction claimed for this sender; send it soon."""
        self._handed.append(claimed)
        self._wakeup.set()

    def stop(self) -> None:
        """Ask run() to return after the batch in flight."""
        self._stopping = True
        self._wakeup.set()

    async def run(self) -> None:
        """Send until stop() is called (one that came before run() ends it at once)."""
        self.handover = True
        try:
            while not self._stopping:
                try:
                    sent = await self.send_once()
                except Exception:  # database or provider trouble: log, back off, go on
                    log.exception("workspace %s: sender round failed; retrying", self.workspace)
                    sent = 0
                    await asyncio.sleep(self.poll_interval * 5)
                if sent == 0 and not self._stopping:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), self.poll_interval)
                    self._wakeup.clear()
        finally:
            self.handover = False
            await self._release_handed()
            self._stopping = False  # a later run() sends again

    async def _release_handed(self) -> None:
        """Stopping: replies handed over but not sent go back to the outbox, for any process
        (rather than waiting out their lease)."""
        if not self._handed:
            return
        ids = [c.id for c in self._handed]
        self._handed.clear()
        with contextlib.suppress(Exception):  # the database is away: the leases lapse instead
            await self.db.write(lambda conn: Outbox.release(conn, ids))

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
        claimed = self._take_handed() or await self.claim()
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

    def _take_handed(self) -> list[Claimed]:
        """Up to a batch of the replies handed over, oldest first."""
        taken: list[Claimed] = []
        while self._handed and len(taken) < self.batch_size:
            taken.append(self._handed.popleft())
        return taken

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
        outbox = self.outbox
        if sweep or not (self._queued or self._full):
            senders, lapsed = await self.db.read(lambda conn: outbox.look(conn, now, sweep))
            sweep = lapsed  # the look was the sweep's check
            if not lapsed and not any(self.limiter.ready(s) for s in senders):
                if senders:
                    await self.sleep(self.limiter.wait_hint(senders))
                return []
        self._queued = False
        due, taken, blocked = await self.db.write(
            lambda conn: outbox.claim(conn, now, sweep, self.limiter.take)
        )
        self._full = len(taken) >= self.batch_size
        if blocked:
            self.metrics.inc("smsbot_messages_suppressed_total", blocked, workspace=self.workspace)
        if not taken:
            if due:
                await self.sleep(self.limiter.wait_hint(due))
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
                self.workspace,
            )
            for r in taken
        ]

    async def _record(self, outcomes: Sequence[BulkOutcome], by_ref: dict[str, Claimed]) -> None:
        now = self.clock.now()
        sent: list[Sent] = []
        failed: list[Failed] = []
        for outcome in outcomes:
            ids = [msg.client_reference for msg in outcome.messages if msg.client_reference]
            if outcome.error is None:
                sent.append((ids, outcome.batch_id))
                self.metrics.inc("smsbot_messages_sent_total", len(ids), workspace=self.workspace)
                continue
            error = outcome.error
            reason = str(error)[:500]
            failed += [(by_ref[r], reason, self._after_error(by_ref[r], error, now)) for r in ids]
            log.warning(
                "workspace %s: provider refused %d message(s): %s",
                self.workspace,
                len(ids),
                type(error).__name__,
            )
        gave_up = await self.db.write(lambda conn: Outbox.write_outcomes(conn, sent, failed, now))
        if gave_up:
            self.metrics.inc("smsbot_messages_failed_total", gave_up, workspace=self.workspace)
            if self.on_event is not None:
                self.on_event()

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
        self.metrics.inc("smsbot_send_retries_total", workspace=self.workspace)
        return {"outbox": OutboxState.PENDING.value, "send_after": now + delay}
