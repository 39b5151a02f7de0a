"""Holes a hostile client found on loopback (issue 11, section 2), each pinned by a test.

Everything here goes through the real application on a real loopback port; the raw-socket tests
speak HTTP by hand because a well-behaved client library cannot send what an attacker sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError

from smsbot.app.server.app import create_app
from smsbot.channels.divergent.client import DivergentClient
from smsbot.channels.sandbox import Sandbox
from smsbot.clock import VirtualClock
from smsbot.config import ConfigError, Settings
from smsbot.engine.contract import EchoHandler, StepHandler
from smsbot.engine.runtime import FlowRuntime
from smsbot.pipeline.bot import Bot
from smsbot.store.engine import Database
from smsbot.store.models import opt_outs_t
from tests.support import (
    EXAMPLE_FLOWS,
    PHONE,
    VN,
    Harness,
    inbound_body,
    make_bot,
    settings_for,
    signed,
)

REPO = Path(__file__).resolve().parents[1]
T0 = dt.datetime(2026, 1, 15, 9, 0, tzinfo=dt.UTC)
TOKEN = "hostile-operator-token"
RECEIPTS_TOKEN = "hostile-receipts-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BODY_TIMEOUT = 0.3  # seconds: SMSBOT_BODY_TIMEOUT, small so the slow-client tests are fast
ENV = {
    **EXAMPLE_FLOWS,
    "SMSBOT_API_KEY": TOKEN,
    "SMSBOT_PURESMS_WEBHOOK_TOKEN": RECEIPTS_TOKEN,
    "SMSBOT_DEFAULT_SENDER": VN,
    "SMSBOT_BODY_TIMEOUT": str(BODY_TIMEOUT),
}
PHONE_DIGITS = PHONE.removeprefix("+44")  # matches the number in E.164 and national forms


@dataclasses.dataclass
class Rig(Harness):
    """The real app on a loopback port, with a raw socket for what no client library sends."""

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        server = self.client.server
        return await asyncio.open_connection(server.host, server.port)

    async def all_connections_closed(self) -> None:
        """Wait (bounded) until the server has finished with every connection."""
        server = self.client.server.runner.server
        assert server is not None
        await self.client.close()  # our side of any kept-alive connection
        async with asyncio.timeout(5):
            while server.connections:
                await asyncio.sleep(0.01)


async def _rig(
    db_url: str,
    sandbox: Sandbox,
    aiohttp_client: Any,
    handler: StepHandler | None = None,
    **extra: str,
) -> Rig:
    """The rig, running the example flows unless given another handler."""
    env = {**ENV, **extra}
    assert sandbox.url is not None
    if handler is None:
        handler = FlowRuntime.from_settings(settings_for(db_url, sandbox.url, **env))
    clock = VirtualClock(T0)
    bot = await make_bot(db_url, sandbox, handler, clock, **env)
    client = await aiohttp_client(create_app(bot, run_workers=False))
    return Rig(bot, client, sandbox, clock)


@pytest.fixture
async def rig(tmp_path: Path, sandbox: Sandbox, aiohttp_client: Any) -> Rig:
    # The HTTP surface does not depend on the database: SQLite is enough here.
    return await _rig(f"sqlite+aiosqlite:///{tmp_path / 'smsbot.db'}", sandbox, aiohttp_client)


def _loud(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """Records at WARNING or above, or carrying a traceback."""
    return [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]


# --- 1. a compressed body that does not decompress ------------------------------------------

ROUTES = {
    "divergent": "/webhooks/divergent",
    "puresms": f"/webhooks/puresms/{RECEIPTS_TOKEN}",
    "api": "/api/messages",
}


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize("route", sorted(ROUTES))
async def test_a_body_that_does_not_decompress_is_a_400_and_one_warning(
    rig: Rig, caplog: pytest.LogCaptureFixture, route: str, encoding: str
) -> None:
    caplog.set_level(logging.INFO)
    body = b'{"to": "+447700900123", "text": "not compressed at all"}'
    headers = {**signed(body, rig.clock), **AUTH, "Content-Encoding": encoding}
    resp = await rig.client.post(ROUTES[route], data=body, headers=headers)
    assert resp.status == 400, await resp.text()
    assert encoding in (await resp.json())["error"]
    await rig.all_connections_closed()
    loud = _loud(caplog)
    assert len(loud) <= 1, [r.getMessage()[:200] for r in loud]
    assert all(r.levelno == logging.WARNING and not r.exc_info for r in loud)
    assert await rig.event_count() == 0


# --- 3. `smsbot serve --echo` honours STOP ------------------------------------------------


async def test_echo_mode_records_an_opt_out_and_confirms_it_once(
    db_url: str, sandbox: Sandbox, aiohttp_client: Any
) -> None:
    echo = await _rig(db_url, sandbox, aiohttp_client, EchoHandler())
    bot = echo.bot
    for n, said in enumerate(("STOP", "hello", "STOP", "START", "hello")):
        assert (await echo.post(inbound_body(f"evt_echo_{n}", said))).status == 200
        await bot.run_until_idle()
        if n == 1:
            async with bot.db.session() as s:
                assert await s.scalar(select(func.count()).select_from(opt_outs_t)) == 1
    sent = [m.content for m in echo.sandbox.messages]
    assert len(sent) == 3, sent  # STOP confirmed, then silence, START confirmed, then the echo
    assert "unsubscribed" in sent[0] and "subscribed" in sent[1]
    assert sent[2] == "You said: hello"


# --- 7. a body trickled in one byte at a time ----------------------------------------------


@pytest.mark.parametrize("route", ["divergent", "api"])
async def test_a_trickled_body_is_cut_off_with_a_408(rig: Rig, route: str) -> None:
    reader, writer = await rig.connect()
    head = (
        f"POST {ROUTES[route]} HTTP/1.1\r\nHost: smsbot\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )
    writer.write(head.encode())

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            for _ in range(1000):
                writer.write(b" ")
                await writer.drain()
                await asyncio.sleep(BODY_TIMEOUT / 5)

    trickling = asyncio.create_task(trickle())
    try:
        # Without a bound the server waits for the 1,000th byte: 40 times longer than this.
        async with asyncio.timeout(BODY_TIMEOUT * 10):
            answer = await reader.readuntil(b"\r\n\r\n")
    finally:
        trickling.cancel()
        writer.close()
    status_line, *headers = answer.decode().split("\r\n")
    assert status_line.startswith("HTTP/1.1 408"), answer
    assert "Connection: close" in headers


# --- 8. a huge garbage request line ----------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(
            b"GET /?phone=%2B447700900123&x=" + b"A" * 1_048_576 + b" HTTP/1.1", id="huge"
        ),
        pytest.param(b"GET /?phone=+447700900123\x01" + b"\xff" * 4096 + b" HTTP/1.1", id="bad"),
        pytest.param(b"\x16\x03\x01+447700900123" + b"\x00" * 65_536, id="not-http"),
    ],
)
async def test_a_garbage_request_line_is_one_short_line_in_the_log(
    rig: Rig, caplog: pytest.LogCaptureFixture, garbage: bytes
) -> None:
    caplog.set_level(logging.DEBUG)
    reader, writer = await rig.connect()
    writer.write(garbage + b"\r\nHost: smsbot\r\n\r\n")
    answer = b""
    # The server answers after the first 8 KiB and closes; the rest of a huge line meets a
    # closed socket, which may reset the connection before its answer is read.
    with contextlib.suppress(ConnectionError):
        await writer.drain()
        async with asyncio.timeout(5):
            answer = await reader.read()
    writer.close()
    await rig.all_connections_closed()
    assert not answer or b" 400 " in answer.split(b"\r\n")[0], answer[:200]
    server_records = [r for r in caplog.records if not r.name.startswith("asyncio")]
    assert server_records, "the bad request was not logged at all"
    for record in server_records:
        message = record.getMessage()
        assert record.levelno <= logging.WARNING, message[:300]
        assert not record.exc_info and len(message) < 300, message[:300]
        assert PHONE_DIGITS not in message


# --- 9. no phone number or message body in any log record, at DEBUG --------------------------


async def _debug_turn(
    db_url: str, sandbox: Sandbox, aiohttp_client: Any, caplog: pytest.LogCaptureFixture, **env: str
) -> tuple[list[str], list[str]]:
    """Run a whole turn at DEBUG; return (every log line, the texts exchanged).

    An inbound SMS answered by a flow, an operator's message, and a read of the conversation:
    together they touch the webhook, the dispatcher, the sender and the operator API.
    """
    caplog.set_level(logging.DEBUG)
    rig = await _rig(db_url, sandbox, aiohttp_client, **env)
    question, notice = "do you open on saturday mornings", "your results are ready to collect"
    resp = await rig.post(inbound_body("evt_debug", question))
    assert resp.status == 200
    resp = await rig.client.post("/api/messages", json={"to": PHONE, "text": notice}, headers=AUTH)
    assert resp.status == 202
    await rig.bot.run_until_idle()
    resp = await rig.client.get(f"/api/conversations?phone={PHONE_DIGITS}", headers=AUTH)
    assert resp.status == 200
    [reply, _] = [m.content for m in rig.sandbox.messages]
    lines = [r.getMessage() for r in caplog.records]
    lines += [caplog.handler.format(r) for r in caplog.records if r.exc_info]
    return lines, [question, notice, reply.splitlines()[0]]


async def test_debug_logs_carry_no_phone_number_and_no_message(
    db_url: str, sandbox: Sandbox, aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    lines, texts = await _debug_turn(db_url, sandbox, aiohttp_client, caplog)
    assert logging.getLogger("smsbot").isEnabledFor(logging.DEBUG)
    for line in lines:
        assert PHONE_DIGITS not in line, line[:300]
        for said in texts:
            assert said not in line, line[:300]


async def test_log_sensitive_lets_the_database_driver_log_through(
    tmp_path: Path, sandbox: Sandbox, aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # The positive control: the switch exists, and the test above would see what it lets out.
    url = f"sqlite+aiosqlite:///{tmp_path / 'smsbot.db'}"
    lines, _ = await _debug_turn(url, sandbox, aiohttp_client, caplog, SMSBOT_LOG_SENSITIVE="true")
    assert any(PHONE_DIGITS in line for line in lines)


async def test_database_errors_do_not_quote_their_parameters(db: Database) -> None:
    with pytest.raises(SQLAlchemyError) as caught:
        async with db.session() as s:
            await s.execute(text("INSERT INTO no_such_table (phone) VALUES (:p)"), {"p": PHONE})
    assert PHONE_DIGITS not in str(caught.value)


# --- 10. a 405 keeps its Allow header ------------------------------------------------------


async def test_a_405_says_which_methods_are_allowed(rig: Rig) -> None:
    resp = await rig.client.get("/webhooks/divergent")
    assert resp.status == 405
    assert resp.headers["Allow"] == "POST"
    assert (await resp.json())["error"]


# --- 12. secrets, keys and what the server says about itself ---------------------------------


async def test_the_server_header_names_no_versions(rig: Rig) -> None:
    for resp in (
        await rig.client.get("/healthz"),
        await rig.client.get("/nowhere"),
        await rig.client.post("/api/messages", json={}),
    ):
        server = resp.headers.get("Server", "")
        assert "Python" not in server and "aiohttp" not in server, server


def _sandbox_settings(tmp_path: Path, **extra: str) -> Settings:
    env = {"SMSBOT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'smsbot.db'}", **extra}
    return Settings.from_env(env, toml_path=tmp_path / "none.toml")


@pytest.mark.parametrize("secret", [None, "a-secret-of-our-own-choosing"])
async def test_the_sandbox_public_secret_is_named_at_start_up(
    tmp_path: Path, aiohttp_client: Any, caplog: pytest.LogCaptureFixture, secret: str | None
) -> None:
    caplog.set_level(logging.INFO)
    extra = {"SMSBOT_WEBHOOK_SECRET": secret} if secret else {}
    settings = _sandbox_settings(tmp_path, **extra)
    db = Database(settings.database_url)
    await db.create_all()
    bot = Bot(
        settings,
        provider=DivergentClient("sandbox", "http://127.0.0.1:9"),
        handler=FlowRuntime.from_settings(settings.replace(flows_dir=REPO / "flows")),
        db=db,
    )
    await aiohttp_client(create_app(bot, run_workers=False))
    warned = [r.getMessage() for r in caplog.records if "SMSBOT_WEBHOOK_SECRET" in r.getMessage()]
    if secret is None:
        assert [r for r in caplog.records if r.levelno == logging.WARNING and warned]
        assert "public" in warned[0]
    else:
        assert not warned


@pytest.mark.parametrize("variable", ["SMSBOT_WEBHOOK_SECRET", "SMSBOT_WEBHOOK_SECRET_PREVIOUS"])
def test_a_real_provider_refuses_the_sandbox_secret(tmp_path: Path, variable: str) -> None:
    env = {"SMSBOT_DIVERGENT_API_KEY": "a-real-key", variable: "sandbox-secret"}
    if variable.endswith("PREVIOUS"):
        env["SMSBOT_WEBHOOK_SECRET"] = "the-new-secret-after-rotation"
    settings = _sandbox_settings(tmp_path, **env)
    with pytest.raises(ConfigError, match=f"{variable} is the sandbox's public secret"):
        settings.check_serve()


@pytest.mark.parametrize("key", ["Zq", "fifteen-chars-x"])
def test_a_short_operator_key_is_refused_saying_how_to_make_one(tmp_path: Path, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _sandbox_settings(tmp_path, SMSBOT_API_KEY=key)
    message = str(caught.value)
    assert "SMSBOT_API_KEY" in message and "16" in message
    assert "secrets.token_urlsafe(32)" in message
    assert key not in message


def test_an_operator_key_of_sixteen_characters_is_accepted(tmp_path: Path) -> None:
    settings = _sandbox_settings(tmp_path, SMSBOT_API_KEY="sixteen-chars-xy")
    assert settings.api_key is not None
