"""POST /webhooks/puresms/{token}: the legacy PureSMS v1 API's batched delivery receipts."""

from __future__ import annotations

import hashlib
import hmac

from aiohttp import web

from smsbot.app.server.bodies import read_body
from smsbot.app.server.keys import BOT
from smsbot.app.server.responses import problem
from smsbot.channels.events import DeliveryReceipt, WebhookFormatError
from smsbot.channels.intake import receipt_entry, store_entries
from smsbot.channels.puresms.webhook import parse_receipts


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
    body = await read_body(request)
    try:
        receipts = parse_receipts(body)
    except WebhookFormatError as exc:
        bot.metrics.inc("smsbot_webhooks_total", source="puresms", result="bad_request")
        return problem(400, exc.reason)
    entries = [receipt_entry("puresms", r, _receipt_id(r)) for r in receipts]
    return await store_entries(request, entries, "puresms")


def _receipt_id(r: DeliveryReceipt) -> str:
    # Legacy receipts carry no event id; the same message reaching the same status is the
    # same receipt, so a redelivered batch is deduplicated like any other webhook.
    key = f"{r.provider_message_id}|{r.client_reference}|{r.raw_status}"
    return "pr_" + hashlib.sha256(key.encode()).hexdigest()[:40]


ROUTES = [web.post("/webhooks/puresms/{token}", puresms_webhook)]
