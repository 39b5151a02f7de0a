"""What the sandbox accepts and records: the provider's request rules, kept apart from serving."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from smsbot.channels.divergent.client import utc_iso

MAX_BULK = 15_000  # the provider's limit for one bulk call
WORKSPACE_ID = "ws_sandbox"
FAILED_ERROR_CODE = "sandbox-failing-number"
WEBHOOK_TIMEOUT = 45.0  # the provider gives a webhook this long to answer
RECEIPT_WORKERS = 4
# 15,000 messages of JSON are well over aiohttp's default 1 MiB request limit.
MAX_REQUEST_BYTES = 64 * 1024 * 1024
# Loose on purpose: digits with an optional "+" (E.164, or the digits-only form in the reference).
PHONE_PATTERN = re.compile(r"\+?[0-9]{7,15}")


@dataclass
class SandboxMessage:
    """One message the sandbox accepted, and where its (simulated) delivery has got to."""

    message_id: str
    sender: str
    recipient: str
    content: str
    client_reference: str | None
    send_at: dt.datetime | None
    unicode_mode: str | None
    batch_id: str | None
    index: int  # 0 for the first message accepted, then 1, 2, …
    received_at: dt.datetime
    status: str = "Queued"  # the provider's status names: Queued, Dispatched, Delivered, Failed

    def to_json(self) -> dict[str, Any]:
        """Return the message as GET /sandbox/messages shows it."""
        return {
            "messageId": self.message_id,
            "sender": self.sender,
            "recipient": self.recipient,
            "content": self.content,
            "clientReference": self.client_reference,
            "dateSendAtUtc": utc_iso(self.send_at) if self.send_at else None,
            "unicodeMode": self.unicode_mode,
            "batchId": self.batch_id,
            "index": self.index,
            "receivedAt": utc_iso(self.received_at),
            "status": self.status,
        }


@dataclass(frozen=True)
class SandboxCall:
    """One request to a send route and the status the sandbox answered."""

    path: str
    status: int


@dataclass
class Failure:
    status: int
    remaining: int | None  # None: every call until reset
    retry_after: float | None
    skip: int


class RefusedError(Exception):
    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}


def number_key(number: str) -> str:
    """Return a number without spaces or a leading "+", for matching only."""
    return number.replace(" ", "").lstrip("+")


class NumberSet(set[str]):
    """Phone numbers compared without spaces or a leading "+": "+44 7700…" matches "447700…"."""

    def __init__(self, numbers: Iterable[str] = ()) -> None:
        super().__init__(number_key(n) for n in numbers)

    def add(self, number: str) -> None:
        super().add(number_key(number))

    def discard(self, number: object) -> None:
        if isinstance(number, str):
            super().discard(number_key(number))

    def remove(self, number: str) -> None:
        super().remove(number_key(number))

    def update(self, *numbers: Iterable[str]) -> None:
        for group in numbers:
            super().update(number_key(n) for n in group)

    def __contains__(self, number: object) -> bool:
        return isinstance(number, str) and super().__contains__(number_key(number))


def parse_json(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        raise RefusedError(400, "the body is not valid JSON") from None


def json_object(payload: object, what: str) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise RefusedError(400, f"{what} must be a JSON object")
    return payload


def text_field(payload: dict[str, Any], key: str, where: str, *, allow_empty: bool = False) -> str:
    value = payload.get(key)
    if not isinstance(value, str) or (not value and not allow_empty):
        raise RefusedError(400, f"{where}{key} is required and must be a non-empty string")
    return value


def outbound_fields(raw: object, where: str) -> dict[str, Any]:
    """Check one message as the provider would; return SandboxMessage fields or raise 400."""
    payload = json_object(raw, where.rstrip(".") or "the body")
    sender = text_field(payload, "sender", where)
    recipient = text_field(payload, "recipient", where)
    content = text_field(payload, "content", where)
    if not PHONE_PATTERN.fullmatch(recipient):
        raise RefusedError(400, f"{where}recipient must be a phone number, not {recipient[:40]!r}")
    reference = payload.get("clientReference")
    if reference is not None and not isinstance(reference, str):
        raise RefusedError(400, f"{where}clientReference must be a string")
    unicode_mode = payload.get("unicodeMode")
    if unicode_mode is not None and not isinstance(unicode_mode, str):
        raise RefusedError(400, f"{where}unicodeMode must be a string such as 'Allow'")
    return {
        "sender": sender,
        "recipient": recipient,
        "content": content,
        "client_reference": reference,
        "send_at": send_at_field(payload.get("dateSendAtUtc"), where),
        "unicode_mode": unicode_mode,
    }


def send_at_field(raw: object, where: str) -> dt.datetime | None:
    if raw is None:
        return None
    try:
        if not isinstance(raw, str):
            raise ValueError(raw)
        when = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise RefusedError(400, f"{where}dateSendAtUtc must be an ISO 8601 date-time") from None
    # The field is UTC by name, so a time without an offset is UTC.
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)
