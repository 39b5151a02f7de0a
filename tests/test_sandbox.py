"""The sandbox: the provider's rules, the test controls, receipts and texting the bot."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from smsbot.channels.divergent.signature import verify
from smsbot.channels.sandbox import MAX_BULK, Sandbox, SandboxCall
from smsbot.clock import VirtualClock

KEY = "sandbox-key"
SECRET = "whsec_sandbox_test"
AUTH = {"X-Api-Key": KEY}
ONE = {"sender": "smsbot", "recipient": "+447700900123", "content": "Hello"}

ClientFactory = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]
ServerFactory = Callable[[web.Application], Awaitable[TestServer]]


class Bot:
    """A stand-in for the bot's webhook route: records what arrives, answers `status`."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.received: list[tuple[bytes, dict[str, str]]] = []
        self.app = web.Application()
        self.app.router.add_post("/webhooks/divergent", self.receive)

    async def receive(self, request: web.Request) -> web.Response:
        self.received.append((await request.read(), dict(request.headers)))
        return web.Response(status=self.status)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for body, _ in self.received]


def stream(body: object) -> io.BytesIO:
    """JSON as a stream: aiohttp warns about large bytes bodies (and warnings are errors)."""
    return io.BytesIO(json.dumps(body).encode())


async def serve_bot(aiohttp_server: ServerFactory, bot: Bot) -> str:
    server = await aiohttp_server(bot.app)
    return str(server.make_url("/webhooks/divergent"))


# -- the provider's rules ---------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"X-Api-Key": "wrong"}])
async def test_a_missing_or_wrong_key_is_401(
    aiohttp_client: ClientFactory, headers: dict[str, str]
) -> None:
    sandbox = Sandbox(api_key=KEY)
    client = await aiohttp_client(sandbox.app)
    for path, body in (("/sms/send", ONE), ("/sms/send/bulk", {"messages": [ONE]})):
        response = await client.post(path, json=body, headers=headers)
        assert response.status == 401
        assert "X-Api-Key" in (await response.json())["error"]
    assert sandbox.messages == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (json.dumps({**ONE, "content": ""}).encode(), "content is required"),
        (json.dumps({"sender": "smsbot", "content": "hi"}).encode(), "recipient is required"),
        (json.dumps({**ONE, "recipient": "Bob"}).encode(), "recipient must be a phone number"),
        (json.dumps({**ONE, "clientReference": 7}).encode(), "clientReference must be a string"),
        (json.dumps({**ONE, "dateSendAtUtc": "tomorrow"}).encode(), "dateSendAtUtc must be"),
    ],
)
async def test_a_bad_single_send_is_400_with_the_reason(
    aiohttp_client: ClientFactory, body: bytes, reason: str
) -> None:
    sandbox = Sandbox(api_key=KEY)
    client = await aiohttp_client(sandbox.app)
    response = await client.post("/sms/send", data=body, headers=AUTH)
    assert response.status == 400
    assert reason in (await response.json())["error"]
    assert sandbox.messages == []
    assert sandbox.calls == [SandboxCall("/sms/send", 400)]


async def test_any_content_type_that_parses_as_json_is_accepted(
    aiohttp_client: ClientFactory,
) -> None:
    sandbox = Sandbox(api_key=KEY)
    client = await aiohttp_client(sandbox.app)
    response = await client.post(
        "/sms/send", data=json.dumps(ONE), headers={**AUTH, "Content-Type": "text/plain"}
    )
    assert response.status == 200
    assert (await response.json())["messageId"] == sandbox.messages[0].message_id


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"messages": []}, "at least one message"),
        (ONE, 'body must be {"messages": [...]}'),
        ({"messages": [ONE] * (MAX_BULK + 1)}, "too many messages: 15001"),
        ({"messages": [ONE, {**ONE, "recipient": "x"}]}, "messages[1].recipient must be"),
        ({"messages": [ONE, "hello"]}, "messages[1] must be a JSON object"),
    ],
)
async def test_a_bad_bulk_call_is_400_and_accepts_nothing(
    aiohttp_client: ClientFactory, body: dict[str, Any], reason: str
) -> None:
    sandbox = Sandbox(api_key=KEY)
    client = await aiohttp_client(sandbox.app)
    response = await client.post("/sms/send/bulk", data=stream(body), headers=AUTH)
    assert response.status == 400
    assert reason in (await response.json())["error"]
    assert sandbox.messages == []


