"""Webhook intake: verify, parse, store durably, answer. No flow work happens here."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from typing import Any

from aiohttp import web

from smsbot.app.server.keys import BOT
from smsbot.app.server.responses import problem
from smsbot.channels import (
    DeliveryReceipt,
    InboundSms,
    SignatureError,
    UnknownEvent,
    WebhookFormatError,
    parse_envelope,
    parse_receipts,
    verify,
)
from smsbot.engine.contract import EventKind
from smsbot.pipeline.inbox import AcceptOutcome, InboxEntry
from smsbot.sms.phone import PhoneNumberError, normalize

log = logging.getLogger(__name__)

STORE_TIMEOUT = 5.0  # seconds: an outage, not a slow commit, takes longer


class _EveryFewSeconds:
    """Lets one log line through per interval: an outage must not write a line per request."""

    def __init__(self, interval: float = 5.0) -> None:
        self.interval = interval
        self._last = float("-inf")

    def ready(self, now: float) -> bool:
        if now - self._last < self.interval:
            return False
        self._last = now
        return True


_outage_log = _EveryFewSeconds()


async def read_body(request: web.Request, limit: int) -> bytes:
    """Read the raw body, refusing (413) anything over `limit` bytes before reading it all."""
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    return await request.read()  # the app's client_max_size enforces the limit when chunked


async def divergent_webhook(request: web.Request) -> web.Response:
    """POST /webhooks/divergent: a delivery receipt (eventType 1) or an inbound SMS (2)."""
    bot = request.app[BOT]
    settings = bot.settings
    body = await read_body(request, settings.max_body_bytes)
    if not settings.insecure_no_signature:
        try:
            verify(
                body=body,
                timestamp=request.headers.get("X-Webhook-Timestamp"),
                signature=request.headers.get("X-Webhook-Signature"),
                secrets=bot.webhook_secrets,
                now=bot.clock.now().timestamp(),
                tolerance_seconds=settings.webhook_tolerance_seconds,
            )
        except SignatureError as exc:
            bot.metrics.inc("smsbot_webhooks_total", source="divergent", result="unauthorized")
            return problem(401, exc.reason)
    try:
        event = parse_envelope(body)
        entry = _entry(event, body, settings.default_region)
    except (WebhookFormatError, PhoneNumberError) as exc:
        bot.metrics.inc("smsbot_webhooks_total", source="divergent", result="bad_request")
        return problem(400, getattr(exc, "reason", str(exc)))
    if entry is None:
        log.info("ignoring webhook %s with unknown eventType", event.event_id)
        bot.metrics.inc("smsbot_webhooks_total", source="divergent", result="ignored")
        return web.json_response({"status": "ignored"})
    return await _store(request, [entry], "divergent")


async def puresms_webhook(request: web.Request) -> web.Response:
    """POST /webhooks/puresms/{token}: legacy batched delivery receipts (statuses 0–9)."""
    bot = request.app[BOT]
    expected = bot.settings.puresms_webhook_token
    given = request.match_info.get("token", "")
    if expected is None:
        return problem(404, "the legacy receipts route is off: set SMSBOT_PURESMS_WEBHOOK_TOKEN")
    # The legacy API signs nothing, so the URL carries a secret token; compare in constant time.
    if not hmac.compare_digest(given.encode(), expected.get().encode()):
        bot.metrics.inc("smsbot_webhooks_total", source="puresms", result="unauthorized")
        return problem(
            401, "unknown receipts token; the URL must end with SMSBOT_PURESMS_WEBHOOK_TOKEN"
        )
    body = await read_body(request, bot.settings.max_body_bytes)
    try:
        receipts = parse_receipts(body)
    except WebhookFormatError as exc:
        bot.metrics.inc("smsbot_webhooks_total", source="puresms", result="bad_request")
        return problem(400, exc.reason)
    entries = [_receipt_entry("puresms", r, _receipt_id(r)) for r in receipts]
    return await _store(request, entries, "puresms")


async def _store(request: web.Request, entries: list[InboxEntry], source: str) -> web.Response:
    bot = request.app[BOT]
    try:
        # Well inside the provider's 45 s: a commit that lands after we gave up only makes the
        # provider's retry a harmless duplicate.
        async with asyncio.timeout(STORE_TIMEOUT):
            if len(entries) == 1:
                outcomes = [await bot.inbox.accept(entries[0])]
            else:
                outcomes = await bot.inbox.accept_many(entries)
    except Exception as exc:  # storage is down: 503 makes the provider retry later
        if _outage_log.ready(bot.clock.now().timestamp()):
            log.error("could not store webhooks: %s: %s", type(exc).__name__, exc)
        bot.metrics.inc("smsbot_webhooks_total", source=source, result="unavailable")
        return problem(503, "storage unavailable; retry later")
    bot.dispatcher.notify()
    for outcome in outcomes:
        bot.metrics.inc("smsbot_webhooks_total", source=source, result=outcome.value)
    if len(outcomes) == 1:
        return web.json_response({"status": outcomes[0].value})
    new = sum(o is AcceptOutcome.NEW for o in outcomes)
    return web.json_response({"status": "accepted", "new": new, "received": len(outcomes)})


def _entry(
    event: InboundSms | DeliveryReceipt | UnknownEvent, body: bytes, region: str
) -> InboxEntry | None:
    if isinstance(event, UnknownEvent):
        return None
    digest = hashlib.sha256(body).hexdigest()
    if isinstance(event, DeliveryReceipt):
        return _receipt_entry("divergent", event, event.event_id or "", digest)
    try:
        virtual_number = normalize(event.inbound_number, region)
    except PhoneNumberError as exc:
        raise WebhookFormatError(f"data.inboundNumber: {exc}") from None
    try:
        phone = normalize(event.sender, region)
    except PhoneNumberError as exc:
        raise WebhookFormatError(f"data.sender: {exc}") from None
    payload: dict[str, Any] = {
        "body": event.body,
        "message_id": event.message_id,
        "received_at": event.received_at.isoformat() if event.received_at else None,
    }
    return InboxEntry(
        source="divergent",
        event_id=event.event_id,
        kind=EventKind.INBOUND,
        payload=payload,
        virtual_number=virtual_number,
        phone=phone,
        body_sha256=digest,
    )


def _receipt_entry(
    source: str, r: DeliveryReceipt, event_id: str, digest: str | None = None
) -> InboxEntry:
    payload = {
        "client_reference": r.client_reference,
        "provider_message_id": r.provider_message_id,
        "status": r.status.value,
        "raw_status": r.raw_status,
        "error_code": r.error_code,
        "occurred_at": r.occurred_at.isoformat() if r.occurred_at else None,
    }
    return InboxEntry(
        source=source,
        event_id=event_id,
        kind=EventKind.RECEIPT,
        payload=payload,
        body_sha256=digest,
    )


def _receipt_id(r: DeliveryReceipt) -> str:
    # Legacy receipts carry no event id; the same message reaching the same status is the
    # same receipt, so a redelivered batch is deduplicated like any other webhook.
    key = f"{r.provider_message_id}|{r.client_reference}|{r.raw_status}"
    return "pr_" + hashlib.sha256(key.encode()).hexdigest()[:40]
