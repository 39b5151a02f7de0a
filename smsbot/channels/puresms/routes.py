"""POST /webhooks/puresms/{token}: the legacy PureSMS v1 API's batched delivery receipts."""

from __future__ import annotations

import hashlib

from aiohttp import web

from smsbot.app.server.bodies import read_body
from smsbot.app.server.keys import BOT
from smsbot.app.server.responses import problem
from smsbot.channels.events import DeliveryReceipt, WebhookFormatError
from smsbot.channels.intake import labels, receipt_entry, store_entries
from smsbot.channels.puresms.webhook import parse_receipts
from smsbot.store.models import DEFAULT_WORKSPACE

SOURCE = "puresms"


async def puresms_webhook(request: web.Request) -> web.Response:
    """POST /webhooks/puresms/{token}: legacy batched delivery receipts (statuses 0–9).

    The legacy API signs nothing, so the URL carries a secret token, and the token names the
    workspace (its receipts_token; SMSBOT_PURESMS_WEBHOOK_TOKEN for the default one): each
    workspace has its own URL, and its receipts apply only to its own messages.
    """
    bot = request.app[BOT]
    workspaces = bot.settings.workspaces
    given = request.match_info.get("token", "")
    if all(w.receipts_token is None for w in workspaces):
        return problem(
            404,
            "the legacy receipts route is off: set SMSBOT_PURESMS_WEBHOOK_TOKEN (or a"
            " workspace's receipts_token)",
        )
    workspace = workspaces.by_receipts_token(given)  # compared in constant time
    if workspace is None:
        bot.metrics.inc("smsbot_webhooks_total", **labels(SOURCE, "unauthorized"))
        return problem(
            401,
            "unknown receipts token; the URL must end with a workspace's receipts_token"
            " (SMSBOT_PURESMS_WEBHOOK_TOKEN for the default workspace)",
        )
    body = await read_body(request)
    try:
        receipts = parse_receipts(body)
    except WebhookFormatError as exc:
        bot.metrics.inc("smsbot_webhooks_total", **labels(SOURCE, "bad_request", workspace.name))
        return problem(400, exc.reason)
    entries = [
        receipt_entry(SOURCE, r, _receipt_id(r, workspace.name), workspace=workspace.name)
        for r in receipts
    ]
    return await store_entries(request, entries, SOURCE)


def _receipt_id(r: DeliveryReceipt, workspace: str) -> str:
    # Legacy receipts carry no event id; the same message reaching the same status is the
    # same receipt, so a redelivered batch is deduplicated like any other webhook. Two
    # accounts may use the same reference: a workspace's own are told apart by its name (the
    # default workspace's ids stay as they were before workspaces, so redeliveries still match).
    key = f"{r.provider_message_id}|{r.client_reference}|{r.raw_status}"
    if workspace != DEFAULT_WORKSPACE:
        key = f"{workspace}|{key}"
    return "pr_" + hashlib.sha256(key.encode()).hexdigest()[:40]


ROUTES = [web.post("/webhooks/puresms/{token}", puresms_webhook)]