async def test_bulk_answers_batch_id_and_count(aiohttp_client: ClientFactory) -> None:
    sandbox = Sandbox(api_key=KEY)
    client = await aiohttp_client(sandbox.app)
    response = await client.post(
        "/sms/send/bulk", data=stream({"messages": [ONE] * MAX_BULK}), headers=AUTH
    )
    assert response.status == 200
    answer = await response.json()
    assert answer["messageCount"] == MAX_BULK
    assert {m.batch_id for m in sandbox.messages} == {answer["batchId"]}
    assert [m.index for m in sandbox.messages[:3]] == [0, 1, 2]


# -- listing what was sent --------------------------------------------------------------------


async def test_messages_are_listed_and_filtered_by_recipient(
    aiohttp_client: ClientFactory,
) -> None:
    clock = VirtualClock()
    sandbox = Sandbox(api_key=KEY, clock=clock, failing_numbers=["+447700900666"])
    client = await aiohttp_client(sandbox.app)
    for recipient in ("+447700900123", "+447700900666", "+447700900123"):
        await client.post("/sms/send", json={**ONE, "recipient": recipient}, headers=AUTH)
    await sandbox.wait_for_receipts()

    everything = (await (await client.get("/sandbox/messages")).json())["messages"]
    assert [m["status"] for m in everything] == ["Delivered", "Failed", "Delivered"]
    assert everything[0]["receivedAt"] == "2026-01-15T09:00:00Z"
    # "+" must be %2B in a query string; without it the number still matches
    for query in ("?to=%2B447700900123", "?to=447700900123"):
        mine = (await (await client.get("/sandbox/messages" + query)).json())["messages"]
        assert [m["index"] for m in mine] == [0, 2]


# -- test controls ----------------------------------------------------------------------------


async def test_failing_numbers_match_however_the_number_is_written(
    aiohttp_client: ClientFactory,
) -> None:
    sandbox = Sandbox(api_key=KEY, clock=VirtualClock())
    client = await aiohttp_client(sandbox.app)
    sandbox.failing_numbers.add("+44 7700 900666")  # as docs/testing-flows.md shows it
    assert "447700900666" in sandbox.failing_numbers
    assert "+447700900666" in sandbox.failing_numbers
    for recipient in ("+447700900666", "+447700900123"):
        await client.post("/sms/send", json={**ONE, "recipient": recipient}, headers=AUTH)
    await sandbox.wait_for_receipts()
    messages = (await (await client.get("/sandbox/messages")).json())["messages"]
    assert [m["status"] for m in messages] == ["Failed", "Delivered"]
    sandbox.failing_numbers.discard("+447700900666")
    assert "+447700900666" not in sandbox.failing_numbers


async def test_set_failure_answers_the_next_count_calls(aiohttp_client: ClientFactory) -> None:
    sandbox = Sandbox(api_key=KEY)
    client = await aiohttp_client(sandbox.app)
    sandbox.set_failure(429, count=2, retry_after=7)
    answers = [await client.post("/sms/send", json=ONE, headers=AUTH) for _ in range(3)]
    assert [r.status for r in answers] == [429, 429, 200]
    assert answers[0].headers["Retry-After"] == "7"
    assert len(sandbox.messages) == 1


async def test_set_failure_can_let_calls_through_first_and_last_until_reset(
    aiohttp_client: ClientFactory,
) -> None:
    sandbox = Sandbox(api_key=KEY)
    client = await aiohttp_client(sandbox.app)
    sandbox.set_failure(503, after=1)
    statuses = [(await client.post("/sms/send", json=ONE, headers=AUTH)).status for _ in range(4)]
    assert statuses == [200, 503, 503, 503]
    sandbox.reset()
    assert (sandbox.messages, sandbox.calls) == ([], [])
    assert (await client.post("/sms/send", json=ONE, headers=AUTH)).status == 200


async def test_start_serves_on_a_free_loopback_port() -> None:
    async with Sandbox() as sandbox:
        assert sandbox.url is not None
        assert sandbox.url.startswith("http://127.0.0.1:")
        assert not sandbox.url.endswith(":0")
    await sandbox.stop()  # a second stop is harmless


# -- webhooks ---------------------------------------------------------------------------------


