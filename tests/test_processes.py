"""Several real server processes, and crashes: nothing lost, nothing done twice, order kept."""

from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import select

from smsbot.channels.sandbox import Sandbox
from smsbot.clock import SystemClock
from smsbot.store.engine import Database
from smsbot.store.migrate import upgrade
from smsbot.store.models import conversations_t, events_t
from tests.processes import ServerProcess
from tests.support import VN, inbound_body, signed

pytestmark = pytest.mark.slow
RETRY_FOR = 60.0  # seconds a phone's webhook is retried while no server answers


def _sync(url: str) -> str:
    return url.replace("+aiosqlite", "").replace("+asyncpg", "+psycopg")


async def _post_phone(
    http: aiohttp.ClientSession, urls: list[str], phone: int, n: int, accepted: list[str]
) -> None:
    """One phone texting n times, each after the previous was acknowledged (as a phone does)."""
    for j in range(n):
        event_id = f"evt_p{phone:03d}_m{j:02d}"
        body = inbound_body(event_id, f"p{phone:03d}-m{j:02d}", sender=f"+4477009{phone:05d}")
        url = urls[(phone + j) % len(urls)] + "/webhooks/divergent"
        # Like the provider: retry until a 2xx, for longer than a restarted server takes to
        # come up (50 tries 50 ms apart, as before, were not enough on a slow host).
        deadline = time.monotonic() + RETRY_FOR
        while time.monotonic() < deadline:
            try:
                async with http.post(url, data=body, headers=signed(body, SystemClock())) as r:
                    if r.status == 200:
                        accepted.append(event_id)
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
            url = urls[0] + "/webhooks/divergent"


async def _wait_for(predicate: object, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.05)


async def _check_each_once_in_order(db_url: str, sandbox: Sandbox, phones: int, n: int) -> None:
    sent = collections.Counter(m.content for m in sandbox.messages)
    expected = {f"You said: p{p:03d}-m{j:02d}" for p in range(phones) for j in range(n)}
    assert set(sent) == expected
    assert max(sent.values()) == 1, [c for c, k in sent.items() if k > 1][:5]
    db = Database(db_url)
    try:
        async with db.session() as s:
            convos = (await s.execute(select(conversations_t))).all()
            events = (
                await s.execute(
                    select(events_t).where(events_t.c.kind == "inbound").order_by(events_t.c.id)
                )
            ).all()
    finally:
        await db.dispose()
    arrival: dict[str, list[str]] = collections.defaultdict(list)
    for e in events:
        arrival[e.phone].append(e.payload["body"])
    assert {e.state for e in events} == {"done"}
    assert len(convos) == phones
    for c in convos:
        assert c.virtual_number == VN
        assert c.data["seen"] == n  # no lost update: never two steps at once
        assert c.data["recent"] == arrival[c.phone]  # processed in arrival order


async def test_two_processes_share_one_postgres_database(
    pg_database: str, sandbox: Sandbox, tmp_path: Path
) -> None:
    await asyncio.to_thread(upgrade, pg_database.replace("postgresql://", "postgresql+psycopg://"))
    db_url = pg_database.replace("postgresql://", "postgresql+asyncpg://")
    assert sandbox.url is not None
    servers = [ServerProcess(db_url, sandbox.url, tmp_path / f"s{i}.log") for i in range(2)]
    try:
        await asyncio.gather(*(s.start() for s in servers))
        accepted: list[str] = []
        phones, n = 100, 10
        async with aiohttp.ClientSession() as http:
            await asyncio.gather(
                *(
                    _post_phone(http, [s.url for s in servers], p, n, accepted)
                    for p in range(phones)
                )
            )
        assert len(accepted) == phones * n
        await _wait_for(lambda: len(sandbox.messages) >= phones * n, 120)
        await asyncio.sleep(0.5)  # a duplicate send, if any, would land now
        await _check_each_once_in_order(db_url, sandbox, phones, n)
        for s in servers:
            assert await s.terminate() == 0  # SIGTERM: a clean exit
    finally:
        for s in servers:
            s.close()


async def test_sigkill_mid_load_then_restart_loses_nothing_and_repeats_nothing(
    db_url: str, sandbox: Sandbox, tmp_path: Path
) -> None:
    await asyncio.to_thread(upgrade, _sync(db_url))
    assert sandbox.url is not None
    sandbox.webhook_secret = "whsec_pipeline_test"
    env = {"SMSBOT_LEASE_SECONDS": "2", "SMSBOT_RESEND_GRACE": "8s"}
    sandbox.receipt_retry_delays = (0.5, 1.0, 2.0, 4.0)
    first = ServerProcess(db_url, sandbox.url, tmp_path / "first.log", **env)
    second = ServerProcess(db_url, sandbox.url, tmp_path / "second.log", **env)
    second.port, second.url = first.port, first.url
    second.env["SMSBOT_PORT"] = str(first.port)
    sandbox.webhook_url = f"{first.url}/webhooks/divergent"  # receipts reconcile lapsed claims
    phones, n = 30, 10
    accepted: list[str] = []
    try:
        await first.start()
        async with aiohttp.ClientSession() as http:
            load = asyncio.gather(
                *(_post_phone(http, [first.url], p, n, accepted) for p in range(phones))
            )
            await _wait_for(lambda: len(accepted) >= phones * n // 3, 60)
            first.kill()
            await second.start()
            await load  # the phones' retries reach the restarted server
        assert len(accepted) >= phones * n
        await _wait_for(lambda: len(sandbox.messages) >= phones * n, 120)
        await asyncio.sleep(11)  # past lease + grace: a lapsed claim that would resend, has
        await _check_each_once_in_order(db_url, sandbox, phones, n)
    finally:
        first.close()
        second.close()
