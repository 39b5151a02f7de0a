"""POST /webhooks/divergent: Divergent Connect's signed webhooks (receipts and inbound SMS).

Each workspace (smsbot/workspaces.py) signs with its own secret(s). A webhook is verified
against every workspace's: those whose secret matches are the signers (with
--insecure-no-signature, every workspace). The event belongs to the workspace its `workspaceId`
names when one is configured, else (an inbound SMS) to the owner of its inbound number; that
workspace must be a signer, or the answer is 401. An inbound SMS for a number no workspace owns
(or not the workspace its account belongs to) is acknowledged, stored UNMATCHED with no
workspace for reconciliation and counted, and never reaches a flow. A receipt belongs to the
workspace its workspaceId names, else to its only signer, else to none known.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

from aiohttp import web

from smsbot.app.server.bodies import read_body
from smsbot.app.server.keys import BOT
from smsbot.app.server.responses import problem
from smsbot.channels.divergent.signature import SignatureError, signers
from smsbot.channels.divergent.webhook import parse_envelope
from smsbot.channels.events import DeliveryReceipt, InboundSms, UnknownEvent, WebhookFormatError
from smsbot.channels.intake import UNOWNED, labels, receipt_entry, store_entries, unowned_log
from smsbot.config import Settings
from smsbot.engine.contract import EventKind
from smsbot.pipeline.inbox import InboxEntry
from smsbot.sms.phone import PhoneNumberError, normalize
from smsbot.store.models import EventState
from smsbot.workspaces import Workspace

log = logging.getLogger(__name__)

SOURCE = "divergent"
ANOTHER_WORKSPACE = (
    "X-Webhook-Signature is another workspace's: sign with the secret of the workspace the"
    " event's workspaceId or inbound number belongs to"
)


class _RefusedError(Exception):
    """The event belongs to a workspace whose secret did not sign it."""


async def divergent_webhook(request: web.Request) -> web.Response:
    """POST /webhooks/divergent: a delivery receipt (eventType 1) or an inbound SMS (2)."""
    bot = request.app[BOT]
    settings = bot.settings
    body = await read_body(request)
    if settings.insecure_no_signature:
        verified = list(settings.workspaces)
    else:
        try:
            verified = signers(
                body=body,
                timestamp=request.headers.get("X-Webhook-Timestamp"),
                signature=request.headers.get("X-Webhook-Signature"),
                keys=[(w, [s.get() for s in w.webhook_secrets]) for w in settings.workspaces],
                now=bot.clock.now().timestamp(),
                tolerance_seconds=settings.webhook_tolerance_seconds,
            )
        except SignatureError as exc:
            bot.metrics.inc("smsbot_webhooks_total", **labels(SOURCE, "unauthorized"))
            return problem(401, exc.reason)
    try:
        event = parse_envelope(body)
        entry = _entry(event, body, settings, [w.name for w in verified])
    except (WebhookFormatError, PhoneNumberError) as exc:
        bot.metrics.inc("smsbot_webhooks_total", **labels(SOURCE, "bad_request"))
        return problem(400, getattr(exc, "reason", str(exc)))
    except _RefusedError:
        bot.metrics.inc("smsbot_webhooks_total", **labels(SOURCE, "unauthorized"))
        return problem(401, ANOTHER_WORKSPACE)
    if entry is None:
        log.info("ignoring webhook %s with unknown eventType", event.event_id)
        bot.metrics.inc("smsbot_webhooks_total", **labels(SOURCE, "ignored"))
        return web.json_response({"status": "ignored"})
    return await store_entries(request, [entry], SOURCE)


def _entry(
    event: InboundSms | DeliveryReceipt | UnknownEvent,
    body: bytes,
    settings: Settings,
    verified: list[str],
) -> InboxEntry | None:
    if isinstance(event, UnknownEvent):
        return None
    workspaces = settings.workspaces
    named = workspaces.by_provider_id(event.workspace_id)
    digest = hashlib.sha256(body).hexdigest()
    if isinstance(event, DeliveryReceipt):
        if named is not None:
            _check_signed(event.event_id, named.name, verified)
        sent_by = named.name if named is not None else verified[0] if len(verified) == 1 else None
        return receipt_entry(SOURCE, event, event.event_id or "", digest, workspace=sent_by)
    region = named.default_region if named is not None else settings.default_region
    try:
        virtual_number = normalize(event.inbound_number, region)
    except PhoneNumberError as exc:
        raise WebhookFormatError(f"data.inboundNumber: {exc}") from None
    owner = workspaces.owner(virtual_number)
    belongs = named or owner
    if belongs is not None:
        _check_signed(event.event_id, belongs.name, verified)
    if owner is not None:
        region = owner.default_region
    try:
        phone = normalize(event.sender, region)
    except PhoneNumberError as exc:
        raise WebhookFormatError(f"data.sender: {exc}") from None
    payload: dict[str, Any] = {
        "body": event.body,
        "message_id": event.message_id,
        "received_at": event.received_at.isoformat() if event.received_at else None,
    }
    workspace: str | None = None
    state = EventState.UNMATCHED
    if owner is not None and (named is None or named.name == owner.name):
        workspace, state = owner.name, EventState.PENDING
    else:
        _log_unowned(event.event_id, named, owner)
    return InboxEntry(
        source=SOURCE,
        event_id=event.event_id,
        kind=EventKind.INBOUND,
        payload=payload,
        virtual_number=virtual_number,
        phone=phone,
        body_sha256=digest,
        workspace=workspace,
        state=state,
    )


def _check_signed(event_id: str | None, workspace: str, verified: list[str]) -> None:
    if workspace not in verified:
        log.warning(
            "webhook %s belongs to workspace %s but was signed with the secret of %s; refused",
            event_id,
            workspace,
            ", ".join(verified),
        )
        raise _RefusedError


def _log_unowned(event_id: str, named: Workspace | None, owner: Workspace | None) -> None:
    # No number in the line (docs/deployment.md: no phone numbers in logs); the stored row has it.
    if not unowned_log.ready(time.monotonic()):
        return
    if named is not None and owner is not None:
        log.warning(
            "inbound SMS %s came through workspace %s's account to a number workspace %s owns:"
            " stored %s for reconciliation, not run; move the number to workspaces.%s.numbers",
            event_id, named.name, owner.name, UNOWNED, named.name,
        )  # fmt: skip
    elif named is not None:
        log.warning(
            "inbound SMS %s came through workspace %s's account to a number no workspace owns:"
            " stored %s for reconciliation, not run; add it to workspaces.%s.numbers",
            event_id, named.name, UNOWNED, named.name,
        )  # fmt: skip
    else:
        log.warning(
            "inbound SMS %s is for a number no workspace owns: stored %s for reconciliation,"
            " not run; add it to a workspace's numbers",
            event_id, UNOWNED,
        )  # fmt: skip


ROUTES = [web.post("/webhooks/divergent", divergent_webhook)]