async def test_texting_the_bot_posts_a_signed_inbound_event(
    aiohttp_client: ClientFactory, aiohttp_server: ServerFactory
) -> None:
    bot = Bot(status=202)
    clock = VirtualClock()
    sandbox = Sandbox(
        webhook_url=await serve_bot(aiohttp_server, bot), webhook_secret=SECRET, clock=clock
    )
    client = await aiohttp_client(sandbox.app)
    response = await client.post(
        "/sandbox/inbound", json={"from": "+447700900123", "to": "+447700900100", "text": "YES"}
    )
    assert response.status == 200
    answer = await response.json()
    assert answer["status"] == 202

    [(body, headers)] = bot.received
    timestamp = headers["X-Webhook-Timestamp"]
    assert timestamp == str(int(clock.now().timestamp()))
    verify(
        body=body,
        timestamp=timestamp,
        signature=headers["X-Webhook-Signature"],
        secrets=[SECRET],
        now=clock.now().timestamp(),
    )
    event = json.loads(body)
    assert list(event) == ["id", "timestamp", "workspaceId", "eventType", "data"]
    assert event["id"] == answer["eventId"]
    assert (event["eventType"], event["timestamp"]) == (2, "2026-01-15T09:00:00Z")
    data = event["data"]
    assert list(data) == ["messageId", "inboundNumber", "sender", "body", "receivedAt"]
    assert (data["inboundNumber"], data["sender"], data["body"]) == (
        "+447700900100",
        "+447700900123",
        "YES",
    )


async def test_text_bot_returns_the_bots_status(
    aiohttp_client: ClientFactory, aiohttp_server: ServerFactory
) -> None:
    bot = Bot(status=503)
    sandbox = Sandbox(webhook_url=await serve_bot(aiohttp_server, bot))
    await aiohttp_client(sandbox.app)  # runs the app, which owns the webhook session
    assert await sandbox.text_bot("+447700900123", "+447700900100", "STOP") == 503
    [(_, headers)] = bot.received
    assert "X-Webhook-Signature" not in headers  # no secret, no signature, as the provider does


async def test_inbound_needs_a_webhook_and_a_reachable_bot(
    aiohttp_client: ClientFactory, unused_tcp_port: int
) -> None:
    text = {"from": "+447700900123", "to": "+447700900100", "text": "hi"}
    nowhere = await aiohttp_client(Sandbox().app)
    response = await nowhere.post("/sandbox/inbound", json=text)
    assert response.status == 409

    down = await aiohttp_client(Sandbox(webhook_url=f"http://127.0.0.1:{unused_tcp_port}/hook").app)
    response = await down.post("/sandbox/inbound", json=text)
    assert response.status == 502
    assert "could not reach the bot" in (await response.json())["error"]

    response = await down.post("/sandbox/inbound", json={"from": "+447700900123", "to": "x"})
    assert response.status == 400


async def test_a_receipt_the_bot_refuses_is_retried_then_dropped(
    aiohttp_client: ClientFactory, aiohttp_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    bot = Bot(status=500)
    sandbox = Sandbox(api_key=KEY, webhook_url=await serve_bot(aiohttp_server, bot))
    sandbox.receipt_retry_delays = (0.0, 0.0)
    client = await aiohttp_client(sandbox.app)
    with caplog.at_level(logging.WARNING, logger="smsbot.channels.sandbox"):
        await client.post("/sms/send", json=ONE, headers=AUTH)
        await sandbox.wait_for_receipts()
    assert [e["data"]["deliveryStatus"] for e in bot.events()] == ["Dispatched"] * 3 + [
        "Delivered"
    ] * 3
    assert "dropped Dispatched receipt" in caplog.text
    assert "after 3 attempts (HTTP 500)" in caplog.text
    assert sandbox.messages[0].status == "Delivered"


async def test_receipts_carry_the_message_and_clock_times(
    aiohttp_client: ClientFactory, aiohttp_server: ServerFactory
) -> None:
    bot = Bot()
    clock = VirtualClock(dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC))
    sandbox = Sandbox(api_key=KEY, webhook_url=await serve_bot(aiohttp_server, bot), clock=clock)
    client = await aiohttp_client(sandbox.app)
    response = await client.post(
        "/sms/send", json={**ONE, "clientReference": "out-1"}, headers=AUTH
    )
    message_id = (await response.json())["messageId"]
    await sandbox.wait_for_receipts()
    dispatched, delivered = (e["data"] for e in bot.events())
    assert dispatched["messageId"] == delivered["messageId"] == message_id
    assert dispatched["clientReference"] == "out-1"
    assert delivered["processedAt"] == delivered["deliveredAt"] == "2026-03-01T12:00:00Z"
    assert bot.events()[0]["workspaceId"] == "ws_sandbox"
