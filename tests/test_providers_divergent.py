"""The Divergent Connect client against the sandbox (and tiny fakes) on loopback."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shlex
import shutil
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from smsbot.channels import (
    AuthenticationError,
    DivergentClient,
    OutboundSms,
    PermanentError,
    ProviderError,
    ProviderValidationError,
    RateLimitedError,
    RetryPolicy,
    TransientError,
)
from smsbot.channels.divergent.client import wire_message
from smsbot.channels.divergent.signature import SignatureError, sign, verify
from smsbot.channels.errors import parse_retry_after
from smsbot.channels.sandbox import Sandbox, SandboxCall
from tests.support import VECTORS

KEY = "dc_live_7Qm2xK9pR4"  # distinctive, so a leak is easy to spot
SECRET = "whsec_sandbox_test"
MSG = OutboundSms(sender="smsbot", recipient="+447700900123", content="Hello")

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]


class Sleeps:
    """An injected RetryPolicy.sleep that records instead of waiting."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox(api_key=KEY) as sb:
        yield sb


def url_of(sandbox: Sandbox) -> str:
    assert sandbox.url is not None
    return sandbox.url


@pytest.fixture
async def client(sandbox: Sandbox, sleeps: Sleeps) -> AsyncIterator[DivergentClient]:
    # random() == 1.0 makes every jittered delay its ceiling, so the schedule is predictable.
    retry = RetryPolicy(sleep=sleeps, random=lambda: 1.0)
    async with DivergentClient(KEY, url_of(sandbox), retry=retry) as c:
        yield c


def many(n: int) -> list[OutboundSms]:
    return [
        OutboundSms("smsbot", f"+4477009{i:05d}", f"hi {i}", client_reference=f"r{i}")
        for i in range(n)
    ]


