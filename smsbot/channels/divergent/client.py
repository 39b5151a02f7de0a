"""Client for the Divergent Connect SMS API (`POST /sms/send` and `/sms/send/bulk`)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any

import aiohttp

from smsbot.channels.base import BulkOutcome, JsonApi, OutboundSms, SendResult, pick_id
from smsbot.channels.errors import ProviderError
from smsbot.channels.retry import RetryPolicy

log = logging.getLogger(__name__)

# The single-send answer is not documented. Receipts call the provider's id "messageId", so that
# comes first; "id" and "reference" (PureSMS' name for it) cover the likely alternatives.
_ID_KEYS = ("messageId", "id", "reference")


class DivergentClient:
    """Sends SMS through Divergent Connect; header X-Api-Key, up to 15,000 messages a bulk call."""

    name = "divergent"
    max_batch = 15_000

    def __init__(
        self,
        api_key: str,
        base_url: str = "https://connect-api.divergent.cloud",
        *,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._api = JsonApi(
            base_url=base_url,
            api_key=api_key,
            key_header="X-Api-Key",
            timeout=timeout,
            retry=retry,
            session=session,
        )

    async def send(self, message: OutboundSms) -> SendResult:
        """Send one message; raise ProviderError when Divergent does not accept it."""
        # Any 2xx counts as accepted, whatever its body: JSON, empty or not JSON at all.
        raw = await self._api.post("/sms/send", wire_message(message))
        return SendResult(
            provider_message_id=pick_id(raw, _ID_KEYS),
            client_reference=message.client_reference,
            raw=raw,
        )

    async def send_many(self, messages: Sequence[OutboundSms]) -> list[BulkOutcome]:
        """Send through /sms/send/bulk in calls of at most 15,000; one outcome per call."""
        outcomes: list[BulkOutcome] = []
        # One call after another: each is already up to 15,000 messages, and running them in
        # parallel would only meet the provider's rate limit sooner.
        for start in range(0, len(messages), self.max_batch):
            outcomes.append(await self._send_chunk(messages[start : start + self.max_batch]))
        return outcomes

    async def close(self) -> None:
        """Close the HTTP session (unless it was passed in)."""
        await self._api.close()

    async def __aenter__(self) -> DivergentClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"DivergentClient(base_url={self._api.base_url!r}, api_key='***')"

    async def _send_chunk(self, chunk: Sequence[OutboundSms]) -> BulkOutcome:
        body = {"messages": [wire_message(m) for m in chunk]}
        try:
            raw = await self._api.post("/sms/send/bulk", body)
        except ProviderError as error:
            log.warning("bulk call of %d messages failed: %s", len(chunk), error)
            return BulkOutcome(messages=chunk, error=error)
        count = raw.get("messageCount")
        return BulkOutcome(
            messages=chunk,
            batch_id=pick_id(raw, ("batchId",)),
            # Trust the provider's count when it gives one: a smaller number is worth seeing.
            message_count=count if isinstance(count, int) else len(chunk),
        )


def wire_message(message: OutboundSms) -> dict[str, Any]:
    """Return the JSON object Divergent expects for one message (optional fields only if set)."""
    body: dict[str, Any] = {
        "sender": message.sender,
        "recipient": message.recipient,
        "content": message.content,
    }
    # camelCase forms of the .NET SDK's ClientReference, DateSendAtUtc and UnicodeMode.
    if message.client_reference is not None:
        body["clientReference"] = message.client_reference
    if message.send_at is not None:
        body["dateSendAtUtc"] = utc_iso(message.send_at)
    if message.unicode:
        body["unicodeMode"] = "Allow"
    return body


def utc_iso(when: dt.datetime) -> str:
    """Return `when` as ISO 8601 UTC with a Z, to the second (SMS scheduling needs no finer)."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
