"""What every provider client offers (`SmsProvider`), and the HTTP plumbing they share."""

from __future__ import annotations

import datetime as dt
import email.utils
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from smsbot.channels.errors import (
    PermanentError,
    ProviderError,
    TransientError,
    error_for_status,
    parse_retry_after,
)
from smsbot.channels.retry import RetryPolicy
from smsbot.clock import SystemClock


@dataclass(frozen=True, slots=True)
class OutboundSms:
    """One SMS to hand to a provider."""

    sender: str  # E.164 or alphanumeric sender id
    recipient: str  # E.164
    content: str
    client_reference: str | None = None
    send_at: dt.datetime | None = None  # aware; the provider holds the message until then
    unicode: bool = False  # force unicode (UCS-2) mode

    def __post_init__(self) -> None:
        if self.send_at is not None and self.send_at.utcoffset() is None:
            raise ValueError("OutboundSms.send_at must be timezone-aware (e.g. tzinfo=UTC)")


@dataclass(frozen=True, slots=True)
class SendResult:
    """The outcome of one accepted single send."""

    provider_message_id: str | None
    client_reference: str | None
    raw: Mapping[str, Any]  # the provider's JSON body (or {}), for logs and debugging


@dataclass(frozen=True, slots=True)
class BulkOutcome:
    """The outcome of one provider call inside `send_many`.

    `batch_id` is the provider's id for the call; a provider without batches (PureSMS v1) puts
    the single message's id there. `error` is set when the call failed after its retries.
    """

    messages: Sequence[OutboundSms]
    batch_id: str | None = None
    message_count: int = 0
    error: ProviderError | None = None

    @property
    def ok(self) -> bool:
        """True when the provider accepted this call's messages."""
        return self.error is None


class SmsProvider(Protocol):
    """A client for one SMS API."""

    name: str
    max_batch: int  # most messages one provider call can carry

    async def send(self, message: OutboundSms) -> SendResult:
        """Send one message; raise ProviderError when the provider does not accept it."""
        ...

    async def send_many(self, messages: Sequence[OutboundSms]) -> list[BulkOutcome]:
        """Send messages in calls of at most `max_batch`; one outcome per call, never raising."""
        ...

    async def close(self) -> None:
        """Release the client's connections."""
        ...


def pick_id(raw: Mapping[str, Any], keys: Sequence[str]) -> str | None:
    """Return the first of `keys` present (and not null) in `raw`, as a string."""
    for key in keys:
        value = raw.get(key)
        if value is not None and value != "":
            return str(value)
    return None


class JsonApi:
    """One provider's HTTP API: a shared session, the API key header, timeouts and errors.

    Every call gets `aiohttp.ClientTimeout(total=timeout)` and runs through the RetryPolicy.
    A session passed in belongs to the caller and is not closed here.
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        key_header: str,
        timeout: float,
        retry: RetryPolicy | None,
        session: aiohttp.ClientSession | None,
    ) -> None:
        if not api_key:
            raise ValueError("api_key is empty; pass the key from your provider dashboard")
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._headers = {
            key_header: api_key,
            "Accept": "application/json",
            "Content-Type": "application/json",
        }
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._session = session
        self._owns_session = session is None

    def redact(self, text: str) -> str:
        """Return `text` with the API key blanked out, should anything echo it back."""
        return text.replace(self._api_key, "[api key]")

    async def post(
        self,
        path: str,
        body: Mapping[str, Any],
        *,
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """POST `body` as JSON, retrying transient failures; return the JSON object answered."""
        encoded = json.dumps(body).encode()  # once, however many attempts
        return await self.retry.run(lambda: self._post_once(path, encoded, params))

    async def close(self) -> None:
        """Close the session if this object opened it."""
        if self._session is not None and self._owns_session:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        # Created on first use rather than in __init__, so it binds to the loop that runs it.
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def _post_once(
        self, path: str, body: bytes, params: Mapping[str, str] | None
    ) -> dict[str, Any]:
        url = self.base_url + path
        try:
            async with self._client().post(
                url,
                # A stream, not bytes: aiohttp warns that a large bytes body (a 15,000-message
                # bulk call is over 1 MiB) may block the loop, and streams it in chunks instead.
                data=io.BytesIO(body),
                params=params,
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                # A redirected POST turns into a GET on some statuses: never what we want.
                allow_redirects=False,
            ) as response:
                payload = await response.read()
                status = response.status
                headers = response.headers
        except TimeoutError as err:
            raise TransientError(f"no answer from {url} within {self.timeout:g}s") from err
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as err:
            raise TransientError(self.redact(f"could not reach {url}: {describe(err)}")) from err
        except aiohttp.ClientError as err:
            raise PermanentError(self.redact(f"cannot call {url}: {describe(err)}")) from err

        parsed = _json_or_none(payload)
        if 200 <= status < 300:
            return parsed if isinstance(parsed, dict) else {}
        reason = self.redact(_reason(payload, parsed))
        retry_after = parse_retry_after(headers.get("Retry-After"), _server_now(headers))
        raise error_for_status(status, reason, retry_after)

    def __repr__(self) -> str:
        return f"JsonApi(base_url={self.base_url!r}, api_key='***')"


def describe(error: BaseException) -> str:
    """Return a one-line account of a network error (some, like timeouts, have no message)."""
    return str(error) or type(error).__name__


def _json_or_none(payload: bytes) -> Any:
    try:
        return json.loads(payload) if payload.strip() else None
    except ValueError:  # not JSON (UnicodeDecodeError is a ValueError too)
        return None


def _reason(payload: bytes, parsed: Any) -> str:
    """Return the provider's explanation from an error body, else the body's text."""
    if isinstance(parsed, dict):
        parts = [parsed[k] for k in ("error", "message", "title", "detail") if _is_text(parsed, k)]
        # ASP.NET Core (the provider is .NET) answers validation failures with ProblemDetails,
        # whose "errors" maps each field to its messages; that is the useful part.
        errors = parsed.get("errors")
        if isinstance(errors, dict):
            for field, messages in errors.items():
                text = "; ".join(map(str, messages)) if isinstance(messages, list) else messages
                parts.append(f"{field}: {text}")
        if parts:
            return " | ".join(str(p) for p in parts)
    return payload.decode("utf-8", "replace").strip()


def _is_text(mapping: Mapping[str, Any], key: str) -> bool:
    value = mapping.get(key)
    return isinstance(value, str) and value != ""


def _server_now(headers: Mapping[str, str]) -> dt.datetime:
    """Return the response's Date, so an HTTP-date Retry-After ignores our clock's skew."""
    try:
        when = email.utils.parsedate_to_datetime(headers.get("Date", ""))
    except (TypeError, ValueError):
        return SystemClock().now()
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)
