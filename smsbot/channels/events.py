"""Typed webhook events, the error for a body we cannot read, and the JSON readers behind them."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass

from smsbot.sms.status import DeliveryStatus

MAX_JSON_DEPTH = 32  # the real payloads nest two levels; anything deep is an attack or a bug
MAX_DATETIME_CHARS = 64


@dataclass(frozen=True, slots=True)
class InboundSms:
    """An SMS received on one of our virtual numbers (Divergent eventType 2)."""

    event_id: str
    message_id: str | None
    inbound_number: str  # as sent; normalising to E.164 happens later, not while parsing
    sender: str  # as sent
    body: str
    received_at: dt.datetime | None
    occurred_at: dt.datetime | None  # the envelope's timestamp
    workspace_id: str | None


@dataclass(frozen=True, slots=True)
class DeliveryReceipt:
    """A status change of one outbound message, from either provider."""

    event_id: str | None  # None for legacy PureSMS receipts, which carry no id
    provider_message_id: str | None  # Divergent data.messageId / PureSMS reference
    client_reference: str | None
    status: DeliveryStatus
    raw_status: str  # as the provider said it: "Delivered" or "2"
    error_code: str | None
    occurred_at: dt.datetime | None  # deliveredAt, else processedAt, else the envelope timestamp
    batch_reference: str | None = None
    workspace_id: str | None = None  # Divergent's workspaceId: the account that sent it


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    """A well-formed envelope of an eventType we do not handle; answered 2xx and ignored."""

    event_id: str
    event_type: int


WebhookEvent = InboundSms | DeliveryReceipt | UnknownEvent


class WebhookFormatError(ValueError):
    """The webhook body is not a payload we understand; `reason` says what was wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- readers shared by the Divergent and PureSMS parsers --------------------------------------


def _reject_constant(name: str) -> object:
    # Python's json accepts NaN/Infinity, which are not JSON and which no provider sends.
    raise WebhookFormatError(f"body contains {name}, which is not valid JSON")


def load_json(body: bytes) -> object:
    """Decode a webhook body as UTF-8 JSON, refusing NaN/Infinity and deep nesting."""
    try:
        # utf-8-sig: a leading byte-order mark is harmless, so tolerate one
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise WebhookFormatError("body is not UTF-8") from None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except WebhookFormatError:
        raise
    except RecursionError:
        # the C decoder recurses per level; thousands of levels end here, not in a crash
        raise WebhookFormatError("body is nested too deeply") from None
    except json.JSONDecodeError:
        raise WebhookFormatError("body is not valid JSON") from None
    except ValueError:
        # int() refuses numbers longer than sys.get_int_max_str_digits()
        raise WebhookFormatError("body has a number with too many digits") from None
    # Nesting needs a bracket a level: a text with few brackets cannot nest deeper (a webhook
    # has three), and counting them in C is cheaper than walking the value.
    if text.count("{") + text.count("[") > MAX_JSON_DEPTH:
        _check_depth(value)
    return value


def _check_depth(value: object) -> None:
    # iterative, so a deep value cannot exhaust the stack here either
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: list[object] = list(node.values())
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > MAX_JSON_DEPTH:
            raise WebhookFormatError("body is nested too deeply")
        stack.extend((child, depth + 1) for child in children)


def parse_datetime(raw: str) -> dt.datetime:
    """Parse an ISO 8601 timestamp ("Z" allowed) into an aware UTC datetime; naive means UTC."""
    if len(raw) > MAX_DATETIME_CHARS or not raw.isascii():
        raise ValueError("not an ISO 8601 datetime")
    # .NET writes up to 7 fractional digits; 3.11's fromisoformat truncates them, which is fine
    when = dt.datetime.fromisoformat(raw)
    if when.tzinfo is None:
        # the provider works in UTC throughout (its API's own field is DateSendAtUtc)
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC)


class Fields:
    """Typed access to one JSON object's fields, with errors that name the field's path."""

    def __init__(self, obj: Mapping[str, object], where: str = "") -> None:
        self._obj = obj
        self._where = where

    def name(self, key: str) -> str:
        """Return the dotted path of `key`, for error reasons."""
        return f"{self._where}.{key}" if self._where else key

    def raw(self, key: str) -> object:
        """Return the field's JSON value, None when absent or null."""
        return self._obj.get(key)

    def has(self, key: str) -> bool:
        """True when the field is present and not null."""
        return self._obj.get(key) is not None

    def text(self, key: str, *, max_chars: int, allow_empty: bool = False) -> str:
        """Return a required string field."""
        value = self._obj.get(key)
        if key not in self._obj:
            raise WebhookFormatError(f"{self.name(key)} is missing")
        if not isinstance(value, str):
            raise WebhookFormatError(f"{self.name(key)} must be a string")
        return self._checked(key, value, max_chars=max_chars, allow_empty=allow_empty)

    def optional_text(self, key: str, *, max_chars: int) -> str | None:
        """Return an optional string field; absent, null or "" give None."""
        value = self._obj.get(key)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise WebhookFormatError(f"{self.name(key)} must be a string")
        return self._checked(key, value, max_chars=max_chars, allow_empty=False)

    def optional_ref(self, key: str, *, max_chars: int) -> str | None:
        """Return an optional identifier, accepting an integer as its decimal string."""
        value = self._obj.get(key)
        # the reference shows ids as strings, but a numeric id means the same; reading it as
        # text costs nothing, while rejecting it would make the provider retry a good receipt
        if isinstance(value, int) and not isinstance(value, bool):
            return self._checked(key, str(value), max_chars=max_chars, allow_empty=False)
        return self.optional_text(key, max_chars=max_chars)

    def optional_datetime(self, key: str) -> dt.datetime | None:
        """Return an optional ISO 8601 field; absent or null give None, anything else must parse."""
        value = self._obj.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise WebhookFormatError(f"{self.name(key)} must be an ISO 8601 string")
        try:
            return parse_datetime(value)
        except (ValueError, OverflowError):
            raise WebhookFormatError(f"{self.name(key)} is not an ISO 8601 datetime") from None

    def _checked(self, key: str, value: str, *, max_chars: int, allow_empty: bool) -> str:
        if not value and not allow_empty:
            raise WebhookFormatError(f"{self.name(key)} must not be empty")
        if len(value) > max_chars:
            raise WebhookFormatError(f"{self.name(key)} is longer than {max_chars} characters")
        # "\ud800"-style escapes decode to lone surrogates, and PostgreSQL refuses NUL: either
        # would fail later, far from here, as a 500; refuse them while we can still say why
        if "\x00" in value:
            raise WebhookFormatError(f"{self.name(key)} contains a NUL character")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise WebhookFormatError(f"{self.name(key)} is not valid Unicode") from None
        return value
