"""Provider channels: one folder per provider, behind one small interface.

Each folder keeps everything smsbot knows of one provider side by side: its API client, its
webhook format and routes, its signature scheme and its status map. `base.py` is the interface a
client implements, `errors.py` the error tree every client raises, `intake.py` what every
webhook route shares (read, store durably, answer), `sandbox/` a local fake of Divergent Connect.
"""

from smsbot.channels.base import BulkOutcome, OutboundSms, SendResult, SmsProvider
from smsbot.channels.divergent.client import DivergentClient
from smsbot.channels.divergent.signature import SignatureError, parse_timestamp, sign, verify
from smsbot.channels.divergent.webhook import parse_envelope
from smsbot.channels.errors import (
    AuthenticationError,
    PermanentError,
    ProviderError,
    ProviderValidationError,
    RateLimitedError,
    TransientError,
)
from smsbot.channels.events import (
    DeliveryReceipt,
    InboundSms,
    UnknownEvent,
    WebhookEvent,
    WebhookFormatError,
)
from smsbot.channels.puresms.client import PureSmsClient
from smsbot.channels.puresms.webhook import parse_receipts
from smsbot.channels.retry import RetryPolicy

__all__ = [
    "AuthenticationError",
    "BulkOutcome",
    "DeliveryReceipt",
    "DivergentClient",
    "InboundSms",
    "OutboundSms",
    "PermanentError",
    "ProviderError",
    "ProviderValidationError",
    "PureSmsClient",
    "RateLimitedError",
    "RetryPolicy",
    "SendResult",
    "SignatureError",
    "SmsProvider",
    "TransientError",
    "UnknownEvent",
    "WebhookEvent",
    "WebhookFormatError",
    "parse_envelope",
    "parse_receipts",
    "parse_timestamp",
    "sign",
    "verify",
]
