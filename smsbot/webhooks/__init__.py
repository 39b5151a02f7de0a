"""Parse and verify each provider's webhook format into typed events."""

from smsbot.webhooks.divergent import parse_envelope
from smsbot.webhooks.events import (
    DeliveryReceipt,
    InboundSms,
    UnknownEvent,
    WebhookEvent,
    WebhookFormatError,
)
from smsbot.webhooks.puresms import parse_receipts
from smsbot.webhooks.signature import SignatureError, parse_timestamp, sign, verify

__all__ = [
    "DeliveryReceipt",
    "InboundSms",
    "SignatureError",
    "UnknownEvent",
    "WebhookEvent",
    "WebhookFormatError",
    "parse_envelope",
    "parse_receipts",
    "parse_timestamp",
    "sign",
    "verify",
]
