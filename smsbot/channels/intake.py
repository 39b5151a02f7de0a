"""What every channel's webhook route shares: store entries durably, then answer.

Each provider's route (channels/<provider>/routes.py) reads its body with
smsbot.app.server.bodies.read_body, verifies and parses its own format into InboxEntry rows; this
module stores them and answers. No flow work happens here.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from smsbot.app.server.keys import BOT
from smsbot.app.server.responses import problem
from smsbot.channels import (
    DeliveryReceipt,
)
from smsbot.engine.contract import EventKind
from smsbot.pipeline.inbox import AcceptOutcome, InboxEntry
from smsbot.store.models import DEFAULT_WORKSPACE

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
unowned_log = _EveryFewSeconds(60.0)  # numbers no workspace owns: one line a minute at most

UNOWNED = "unowned"  # the result of an inbound SMS for a number no workspace owns


def labels(source: str, result: str, workspace: str | None = None) -> dict[str, str]:
    """The labels of smsbot_webhooks_total: the workspace only when the event has one."""
    found = {"source": source, "result": result}
    if workspace is not None:
        found["workspace"] = workspace
    return found


def _result(entry: InboxEntry, outcome: AcceptOutcome) -> str:
    # An inbound SMS no workspace owns is acknowledged and kept, but never runs: say so.
    if outcome is AcceptOutcome.NEW and entry.workspace is None and entry.kind is EventKind.INBOUND:
        return UNOWNED
    return outcome.value


async def store_entries(
    request: web.Request, entries: list[InboxEntry], source: str
) -> web.Response:
    """Store `entries` durably, then answer: 2xx only once stored, 503 while storage is down."""
    bot = request.app[BOT]
    try:
        # Well inside the provider's 45 s: a commit that lands after we gave up only makes the
        # provider's retry a harmless duplicate.
        if len(entries) == 1:
            outcomes = [await bot.inbox.accept(entries[0], give_up_after=STORE_TIMEOUT)]
        else:
            async with asyncio.timeout(STORE_TIMEOUT):
                outcomes = await bot.inbox.accept_many(entries)
    except Exception as exc:  # storage is down: 503 makes the provider retry later
        if _outage_log.ready(bot.clock.now().timestamp()):
            log.error("could not store webhooks: %s: %s", type(exc).__name__, exc)
        shared = {e.workspace for e in entries}
        workspace = shared.pop() if len(shared) == 1 else None
        bot.metrics.inc("smsbot_webhooks_total", **labels(source, "unavailable", workspace))
        return problem(503, "storage unavailable; retry later")
    bot.dispatcher.notify()
    results = [_result(e, o) for e, o in zip(entries, outcomes, strict=True)]
    for entry, result in zip(entries, results, strict=True):
        bot.metrics.inc("smsbot_webhooks_total", **labels(source, result, entry.workspace))
    if len(outcomes) == 1:
        return web.json_response({"status": results[0]})
    new = sum(o is AcceptOutcome.NEW for o in outcomes)
    return web.json_response({"status": "accepted", "new": new, "received": len(outcomes)})


def receipt_entry(
    source: str,
    r: DeliveryReceipt,
    event_id: str,
    digest: str | None = None,
    workspace: str | None = DEFAULT_WORKSPACE,
) -> InboxEntry:
    """The inbox row for one delivery receipt from `source`, sent by `workspace`'s account.

    A receipt applies only to a message of its workspace; None: any workspace's (a receipt
    several workspaces could have sent).
    """
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
        workspace=workspace,
    )
