"""Sending, one account per workspace: each client's messages go only through its own provider
account, and one account's outage, 429s, rate limits or backlog never delay another's.

Two workspaces, `a` and `b`, on two real sandboxes on loopback with different API keys (a call
with the wrong key is refused with 401, so a message that reached a sandbox went through that
workspace's own client). Messages are queued in the outbox as the dispatcher writes them, with
their workspace. Time is the virtual clock, and the rate limiters read a virtual monotonic
clock: nothing here sleeps to let time pass.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import re
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from sqlalchemy import func, select, text

from smsbot.app.assembly import build_provider, build_providers, local_sandbox
from smsbot.app.serve import _app as serve_app
from smsbot.app.server.keys import BOT, SANDBOX
from smsbot.channels.base import OutboundSms
from smsbot.channels.divergent.client import DivergentClient
from smsbot.channels.retry import RetryPolicy
from smsbot.channels.sandbox import Sandbox
from smsbot.clock import VirtualClock
from smsbot.config import ConfigError, Settings
from smsbot.engine.contract import EchoHandler, Origin
from smsbot.pipeline.bot import Bot
from smsbot.pipeline.rate_limit import RateLimiter, number_rates, workspace_rates
from smsbot.sms.status import DeliveryStatus
from smsbot.store.engine import Database
from smsbot.store.models import Direction, OutboxState, messages_t, new_id
from smsbot.testing.driver import BotDriver, driver_settings
from tests.support import API_KEY, no_sleep
from tests.test_query_plans import Statements, postgres_problems, sqlite_problems
from tests.test_testing_kit import echo_project
from tests.test_workspaces_config import KEY_A, SECRET_A, load

T0 = dt.datetime(2026, 1, 15, 9, 0, tzinfo=dt.UTC)
KEY_B = "workspace-b-api-key"
VN_A, VN_A2 = "+447700900200", "+447700900201"
VN_B = "+447700900300"


def phone(i: int) -> str:
    return f"+4477009{i:05d}"


def write_settings(
    tmp_path: Path, db_url: str, a_url: str, b_url: str, extra: str = "", a_rate: float = 1000
) -> Settings:
    """Workspaces a and b, each on its own sandbox with its own key; `extra` TOML appended."""
    toml = tmp_path / "smsbot.toml"
    toml.write_text(
        f"""
[workspaces.a]
provider = "sandbox"
url = "{a_url}"
api_key = "{API_KEY}"
numbers = ["{VN_A}", "{VN_A2}"]
send_rate = {a_rate}

[workspaces.b]
provider = "sandbox"
url = "{b_url}"
api_key = "{KEY_B}"
numbers = ["{VN_B}"]
send_rate = 1000
{extra}
"""
    )
    return Settings.from_env({"SMSBOT_DATABASE_URL": db_url}, toml_path=toml)


class Rig:
    """A bot with workspaces a and b (and default), clients from app.assembly.build_providers."""

    def __init__(self, bot: Bot, sandbox_a: Sandbox, sandbox_b: Sandbox) -> None:
        assert isinstance(bot.clock, VirtualClock)
        self.bot = bot
        self.clock: VirtualClock = bot.clock
        self.a = sandbox_a
        self.b = sandbox_b
        self.now = 0.0  # the rate limiters' monotonic clock, moved by hand

    def tick(self, seconds: float) -> None:
        """Move both clocks on."""
        self.now += seconds
        self.clock.advance(dt.timedelta(seconds=seconds))

    async def queue(
        self,
        workspace: str,
        sender: str,
        phones: Iterable[str],
        origin: Origin = Origin.REPLY,
    ) -> list[str]:
        """Queue one message to each phone, as a step writes them; return their ids."""
        now = self.clock.now()
        rows: list[dict[str, Any]] = [
            {
                "id": new_id(),
                "direction": Direction.OUTBOUND.value,
                "workspace": workspace,
                "virtual_number": sender,
                "phone": p,
                "body": f"{workspace}: hello {p}",
                "origin": origin.value,
                "status": DeliveryStatus.QUEUED.value,
                "outbox": OutboxState.PENDING.value,
                "send_after": now,
                "created_at": now,
                "status_at": now,
                "segments": 1,
                "encoding": "GSM-7",
                "attempts": 0,
            }
            for p in phones
        ]
        async with self.bot.db.session() as s, s.begin():
            await s.execute(messages_t.insert(), rows)
        self.bot.notify_senders()
        return [r["id"] for r in rows]

    async def pending(self, workspace: str) -> int:
        query = select(func.count()).where(
            messages_t.c.workspace == workspace,
            messages_t.c.outbox == OutboxState.PENDING.value,
        )
        async with self.bot.db.session() as s:
            return int((await s.execute(query)).scalar_one())


@pytest.fixture
async def sandbox_b() -> AsyncIterator[Sandbox]:
    """Workspace b's provider: a second sandbox, with its own API key."""
    async with Sandbox(api_key=KEY_B) as sb:
        yield sb