async def test_send_records_every_field(client: DivergentClient, sandbox: Sandbox) -> None:
    when = dt.datetime(2026, 1, 16, 10, 30, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    message = OutboundSms(
        sender="+447700900100",
        recipient="+447700900123",
        content="Your appointment is tomorrow at 10am ✓",
        client_reference="appointment-reminder-123",
        send_at=when,
        unicode=True,
    )
    result = await client.send(message)

    [seen] = sandbox.messages
    assert (seen.sender, seen.recipient, seen.content) == (
        message.sender,
        message.recipient,
        message.content,
    )
    assert seen.client_reference == "appointment-reminder-123"
    assert seen.send_at == dt.datetime(2026, 1, 16, 9, 30, tzinfo=dt.UTC)
    assert seen.unicode_mode == "Allow"
    assert result.provider_message_id == seen.message_id
    assert result.client_reference == "appointment-reminder-123"
    assert result.raw["messageId"] == seen.message_id


def test_optional_fields_are_left_out_unless_set() -> None:
    assert wire_message(MSG) == {
        "sender": "smsbot",
        "recipient": "+447700900123",
        "content": "Hello",
    }
    scheduled = OutboundSms(
        "s", "+447700900123", "c", send_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    )
    assert wire_message(scheduled)["dateSendAtUtc"] == "2026-01-01T00:00:00Z"


def test_send_at_must_be_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        OutboundSms("s", "+447700900123", "c", send_at=dt.datetime(2026, 1, 1))


async def test_15001_messages_go_out_in_two_bulk_calls(
    client: DivergentClient, sandbox: Sandbox
) -> None:
    messages = many(15_001)
    outcomes = await client.send_many(messages)

    assert sandbox.calls == [SandboxCall("/sms/send/bulk", 200)] * 2
    assert [o.ok for o in outcomes] == [True, True]
    assert [o.message_count for o in outcomes] == [15_000, 1]
    assert list(outcomes[0].messages) == messages[:15_000]
    assert list(outcomes[1].messages) == messages[15_000:]
    per_batch = Counter(m.batch_id for m in sandbox.messages)
    assert per_batch == {outcomes[0].batch_id: 15_000, outcomes[1].batch_id: 1}


async def test_nothing_to_send_makes_no_call(client: DivergentClient, sandbox: Sandbox) -> None:
    assert await client.send_many([]) == []
    assert sandbox.calls == []


async def test_401_is_not_retried(sandbox: Sandbox, sleeps: Sleeps) -> None:
    async with DivergentClient("wrong-key", url_of(sandbox), retry=RetryPolicy(sleep=sleeps)) as c:
        with pytest.raises(AuthenticationError) as caught:
            await c.send(MSG)
    assert caught.value.status == 401
    assert sandbox.calls == [SandboxCall("/sms/send", 401)]
    assert sleeps.calls == []


async def test_503_is_retried_with_growing_waits_then_reported(
    client: DivergentClient, sandbox: Sandbox, sleeps: Sleeps
) -> None:
    sandbox.set_failure(503)
    with pytest.raises(TransientError) as caught:
        await client.send(MSG)
    assert caught.value.status == 503
    assert len(sandbox.calls) == 4  # RetryPolicy's default attempts
    assert sleeps.calls == [0.5, 1.0, 2.0]
    assert sandbox.messages == []


async def test_a_failing_second_chunk_does_not_undo_the_first(
    client: DivergentClient, sandbox: Sandbox
) -> None:
    sandbox.set_failure(503, after=1)
    messages = many(15_001)
    first, second = await client.send_many(messages)

    assert first.ok and first.message_count == 15_000 and first.batch_id
    assert not second.ok and isinstance(second.error, TransientError)
    assert list(second.messages) == messages[15_000:]
    assert second.batch_id is None
    assert len(sandbox.calls) == 1 + 4
    assert len(sandbox.messages) == 15_000


async def test_a_failing_first_chunk_does_not_stop_the_next(
    client: DivergentClient, sandbox: Sandbox
) -> None:
    sandbox.set_failure(503, count=4)  # every attempt of the first call
    first, second = await client.send_many(many(15_001))
    assert isinstance(first.error, TransientError)
    assert second.ok and second.message_count == 1


async def test_429_waits_exactly_retry_after(
    client: DivergentClient, sandbox: Sandbox, sleeps: Sleeps
) -> None:
    sandbox.set_failure(429, count=1, retry_after=7)
    result = await client.send(MSG)
    assert sleeps.calls == [7.0]
    assert [c.status for c in sandbox.calls] == [429, 200]
    assert result.provider_message_id == sandbox.messages[0].message_id


async def test_429_that_never_clears_is_a_rate_limited_error(
    sandbox: Sandbox, sleeps: Sleeps
) -> None:
    sandbox.set_failure(429, retry_after=1)
    async with DivergentClient(KEY, url_of(sandbox), retry=RetryPolicy(2, sleep=sleeps)) as c:
        with pytest.raises(RateLimitedError) as caught:
            await c.send(MSG)
    assert caught.value.retry_after == 1.0
    assert sleeps.calls == [1.0]


async def test_a_hung_provider_times_out(sandbox: Sandbox, sleeps: Sleeps) -> None:
    sandbox.hang = True
    retry = RetryPolicy(attempts=2, sleep=sleeps)
    async with DivergentClient(KEY, url_of(sandbox), timeout=0.2, retry=retry) as c:
        with pytest.raises(TransientError, match=r"within 0\.2s"):
            await c.send(MSG)
    assert len(sleeps.calls) == 1


async def test_an_unreachable_provider_is_transient(sleeps: Sleeps) -> None:
    sandbox = Sandbox()
    url = await sandbox.start()
    await sandbox.stop()  # nothing listens there now
    async with DivergentClient(KEY, url, retry=RetryPolicy(2, sleep=sleeps)) as c:
        with pytest.raises(TransientError, match="could not reach"):
            await c.send(MSG)


async def test_400_carries_the_providers_reason(
    client: DivergentClient, sandbox: Sandbox, sleeps: Sleeps
) -> None:
    with pytest.raises(ProviderValidationError) as caught:
        await client.send(OutboundSms("smsbot", "not-a-number", "hi"))
    assert caught.value.status == 400
    assert "recipient must be a phone number" in caught.value.reason
    assert len(sandbox.calls) == 1
    assert sleeps.calls == []


# -- against a tiny fake that answers whatever a test needs ---------------------------------


async def fake(
    aiohttp_server: ServerFactory,
    status: int,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> str:
    """Serve POST /sms/send answering `status` and `body`; return the base URL."""

    async def answer(request: web.Request) -> web.Response:
        text = body.replace(b"{KEY}", request.headers.get("X-Api-Key", "").encode())
        return web.Response(status=status, body=text, headers=headers)

    app = web.Application()
    app.router.add_post("/sms/send", answer)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, AuthenticationError),
        (403, AuthenticationError),
        (400, ProviderValidationError),
        (422, ProviderValidationError),
        (404, PermanentError),
        (302, PermanentError),
        (429, RateLimitedError),
        (408, TransientError),
        (500, TransientError),
        (503, TransientError),
    ],
)
async def test_statuses_map_to_errors(
    aiohttp_server: ServerFactory, status: int, error: type[ProviderError]
) -> None:
    url = await fake(aiohttp_server, status, b"nope", {"Location": "/elsewhere"})
    async with DivergentClient(KEY, url, retry=RetryPolicy(attempts=1)) as c:
        with pytest.raises(ProviderError) as caught:
            await c.send(MSG)
    assert type(caught.value) is error
    assert caught.value.status == status


