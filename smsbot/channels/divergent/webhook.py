"""Divergent Connect webhooks: one envelope {id, timestamp, workspaceId, eventType, data}."""

from __future__ import annotations

import datetime as dt

from smsbot.channels.divergent.status import DIVERGENT_STATUSES
from smsbot.channels.events import (
    DeliveryReceipt,
    Fields,
    InboundSms,
    UnknownEvent,
    WebhookEvent,
    WebhookFormatError,
    load_json,
)
from smsbot.sms.status import DeliveryStatus

DELIVERY_RECEIPT = 1
INBOUND_SMS = 2

MAX_ID_CHARS = 200
MAX_NUMBER_CHARS = 32
MAX_BODY_CHARS = 10_000
MAX_STATUS_CHARS = 64
_EVENT_TYPE_RANGE = range(-(2**31), 2**31)  # the provider's enum is a .NET int

# The reference capitalises statuses ("Delivered"); matching any case costs nothing.
_STATUS_BY_FOLDED = {name.casefold(): status for name, status in DIVERGENT_STATUSES.items()}


def parse_envelope(body: bytes) -> WebhookEvent:
    """Parse one Divergent Connect webhook body; raise WebhookFormatError if it is malformed."""
    value = load_json(body)
    if not isinstance(value, dict):
        raise WebhookFormatError("body must be a JSON object")
    envelope = Fields(value)
    event_id = envelope.text("id", max_chars=MAX_ID_CHARS)
    event_type = _event_type(envelope)
    occurred_at = envelope.optional_datetime("timestamp")
    workspace_id = envelope.optional_text("workspaceId", max_chars=MAX_ID_CHARS)
    if event_type not in (DELIVERY_RECEIPT, INBOUND_SMS):
        return UnknownEvent(event_id=event_id, event_type=event_type)

    if "data" not in value:
        raise WebhookFormatError("data is missing")
    if not isinstance(value["data"], dict):
        raise WebhookFormatError("data must be an object")
    data = Fields(value["data"], "data")
    if event_type == INBOUND_SMS:
        return InboundSms(
            event_id=event_id,
            message_id=data.optional_ref("messageId", max_chars=MAX_ID_CHARS),
            inbound_number=data.text("inboundNumber", max_chars=MAX_NUMBER_CHARS),
            sender=data.text("sender", max_chars=MAX_NUMBER_CHARS),
            body=data.text("body", max_chars=MAX_BODY_CHARS, allow_empty=True),
            received_at=data.optional_datetime("receivedAt"),
            occurred_at=occurred_at,
            workspace_id=workspace_id,
        )
    return _delivery_receipt(
        data, event_id=event_id, envelope_time=occurred_at, workspace_id=workspace_id
    )


def _event_type(envelope: Fields) -> int:
    if not envelope.has("eventType"):
        raise WebhookFormatError("eventType is missing")
    raw = envelope.raw("eventType")
    # bool is an int in Python, and 2.0 or "2" would mean someone else's format: refuse them
    if not isinstance(raw, int) or isinstance(raw, bool):
        raise WebhookFormatError("eventType must be an integer")
    if raw not in _EVENT_TYPE_RANGE:
        raise WebhookFormatError("eventType is out of range")
    return raw


def _delivery_receipt(
    data: Fields, *, event_id: str, envelope_time: dt.datetime | None, workspace_id: str | None
) -> DeliveryReceipt:
    raw_status = data.text("deliveryStatus", max_chars=MAX_STATUS_CHARS)
    # A status we do not know yet is still a receipt about a real message: keep it as UNKNOWN
    # (not final, so a later known status can replace it) instead of refusing the webhook.
    status = _STATUS_BY_FOLDED.get(raw_status.strip().casefold(), DeliveryStatus.UNKNOWN)
    message_id = data.optional_ref("messageId", max_chars=MAX_ID_CHARS)
    client_reference = data.optional_ref("clientReference", max_chars=MAX_ID_CHARS)
    if message_id is None and client_reference is None:
        raise WebhookFormatError("data needs a messageId or a clientReference")
    delivered_at = data.optional_datetime("deliveredAt")
    processed_at = data.optional_datetime("processedAt")
    return DeliveryReceipt(
        event_id=event_id,
        provider_message_id=message_id,
        client_reference=client_reference,
        status=status,
        raw_status=raw_status,
        error_code=_error_code(data),
        occurred_at=delivered_at or processed_at or envelope_time,
        workspace_id=workspace_id,
    )


def _error_code(data: Fields) -> str | None:
    raw = data.raw("errorCode")
    if isinstance(raw, bool) or not isinstance(raw, int | str | None):
        raise WebhookFormatError("data.errorCode must be a string, an integer or null")
    return data.optional_ref("errorCode", max_chars=MAX_ID_CHARS)