async def make_rig(
    db_url: str, sandbox: Sandbox, sandbox_b: Sandbox, tmp_path: Path, **options: Any
) -> Rig:
    assert sandbox.url is not None and sandbox_b.url is not None
    settings = write_settings(tmp_path, db_url, sandbox.url, sandbox_b.url, **options)
    db = Database(db_url)
    await db.create_all()
    # attempts=1: the client does not retry (and so never sleeps); the outbox retries durably
    providers = build_providers(settings, attempts=1)
    bot = Bot(settings, providers=providers, handler=EchoHandler(), clock=VirtualClock(T0), db=db)
    rig = Rig(bot, sandbox, sandbox_b)
    for sender in bot.senders.values():
        sender.limiter.monotonic = lambda: rig.now
        sender.sleep = no_sleep
    return rig


@pytest.fixture
async def rig(
    db_url: str, sandbox: Sandbox, sandbox_b: Sandbox, tmp_path: Path
) -> AsyncIterator[Rig]:
    made = await make_rig(db_url, sandbox, sandbox_b, tmp_path)
    yield made
    await made.bot.stop()


def recipients(sandbox: Sandbox) -> collections.Counter[str]:
    return collections.Counter(m.recipient for m in sandbox.messages)


# --- each workspace through its own account ----------------------------------------------------


async def test_each_workspace_sends_only_through_its_own_account(rig: Rig) -> None:
    bot = rig.bot
    assert set(bot.senders) == set(bot.providers) == {"default", "a", "b"}
    assert bot.provider_for("a") is not bot.provider_for("b")
    assert bot.provider is bot.provider_for("default") and bot.sender is bot.senders["default"]
    with pytest.raises(KeyError, match="no workspace 'c'"):
        bot.provider_for("c")
    await rig.queue("a", VN_A, [phone(1), phone(2)])
    await rig.queue("a", VN_A2, [phone(3)])
    await rig.queue("b", VN_B, [phone(1), phone(4)])
    async with asyncio.timeout(30):
        assert await bot.run_until_idle() == 5
    assert {(m.sender, m.recipient) for m in rig.a.messages} == {
        (VN_A, phone(1)),
        (VN_A, phone(2)),
        (VN_A2, phone(3)),
    }
    assert {(m.sender, m.recipient) for m in rig.b.messages} == {(VN_B, phone(1)), (VN_B, phone(4))}
    assert {m.content.split(":")[0] for m in rig.a.messages} == {"a"}
    assert {m.content.split(":")[0] for m in rig.b.messages} == {"b"}
    assert {c.status for c in rig.a.calls + rig.b.calls} == {200}  # no key was refused
    metrics = bot.metrics
    assert metrics.value("smsbot_messages_sent_total", workspace="a") == 3
    assert metrics.value("smsbot_messages_sent_total", workspace="b") == 2
    assert metrics.value("smsbot_messages_sent_total") == 5  # every workspace
    assert 'smsbot_messages_sent_total{workspace="b"} 2' in metrics.render()