@pytest.mark.parametrize(
    ("status", "body", "provider_id"),
    [
        (200, b"", None),
        (200, b"OK", None),
        (200, b"[1, 2]", None),
        (200, b'{"id": 42}', "42"),
        (202, b'{"reference": "ref-9"}', "ref-9"),
        (201, b'{"messageId": "m-1", "id": "other"}', "m-1"),
    ],
)
async def test_any_2xx_is_accepted_whatever_its_body(
    aiohttp_server: ServerFactory, status: int, body: bytes, provider_id: str | None
) -> None:
    url = await fake(aiohttp_server, status, body)
    async with DivergentClient(KEY, url) as c:
        result = await c.send(MSG)
    assert result.provider_message_id == provider_id


async def test_problem_details_reason(aiohttp_server: ServerFactory) -> None:
    problem = {
        "title": "One or more validation errors occurred.",
        "status": 400,
        "errors": {"Recipient": ["The Recipient field is required."]},
    }
    url = await fake(aiohttp_server, 400, json.dumps(problem).encode())
    async with DivergentClient(KEY, url) as c:
        with pytest.raises(ProviderValidationError) as caught:
            await c.send(MSG)
    assert "One or more validation errors occurred." in caught.value.reason
    assert "Recipient: The Recipient field is required." in caught.value.reason


async def test_reason_is_cut_to_500_chars(aiohttp_server: ServerFactory) -> None:
    url = await fake(aiohttp_server, 400, b"x" * 5000)
    async with DivergentClient(KEY, url) as c:
        with pytest.raises(ProviderValidationError) as caught:
            await c.send(MSG)
    assert len(caught.value.reason) == 500


@pytest.mark.parametrize("status", [400, 500])
async def test_the_api_key_never_shows(aiohttp_server: ServerFactory, status: int) -> None:
    # This provider echoes the key back in its error body; the client must not pass it on.
    url = await fake(aiohttp_server, status, b'{"error": "bad key {KEY} for this workspace"}')
    c = DivergentClient(KEY, url, retry=RetryPolicy(attempts=1))
    try:
        with pytest.raises(ProviderError) as caught:
            await c.send(MSG)
        outcomes = await c.send_many([MSG])
    finally:
        await c.close()
    for text in (repr(c), str(caught.value), repr(caught.value), caught.value.reason):
        assert KEY not in text
    assert "[api key]" in caught.value.reason
    assert outcomes[0].error is not None and KEY not in str(outcomes[0].error)


async def test_a_session_passed_in_is_left_open(sandbox: Sandbox) -> None:
    async with aiohttp.ClientSession() as session:
        c = DivergentClient(KEY, url_of(sandbox), session=session)
        await c.send(MSG)
        await c.close()
        assert not session.closed


def test_empty_api_key_is_refused() -> None:
    with pytest.raises(ValueError, match="api_key"):
        DivergentClient("")


# -- RetryPolicy ------------------------------------------------------------------------------


def test_backoff_doubles_up_to_max_delay_with_full_jitter() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=3.0, random=lambda: 0.5)
    error = TransientError("boom")
    assert [policy.delay(n, error) for n in range(4)] == [0.5, 1.0, 1.5, 1.5]
    assert RetryPolicy(random=lambda: 0.0).delay(3, error) == 0.0


def test_retry_after_is_capped() -> None:
    policy = RetryPolicy(max_retry_after=300.0)
    assert policy.delay(0, RateLimitedError("slow down", retry_after=7200)) == 300.0
    # no Retry-After: ordinary backoff
    assert RetryPolicy(random=lambda: 1.0).delay(0, RateLimitedError("slow down")) == 0.5


async def test_a_retry_after_longer_than_the_cap_goes_to_the_caller(sleeps: Sleeps) -> None:
    calls = 0

    async def slow_down() -> None:
        nonlocal calls
        calls += 1
        raise RateLimitedError("slow down", retry_after=600)

    policy = RetryPolicy(max_retry_after=5.0, sleep=sleeps)
    with pytest.raises(RateLimitedError):
        await policy.run(slow_down)
    assert calls == 1  # not retried: the outbox waits the 600 s durably


async def test_permanent_errors_are_never_retried(sleeps: Sleeps) -> None:
    calls = 0

    async def refuse() -> None:
        nonlocal calls
        calls += 1
        raise PermanentError("no", status=404)

    with pytest.raises(PermanentError):
        await RetryPolicy(sleep=sleeps).run(refuse)
    assert (calls, sleeps.calls) == (1, [])


