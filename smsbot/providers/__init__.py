"""Provider clients: Divergent Connect, legacy PureSMS v1, behind one small interface."""

from smsbot.providers.base import BulkOutcome, OutboundSms, SendResult, SmsProvider
from smsbot.providers.divergent import DivergentClient
from smsbot.providers.errors import (
    AuthenticationError,
    PermanentError,
    ProviderError,
    ProviderValidationError,
    RateLimitedError,
    TransientError,
)
from smsbot.providers.puresms import PureSmsClient
from smsbot.providers.retry import RetryPolicy

__all__ = [
    "AuthenticationError",
    "BulkOutcome",
    "DivergentClient",
    "OutboundSms",
    "PermanentError",
    "ProviderError",
    "ProviderValidationError",
    "PureSmsClient",
    "RateLimitedError",
    "RetryPolicy",
    "SendResult",
    "SmsProvider",
    "TransientError",
]
