"""POST /webhooks/divergent: Divergent Connect's signed webhooks (receipts and inbound SMS)."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from aiohttp import web

from smsbot.app.server.bodies import read_body
from smsbot.app.server.keys import BOT
from smsbot.app.server.responses import problem
from smsbot.channels.divergent.signature import SignatureError, verify
from smsbot.channels.divergent.webhook import parse_envelope
from smsbot.channels.events import DeliveryReceipt, InboundSms, UnknownEvent, WebhookFormatError
from smsbot.channels.intake import receipt_entry, store_entries
from smsbot.engine.contract import EventKind
from smsbot.pipeline.inbox import InboxEntry
from smsbot.sms.phone import PhoneNumberError, normalize

log = logging.getLogger(__name__)


async def divergent_webhook(request: web.Request) -> web.Response:
    """POST /webhooks/divergent: a delivery receipt (eventType 1) or an inbound SMS (2)."""
    bot = request.app[BOT]
    settings = bot.settings
    body = await read_body(request)
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
    return await store_entries(request, [entry], "divergent")


def _entry(
    event: InboundSms | DeliveryReceipt | UnknownEvent, body: bytes, region: str
) -> InboxEntry | None:
    if isinstance(event, UnknownEvent):
        return None
    digest = hashlib.sha256(body).hexdigest()
    if isinstance(event, DeliveryReceipt):
        return receipt_entry("divergent", event, event.event_id or "", digest)
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


ROUTES = [web.post("/webhooks/divergent", divergent_webhook)]
