"""Webhook signatures: base64 HMAC-SHA256 of "{X-Webhook-Timestamp}.{raw body}"."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence

MAX_SIGNATURE_CHARS = 200


class SignatureError(Exception):
    """The request's signature headers are missing, malformed, stale or wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """Return the X-Webhook-Signature value the provider sends for this body."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return base64.b64encode(mac.digest()).decode("ascii")


def parse_timestamp(raw: str | None) -> int:
    """Return Unix seconds from the header, accepting only ASCII digits (no sign, dot or _)."""
    if raw is None or raw == "":
        raise SignatureError("missing X-Webhook-Timestamp header")
    # str.isdigit() accepts non-ASCII digits such as '١٢٣'; int() would too. We want 0-9 only.
    if len(raw) > 12 or not (raw.isascii() and raw.isdigit()):
        raise SignatureError("X-Webhook-Timestamp must be Unix seconds, digits only")
    return int(raw)


def verify(
    *,
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    secrets: Sequence[str],
    now: float,
    tolerance_seconds: int = 300,
) -> None:
    """Raise SignatureError unless `signature` signs `body` with one of `secrets` near `now`."""
    ts = parse_timestamp(timestamp)
    if not signature:
        raise SignatureError("missing X-Webhook-Signature header")
    if abs(now - ts) > tolerance_seconds:
        raise SignatureError("X-Webhook-Timestamp is outside the allowed window")
    if len(signature) > MAX_SIGNATURE_CHARS or not signature.isascii():
        raise SignatureError("X-Webhook-Signature is not base64")
    try:
        given = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("X-Webhook-Signature is not base64") from None
    assert timestamp is not None
    ok = False
    for secret in secrets:
        expected = hmac.new(
            secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256
        ).digest()
        # compare every secret, so timing does not reveal which one matched
        ok |= hmac.compare_digest(given, expected)
    if not ok:
        raise SignatureError("X-Webhook-Signature does not match")
