"""Client for the legacy PureSMS v1 API (`POST /v1/Sms/Send`), one message per call."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import aiohttp

from smsbot.channels.base import BulkOutcome, JsonApi, OutboundSms, SendResult, pick_id
from smsbot.channels.errors import ProviderError, ProviderValidationError
from smsbot.channels.retry import RetryPolicy

log = logging.getLogger(__name__)

# The answer's shape is not documented; PureSMS receipts name their message id "reference".
_ID_KEYS = ("reference", "messageId", "id")


class PureSmsClient:
    """Sends SMS through PureSMS v1; header X-API-Key, `?isTest=true` in test mode."""

    name = "puresms"
    max_batch = 1
    concurrency = 8  # calls in flight at once in send_many

    def __init__(
        self,
        api_key: str,
        base_url: str = "https://api.puresms.uk",
        *,
        test_mode: bool = False,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.test_mode = test_mode
        self._api = JsonApi(
            base_url=base_url,
            api_key=api_key,
            key_header="X-API-Key",
            timeout=timeout,
            retry=retry,
            session=session,
        )

    async def send(self, message: OutboundSms) -> SendResult:
        """Send one message; raise ProviderError when PureSMS does not accept it."""
        if message.send_at is not None:
            # v1 documents no scheduling field; sending now what was meant for later is worse
            # than not sending, so refuse before any call.
            raise ProviderValidationError(
                "PureSMS v1 cannot schedule messages (send_at); use Divergent Connect"
            )
        params = {"isTest": "true"} if self.test_mode else None
        # Any 2xx counts as accepted (the reference checks only for 200), whatever the body.
        raw = await self._api.post("/v1/Sms/Send", wire_message(message), params=params)
        return SendResult(
            provider_message_id=pick_id(raw, _ID_KEYS),
            client_reference=message.client_reference,
            raw=raw,
        )

    async def send_many(self, messages: Sequence[OutboundSms]) -> list[BulkOutcome]:
        """Send each message in its own call, a few at a time; one outcome per message."""
        gate = asyncio.Semaphore(self.concurrency)

        async def one(message: OutboundSms) -> BulkOutcome:
            async with gate:
                try:
                    result = await self.send(message)
                except ProviderError as error:
                    log.warning("PureSMS send failed: %s", error)
                    return BulkOutcome(messages=[message], error=error)
            return BulkOutcome(
                messages=[message], batch_id=result.provider_message_id, message_count=1
            )

        # A TaskGroup rather than gather: a bug in one task cancels the rest instead of
        # leaving them running unowned.
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(m)) for m in messages]
        return [task.result() for task in tasks]

    async def close(self) -> None:
        """Close the HTTP session (unless it was passed in)."""
        await self._api.close()

    async def __aenter__(self) -> PureSmsClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return (
            f"PureSmsClient(base_url={self._api.base_url!r}, test_mode={self.test_mode}, "
            "api_key='***')"
        )


def wire_message(message: OutboundSms) -> dict[str, Any]:
    """Return the JSON object PureSMS v1 expects for one message."""
    body: dict[str, Any] = {
        # PureSMS' own examples write numbers as digits only ("4471234123123"), so "+" goes.
        "to": _digits_only(message.recipient),
        "from": _digits_only(message.sender),
        "content": message.content,
    }
    # Not in the v1 examples, but PureSMS receipts carry a clientReference, so the API takes one.
    if message.client_reference is not None:
        body["clientReference"] = message.client_reference
    # `unicode` has no v1 field: PureSMS picks the encoding from the content itself.
    return body


def _digits_only(number: str) -> str:
    """Drop the "+" of an E.164 number; an alphanumeric sender id is left as it is."""
    rest = number[1:]
    return rest if number.startswith("+") and rest.isdigit() else number
