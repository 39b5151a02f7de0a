"""The PureSMS v1 client against a small fake of /v1/Sms/Send on loopback."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from smsbot.channels import (
    AuthenticationError,
    OutboundSms,
    ProviderValidationError,
    PureSmsClient,
    RetryPolicy,
    TransientError,
)

KEY = "ps_key_Zr81LmQ2"
MSG = OutboundSms(sender="Somebody", recipient="+447700900123", content="Hello")

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]


@dataclass
class Seen:
    """One request the fake received."""

    query: dict[str, str]
    api_key: str | None
    body: dict[str, Any]


class FakePureSms:
    """Serves only POST /v1/Sms/Send; answers `status` with {"reference": ...}."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.status = 200
        self.in_flight = 0
        self.most_in_flight = 0
        self.pause = 0.0  # held open this long, to observe concurrency
        self.app = web.Application()
        self.app.router.add_post("/v1/Sms/Send", self.send)

    async def send(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.seen.append(Seen(dict(request.query), request.headers.get("X-API-Key"), body))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.pause)
        finally:
            self.in_flight -= 1
        if body["content"] == "refuse me":
            return web.json_response({"error": "content refused"}, status=400)
        if self.status != 200:
            return web.json_response(
                {"error": f"{request.headers.get('X-API-Key')} failed"}, status=self.status
            )
        return web.json_response({"reference": f"ps-{len(self.seen)}"})


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
async def fake(aiohttp_server: ServerFactory) -> AsyncIterator[tuple[FakePureSms, str]]:
    puresms = FakePureSms()
    server = await aiohttp_server(puresms.app)
    yield puresms, str(server.make_url("")).rstrip("/")


@pytest.fixture
async def client(fake: tuple[FakePureSms, str]) -> AsyncIterator[PureSmsClient]:
    async with PureSmsClient(KEY, fake[1], retry=RetryPolicy(sleep=Sleeps())) as c:
        yield c


async def test_send_posts_the_documented_request(
    client: PureSmsClient, fake: tuple[FakePureSms, str]
) -> None:
    puresms, _ = fake
    result = await client.send(
        OutboundSms("Somebody", "+447700900123", "Hello", client_reference="CLI-1")
    )
    [seen] = puresms.seen
    assert seen.api_key == KEY
    assert seen.query == {}  # not a test send
    assert seen.body == {
        "to": "447700900123",  # digits only, like PureSMS' own examples
        "from": "Somebody",
        "content": "Hello",
        "clientReference": "CLI-1",
    }
    assert (result.provider_message_id, result.client_reference) == ("ps-1", "CLI-1")


async def test_test_mode_adds_is_test(fake: tuple[FakePureSms, str]) -> None:
    puresms, url = fake
    async with PureSmsClient(KEY, url, test_mode=True) as c:
        await c.send(MSG)
    assert puresms.seen[0].query == {"isTest": "true"}


async def test_numbers_lose_their_plus_but_sender_ids_are_kept(
    client: PureSmsClient, fake: tuple[FakePureSms, str]
) -> None:
    await client.send(OutboundSms("+447700900100", "447700900123", "hi", unicode=True))
    await client.send(OutboundSms("+Shop", "+447700900123", "hi"))
    first, second = (s.body for s in fake[0].seen)
    # unicode has no v1 field, and no reference means no clientReference
    assert first == {"to": "447700900123", "from": "447700900100", "content": "hi"}
    assert second["from"] == "+Shop"


async def test_scheduling_is_refused_before_any_call(
    client: PureSmsClient, fake: tuple[FakePureSms, str]
) -> None:
    later = OutboundSms("s", "+447700900123", "c", send_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    with pytest.raises(ProviderValidationError, match="cannot schedule"):
        await client.send(later)
    assert fake[0].seen == []


async def test_send_many_sends_one_by_one_a_few_at_a_time(
    client: PureSmsClient, fake: tuple[FakePureSms, str]
) -> None:
    puresms, _ = fake
    puresms.pause = 0.02
    messages = [OutboundSms("s", f"+4477009001{i:02d}", f"m{i}") for i in range(20)]
    messages[5] = OutboundSms("s", "+447700900105", "refuse me")
    outcomes = await client.send_many(messages)

    assert len(puresms.seen) == 20
    assert 1 < puresms.most_in_flight <= PureSmsClient.concurrency
    assert [list(o.messages) for o in outcomes] == [[m] for m in messages]
    assert [o.ok for o in outcomes] == [i != 5 for i in range(20)]
    assert isinstance(outcomes[5].error, ProviderValidationError)
    assert outcomes[5].error.reason == "content refused"
    assert all(o.batch_id and o.message_count == 1 for o in outcomes if o.ok)


async def test_401_is_not_retried_and_503_is(fake: tuple[FakePureSms, str]) -> None:
    puresms, url = fake
    sleeps = Sleeps()
    async with PureSmsClient(KEY, url, retry=RetryPolicy(attempts=3, sleep=sleeps)) as c:
        puresms.status = 401
        with pytest.raises(AuthenticationError):
            await c.send(MSG)
        assert (len(puresms.seen), sleeps.calls) == (1, [])

        puresms.status = 503
        with pytest.raises(TransientError) as caught:
            await c.send(MSG)
        assert len(puresms.seen) == 1 + 3
        assert len(sleeps.calls) == 2
        # the fake echoes the key in its error body; it must not reach the error or the repr
        assert KEY not in str(caught.value) and KEY not in caught.value.reason
        assert KEY not in repr(c)
