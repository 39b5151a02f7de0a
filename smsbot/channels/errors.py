"""Errors a provider client raises, and how an HTTP answer maps onto them.

The hierarchy, so a caller sees at a glance what it can catch:

    ProviderError                    .status (int | None), .reason (str)
    ├── PermanentError               never retried: sending again cannot help
    │   ├── AuthenticationError      401 / 403: the API key is missing, wrong or not allowed
    │   └── ProviderValidationError  400 / 422: the provider rejected the request; .reason says why
    └── TransientError               5xx, 408, timeout, connection error: retried with backoff
        └── RateLimitedError         429; .retry_after (seconds) when the provider said how long

Any other unexpected 4xx (or a 3xx, which an API should never send) is a plain PermanentError.
No error's str() or .reason contains the API key: clients redact it before raising.
"""

from __future__ import annotations

import datetime as dt
import email.utils

REASON_MAX_CHARS = 500


class ProviderError(Exception):
    """A provider call failed; `status` is the HTTP status when there was one."""

    def __init__(self, reason: str, *, status: int | None = None) -> None:
        self.reason = reason
        self.status = status
        super().__init__(f"HTTP {status}: {reason}" if status is not None else reason)


class PermanentError(ProviderError):
    """The provider will refuse this request however often it is sent."""


class AuthenticationError(PermanentError):
    """The provider refused the API key (401 / 403)."""


class ProviderValidationError(PermanentError):
    """The provider rejected the request's content (400 / 422); `reason` is its explanation."""


class TransientError(ProviderError):
    """A failure that may pass: server error, timeout, broken connection."""


class RateLimitedError(TransientError):
    """The provider asked us to slow down (429)."""

    def __init__(
        self, reason: str, *, status: int | None = 429, retry_after: float | None = None
    ) -> None:
        super().__init__(reason, status=status)
        self.retry_after = retry_after


def error_for_status(status: int, reason: str, retry_after: float | None = None) -> ProviderError:
    """Return the error a non-2xx HTTP `status` stands for, with `reason` cut to 500 chars."""
    reason = reason[:REASON_MAX_CHARS] or f"HTTP {status} with an empty body"
    if status in (401, 403):
        return AuthenticationError(reason, status=status)
    if status in (400, 422):
        return ProviderValidationError(reason, status=status)
    if status == 429:
        return RateLimitedError(reason, status=status, retry_after=retry_after)
    # 408 means the server gave up waiting for our request, so it never acted on it: safe to resend.
    if status >= 500 or status == 408:
        return TransientError(reason, status=status)
    return PermanentError(reason, status=status)


def parse_retry_after(value: str | None, now: dt.datetime) -> float | None:
    """Return seconds to wait from a Retry-After header (seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None  # unreadable: the caller falls back to its own backoff
        if when.tzinfo is None:  # RFC 9110 dates are GMT; the parser leaves "-0000" naive
            when = when.replace(tzinfo=dt.UTC)
        seconds = (when - now).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)