def test_retry_after_forms() -> None:
    now = dt.datetime(2015, 10, 21, 7, 28, tzinfo=dt.UTC)
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now) == 0.0  # already past
    assert parse_retry_after("-3", now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


# -- receipts, signatures and the reference's cURL example ---------------------------------


async def openssl_hmac(secret: str, data: bytes) -> str:
    """Sign with openssl, independently of smsbot's code."""
    proc = await asyncio.create_subprocess_shell(
        f"openssl dgst -sha256 -hmac {shlex.quote(secret)} -binary | base64",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate(data)
    assert proc.returncode == 0
    return out.decode().strip()


@pytest.mark.skipif(not shutil.which("openssl"), reason="openssl is not installed")
async def test_receipts_are_signed_over_the_exact_bytes(aiohttp_server: ServerFactory) -> None:
    received: list[tuple[bytes, dict[str, str]]] = []

    async def receive(request: web.Request) -> web.Response:
        received.append((await request.read(), dict(request.headers)))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/webhooks/divergent", receive)
    bot = await aiohttp_server(app)
    sandbox = Sandbox(
        api_key=KEY,
        webhook_url=str(bot.make_url("/webhooks/divergent")),
        webhook_secret=SECRET,
        failing_numbers=["+447700900666"],
    )
    async with sandbox, DivergentClient(KEY, url_of(sandbox)) as c:
        await c.send(OutboundSms("smsbot", "+447700900123", "hi", client_reference="ok-1"))
        await c.send(OutboundSms("smsbot", "447700900666", "hi", client_reference="bad-1"))
        await sandbox.wait_for_receipts()

    assert len(received) == 4
    statuses: dict[str, list[str]] = {}
    for body, headers in received:
        timestamp = headers["X-Webhook-Timestamp"]
        signature = headers["X-Webhook-Signature"]
        assert headers["Content-Type"] == "application/json"
        assert signature == await openssl_hmac(SECRET, timestamp.encode() + b"." + body)
        verify(
            body=body,
            timestamp=timestamp,
            signature=signature,
            secrets=[SECRET],
            now=int(timestamp),
        )
        event: dict[str, Any] = json.loads(body)
        assert list(event) == ["id", "timestamp", "workspaceId", "eventType", "data"]
        assert event["eventType"] == 1
        data = event["data"]
        assert list(data) == [
            "messageId",
            "clientReference",
            "deliveryStatus",
            "errorCode",
            "processedAt",
            "deliveredAt",
        ]
        assert (data["errorCode"] is None) == (data["deliveryStatus"] != "Failed")
        assert (data["deliveredAt"] is None) == (data["deliveryStatus"] != "Delivered")
        statuses.setdefault(data["clientReference"], []).append(data["deliveryStatus"])
    assert statuses == {"ok-1": ["Dispatched", "Delivered"], "bad-1": ["Dispatched", "Failed"]}
    assert [m.status for m in sandbox.messages] == ["Delivered", "Failed"]


def vectors() -> list[dict[str, Any]]:
    path = VECTORS / "webhook-signatures.json"
    cases: list[dict[str, Any]] = json.loads(path.read_text("utf-8"))["vectors"]
    return cases


@pytest.mark.parametrize("vector", vectors(), ids=lambda v: str(v["name"]))
def test_signature_vectors(vector: dict[str, Any]) -> None:
    body = vector["body"].encode()
    timestamp = vector["timestamp"]
    check = {
        "body": body,
        "timestamp": timestamp,
        "signature": vector["signature"],
        "secrets": [vector["secret"]],
        "now": int(timestamp),
    }
    if vector["valid"]:
        assert sign(vector["secret"], timestamp, body) == vector["signature"]
        verify(**check)
    else:
        with pytest.raises(SignatureError):
            verify(**check)


@pytest.mark.skipif(not shutil.which("curl"), reason="curl is not installed")
async def test_the_references_curl_example_works(sandbox: Sandbox) -> None:
    # The reference's own example, copied byte for byte into tests/vectors.
    command = (VECTORS / "divergent-curl-example.txt").read_text("utf-8").strip()
    command = (
        command.replace("https://connect-api.divergent.cloud", url_of(sandbox))
        .replace("{ API_KEY }", KEY)
        .replace("{ SENDER_NAME }", "smsbot")
        .replace("{ RECIPIENT_NUMBER }", "+447700900123")
    )
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        command + " --silent --show-error",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    assert sandbox.calls == [SandboxCall("/sms/send", 200)]
    [message] = sandbox.messages
    assert message.content == "Hello world, from PureSMS!"
    assert json.loads(out)["messageId"] == message.message_id
