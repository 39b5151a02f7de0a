"""Webhook signatures: base64 HMAC-SHA256 of "{X-Webhook-Timestamp}.{raw body}"."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from typing import TypeVar

MAX_SIGNATURE_CHARS = 200

T = TypeVar("T")


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
    signers(
        body=body,
        timestamp=timestamp,
        signature=signature,
        keys=[(None, secrets)],
        now=now,
        tolerance_seconds=tolerance_seconds,
    )


def signers(
    *,
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    keys: Sequence[tuple[T, Sequence[str]]],
    now: float,
    tolerance_seconds: int = 300,
) -> list[T]:
    """The owners (of `keys`: owner and its secrets) whose secret signs `body` near `now`.

    Every secret is compared, so timing does not reveal which one matched; raises
    SignatureError when the headers are missing, malformed or stale, or no secret matches.
    """
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
    signed = timestamp.encode() + b"." + body
    found: list[T] = []
    for owner, secrets in keys:
        ok = False
        for secret in secrets:
            expected = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
            ok |= hmac.compare_digest(given, expected)
        if ok:
            found.append(owner)
    if not found:
        raise SignatureError("X-Webhook-Signature does not match")
    return found