async def test_a_message_of_an_unconfigured_workspace_is_sent_by_nobody(rig: Rig) -> None:
    """No client of another account ever takes it: it waits for its workspace to come back."""
    await rig.queue("gone", VN_A, [phone(1)])
    async with asyncio.timeout(30):
        assert await rig.bot.run_until_idle() == 0
    assert rig.a.messages == rig.b.messages == []
    assert await rig.pending("gone") == 1


def test_a_bot_needs_a_client_for_every_workspace(tmp_path: Path) -> None:
    settings = write_settings(
        tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", "http://a", "http://b"
    )
    one = build_provider(settings)
    with pytest.raises(ValueError, match=r"no provider client for workspace\(s\) a, b"):
        Bot(settings, provider=one, handler=EchoHandler())
    providers = build_providers(settings)
    assert set(providers) == {"default", "a", "b"}
    with pytest.raises(ValueError, match="differ"):
        Bot(settings, provider=one, providers=providers, handler=EchoHandler())


async def test_a_sandbox_workspace_without_a_url_uses_the_local_sandbox(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """`smsbot serve` runs one sandbox for every sandbox workspace that has no url of its own."""
    toml = tmp_path / "smsbot.toml"
    toml.write_text('[workspaces.shop]\nprovider = "sandbox"\nnumbers = ["+447700900300"]\n')
    env = {
        "SMSBOT_PROVIDER": "divergent",
        "SMSBOT_DIVERGENT_API_KEY": "k" * 20,
        "SMSBOT_WEBHOOK_SECRET": "whsec_" + "s" * 20,
    }
    settings = Settings.from_env(env, toml_path=toml)
    shop = local_sandbox(settings)
    assert shop is not None and shop.name == "shop"
    assert local_sandbox(Settings.from_env(env, toml_path=tmp_path / "none.toml")) is None
    async with Sandbox() as local:  # the local sandbox takes the key "sandbox"
        client = build_providers(settings, sandbox_url=local.url)["shop"]
        try:
            await client.send(OutboundSms("+447700900300", phone(1), "hi"))
        finally:
            await client.close()
        assert [m.recipient for m in local.messages] == [phone(1)]


async def test_serve_runs_the_sandbox_a_declared_workspace_needs(tmp_path: Path) -> None:
    """The default account is Divergent; the shop tries things out on the local sandbox."""
    toml = tmp_path / "smsbot.toml"
    toml.write_text(f'[workspaces.shop]\nprovider = "sandbox"\nnumbers = ["{VN_B}"]\n')
    env = {
        "SMSBOT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'serve.db'}",
        "SMSBOT_PROVIDER": "divergent",
        "SMSBOT_DIVERGENT_API_KEY": "k" * 20,
        "SMSBOT_WEBHOOK_SECRET": "whsec_" + "s" * 20,
        "SMSBOT_SANDBOX_PORT": "0",
    }
    app = await serve_app(Settings.from_env(env, toml_path=toml), EchoHandler())
    sandbox, bot = app[SANDBOX], app[BOT]
    sandbox.webhook_url = None  # no bot listens: no receipts
    try:
        assert set(bot.providers) == {"default", "shop"}
        await bot.provider_for("shop").send(OutboundSms(VN_B, phone(1), "hi"))
        assert [(m.sender, m.recipient) for m in sandbox.messages] == [(VN_B, phone(1))]
    finally:
        for client in bot.providers.values():
            await client.close()
        await sandbox.stop()


async def test_the_test_kit_sends_every_workspace_to_its_sandbox(tmp_path: Path) -> None:
    """A project whose smsbot.toml declares a real account: the kit never reaches it."""
    project = echo_project(tmp_path / "project")
    (project / "smsbot.toml").write_text(
        '[workspaces.default]\nnumbers = ["+447700900100"]\n'
        '[workspaces.clinic]\nprovider = "divergent"\nurl = "https://connect-api.divergent.cloud"\n'
        f'api_key = "{"k" * 20}"\nwebhook_secret = "whsec_{"s" * 20}"\nnumbers = ["{VN_B}"]\n'
    )
    settings = driver_settings(project, f"sqlite+aiosqlite:///{tmp_path / 'kit.db'}")
    async with BotDriver(settings) as driver:
        assert set(driver.bot.providers) == {"default", "clinic"}
        await driver.bot.provider_for("clinic").send(OutboundSms(VN_B, phone(1), "hi"))
        await driver.sandbox.wait_for_receipts()  # its receipt is posted back to the bot
        assert [(m.sender, m.recipient) for m in driver.sandbox.messages] == [(VN_B, phone(1))]


# --- one account's trouble is its own ----------------------------------------------------------


async def test_an_outage_of_a_does_not_delay_b(rig: Rig) -> None:
    rig.a.set_failure(503)
    await rig.queue("a", VN_A, [phone(i) for i in range(10)])
    await rig.queue("b", VN_B, [phone(i) for i in range(10)])
    async with asyncio.timeout(30):
        await rig.bot.run_until_idle()
        # b's went at once, on the same instant of the clock; a's wait for their backoff
        assert recipients(rig.b) == collections.Counter(phone(i) for i in range(10))
        assert rig.a.messages == [] and await rig.pending("a") == 10
        for round_ in range(3):  # b keeps sending through a's outage, with no delay
            await rig.queue("b", VN_B, [phone(100 + round_)])
            assert await rig.bot.send_until_idle() == 1
            assert rig.b.messages[-1].recipient == phone(100 + round_)
        assert {c.status for c in rig.a.calls} == {503}
        rig.a.set_failure(None)  # a recovers: after its backoff, each of its messages goes once
        rig.tick(120)
        await rig.bot.run_until_idle()
    assert recipients(rig.a) == collections.Counter(phone(i) for i in range(10))
    assert len(rig.b.messages) == 13 and {c.status for c in rig.b.calls} == {200}
    assert rig.bot.metrics.value("smsbot_send_retries_total", workspace="a") == 10
    assert rig.bot.metrics.value("smsbot_send_retries_total", workspace="b") == 0


async def test_a_429_with_retry_after_quiets_a_only(rig: Rig) -> None:
    rig.a.set_failure(429, count=1, retry_after=120)
    await rig.queue("a", VN_A, [phone(1)])
    async with asyncio.timeout(30):
        await rig.bot.run_until_idle()
        assert [c.status for c in rig.a.calls] == [429]
        rig.tick(10)
        await rig.queue("a", VN_A, [phone(2)])  # a must stay quiet for 120 s
        sent_b = await rig.queue("b", VN_B, [phone(2), phone(3)])  # b need not
        await rig.bot.run_until_idle()
        assert [c.status for c in rig.a.calls] == [429]  # not one call to a before then
        assert len(rig.b.messages) == len(sent_b) == 2
        assert {m.client_reference for m in rig.b.messages} == set(sent_b)
        rig.tick(111)
        await rig.bot.run_until_idle()
    assert recipients(rig.a) == collections.Counter([phone(1), phone(2)])
    assert [c.status for c in rig.a.calls] == [429, 200]  # both in one bulk call


class HeldAccount:
    """An account whose provider holds every send call open (connections accepted, no answer)
    until released, then answers 503: a real aiohttp server on loopback."""

    def __init__(self) -> None:
        self.arrived = asyncio.Event()  # a send call is being held
        self.release = asyncio.Event()
        self.calls = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _hold(self, request: web.Request) -> web.Response:
        self.calls += 1
        self.arrived.set()
        await self.release.wait()
        return web.json_response({"error": "down"}, status=503)

    async def __aenter__(self) -> HeldAccount:
        app = web.Application()
        app.router.add_post("/sms/send", self._hold)
        app.router.add_post("/sms/send/bulk", self._hold)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        assert self._runner is not None
        await self._runner.cleanup()


@contextlib.asynccontextmanager
async def a_is_held(rig: Rig) -> AsyncIterator[HeldAccount]:
    """Workspace a's sender talks to a HeldAccount instead of its sandbox."""
    async with HeldAccount() as held:
        client = DivergentClient(API_KEY, held.url, retry=RetryPolicy(attempts=1))
        sender = rig.bot.senders["a"]
        own, sender.provider = sender.provider, client
        try:
            yield held
        finally:
            held.release.set()
            sender.provider = own
            await client.close()


async def test_a_hung_provider_does_not_hold_up_b(rig: Rig) -> None:
    """a's call is held open at its provider; b's sender sends meanwhile."""
    await rig.queue("a", VN_A, [phone(1)])
    await rig.queue("b", VN_B, [phone(1), phone(2)])
    async with asyncio.timeout(30), a_is_held(rig) as held:
        stuck = asyncio.create_task(rig.bot.senders["a"].send_once())
        await held.arrived.wait()
        assert await rig.bot.senders["b"].send_until_idle() == 2
        assert recipients(rig.b) == collections.Counter([phone(1), phone(2)])
        assert not stuck.done()  # a's call is still held
        held.release.set()  # answered 503: a's message is retried later
        assert await stuck == 1
    assert held.calls == 1 and await rig.pending("a") == 1


async def test_background_senders_run_side_by_side(rig: Rig) -> None:
    """With the workers running, b's messages go while a's call is held open."""
    async with asyncio.timeout(30), a_is_held(rig) as held:
        await rig.bot.start()
        await rig.queue("a", VN_A, [phone(1)])
        await held.arrived.wait()
        await rig.queue("b", VN_B, [phone(i) for i in range(5)])
        while len(rig.b.messages) < 5:  # b's sender, in the background
            await asyncio.sleep(0.01)
        assert held.calls == 1 and not held.release.is_set()  # a's one call is still held
    assert recipients(rig.b) == collections.Counter(phone(i) for i in range(5))


# --- rate limits: per account, per number ------------------------------------------------------


async def test_rate_limits_per_account_and_per_number(
    db_url: str, sandbox: Sandbox, sandbox_b: Sandbox, tmp_path: Path
) -> None:
    """a: 3 a second through its account, and VN_A2 1 a second of those; b: its own 1,000."""
    extra = f'[numbers."{VN_A2}"]\nsend_rate = 1\n'
    rig = await make_rig(db_url, sandbox, sandbox_b, tmp_path, extra=extra, a_rate=3)
    try:
        await rig.queue("a", VN_A2, [phone(100 + i) for i in range(6)])  # the oldest
        rig.clock.advance(dt.timedelta(milliseconds=1))
        await rig.queue("a", VN_A, [phone(i) for i in range(6)])
        await rig.queue("b", VN_B, [phone(i) for i in range(24)])
        per_second: list[dict[str, int]] = []
        async with asyncio.timeout(60):
            for second in range(6):
                before = len(rig.a.messages)
                await rig.bot.send_until_idle()
                per_second.append(
                    dict(collections.Counter(m.sender for m in rig.a.messages[before:]))
                )
                if second == 0:
                    assert len(rig.b.messages) == 24  # all at once: a's limits are a's alone
                rig.tick(1)
    finally:
        await rig.bot.stop()
    # The account's 3 a second while both numbers have messages, VN_A2 never more than its 1;
    # then VN_A2 alone, at its own 1 a second though the account has room.
    assert per_second == [{VN_A2: 1, VN_A: 2}] * 3 + [{VN_A2: 1}] * 3


def test_rates_of_a_workspace(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    settings = write_settings(tmp_path, url, "http://a", "http://b")
    assert workspace_rates(settings, settings.workspaces["a"]) == (0.0, 1000.0)  # the account's
    # default: SMSBOT_SEND_RATE per sender, as before workspaces (no account-wide limit)
    assert workspace_rates(settings, settings.workspaces["default"]) == (10.0, None)
    toml = tmp_path / "default.toml"
    toml.write_text("[workspaces.default]\nsend_rate = 4\n")
    own = Settings.from_env({"SMSBOT_DATABASE_URL": url}, toml_path=toml)
    assert workspace_rates(own, own.workspaces["default"]) == (0.0, 4.0)
    assert number_rates({"07700 900201": {"send_rate": 2}, VN_B: {"flows": []}}) == {VN_A2: 2.0}
    assert number_rates({VN_B: {"send_rate": "0.5"}}) == {VN_B: 0.5}
    for bad in (0, -1, "fast", True):
        with pytest.raises(ConfigError, match=re.escape(f'[numbers."{VN_B}"].send_rate must be')):
            number_rates({VN_B: {"send_rate": bad}})


def test_the_documented_limits(tmp_path: Path) -> None:
    """docs/workspaces.md's example: the clinic's account 5 a second, its number 1."""
    page = Path(__file__).resolve().parents[1] / "docs" / "workspaces.md"
    blocks = re.findall(r"^```toml\n(.*?)^```", page.read_text(encoding="utf-8"), re.M | re.S)
    env = {"CLINIC_API_KEY": KEY_A, "CLINIC_WEBHOOK_SECRET": SECRET_A}
    settings = load(tmp_path, "\n".join(blocks), env)
    assert number_rates(settings.numbers) == {"+447700900200": 1.0}
    rates = {w.name: workspace_rates(settings, w) for w in settings.workspaces}
    assert rates == {"default": (10.0, None), "clinic": (0.0, 5.0), "shop": (0.0, 10.0)}


def test_the_limiter_draws_on_the_number_and_the_account() -> None:
    now = [0.0]
    limiter = RateLimiter(0, lambda: now[0], rates={VN_A2: 1}, account_rate=2)
    assert [limiter.take(VN_A2), limiter.take(VN_A2), limiter.take(VN_A)] == [True, False, True]
    assert not limiter.ready(VN_A)  # the account's 2 are used
    assert limiter.wait_hint([VN_A, VN_A2]) == pytest.approx(0.5)
    now[0] = 0.5
    assert limiter.take(VN_A) and not limiter.take(VN_A2)  # VN_A2's own second is not over
    now[0] = 1.0
    assert limiter.take(VN_A2)
    per_sender = RateLimiter(1, lambda: now[0])  # default without an account rate, as before
    assert per_sender.take(VN_A) and per_sender.take(VN_A2) and not per_sender.take(VN_A)


# --- one workspace's backlog is not another's --------------------------------------------------


async def test_a_backlog_of_ten_thousand_does_not_hold_up_b(rig: Rig) -> None:
    """a's campaign of 10,000 waits in the outbox (its provider is down); b's reply goes in
    b's first claim, and that claim reads none of a's backlog (its plan and its work)."""
    rig.a.set_failure(503)
    bulk = [phone(i) for i in range(10_000)]
    for start in range(0, len(bulk), 2_000):
        await rig.queue("a", VN_A, bulk[start : start + 2_000], origin=Origin.FLOW)
    if rig.bot.db.is_postgres:
        async with rig.bot.db.engine.begin() as conn:
            await conn.execute(text("ANALYZE messages"))
    reply = await rig.queue("b", VN_B, [phone(5)])
    async with asyncio.timeout(60):
        with Statements() as recorded:
            claimed = await rig.bot.senders["b"].claim()
        assert [c.id for c in claimed] == reply
        assert await rig.bot.senders["b"].send_until_idle() == 0  # nothing else of b's
    assert await rig.pending("a") == 10_000
    statements = {s: p for s, p in recorded.seen.items() if not s.startswith(("BEGIN", "COMMIT"))}
    assert any("workspace" in s and "ORDER BY" in s for s in statements)
    if rig.bot.db.is_postgres:
        problems = await postgres_problems(rig.bot, statements)
    else:
        problems = sqlite_problems(rig.bot.db.url.split(":///", 1)[1], statements)
    assert not problems, "\n".join(problems)
