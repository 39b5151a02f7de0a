"""Scale-out on PostgreSQL: two real `smsbot serve` processes share a backlog, in large batches.

The dispatcher runs several batches at once only for a backlog (a full batch each); fewer due
conversations wait for the batch in flight and go together after it: a batch costs mostly per
transaction, and a spread over 8 workers used to cut a burst of 50 due conversations into 8
batches of about 7. docs/deployment.md ("Scaling out") builds its throughput model on batches
staying large with several processes.
"""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select

from smsbot.app.server.app import create_app
from smsbot.channels.sandbox import Sandbox
from smsbot.clock import SystemClock
from smsbot.engine.contract import EchoHandler
from smsbot.pipeline.bot import Bot
from smsbot.store.engine import Database
from smsbot.store.migrate import upgrade
from smsbot.store.models import events_t, messages_t
from tests.processes import ServerProcess
from tests.support import inbound_body, sandbox_clients, settings_for, signed

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

PHONES = 96  # distinct phones (conversations), each with TEXTS texts queued in order
TEXTS = 5
BATCH_FLOOR = 20.0  # steps per batch summed over both processes (about 7 with a spread to 1)


def _text(phone: int, j: int) -> str:
    return f"p{phone:03d}-m{j}"


async def _queue(intake: TestClient[Any, Any], phone: int) -> None:
    """One phone's texts, each posted once the last was acknowledged (as a phone does)."""
    for j in range(TEXTS):
        sender = f"+4477009{phone:05d}"
        body = inbound_body(f"evt_{_text(phone, j)}", _text(phone, j), sender=sender)
        headers = signed(body, SystemClock())
        resp = await intake.post("/webhooks/divergent", data=body, headers=headers)
        assert resp.status == 200


async def _metric_sums(urls: list[str]) -> tuple[float, float]:
    """(events processed, step batches), summed over the processes' /metrics."""
    events = batches = 0.0
    async with aiohttp.ClientSession() as http:
        for url in urls:
            async with http.get(f"{url}/metrics") as resp:
                assert resp.status == 200
                text = await resp.text()
            for line in text.splitlines():
                if line.startswith("smsbot_events_processed_total{"):
                    events += float(line.rsplit(" ", 1)[1])
                elif line.startswith("smsbot_step_batches_total"):
                    batches += float(line.rsplit(" ", 1)[1])
    return events, batches


async def _settled(db: Database) -> bool:
    """Every inbound event is done and no reply is still queued or being sent."""
    async with db.session() as s:
        open_events = (
            await s.execute(select(func.count()).where(events_t.c.state != "done"))
        ).scalar_one()
        queued = (
            await s.execute(
                select(func.count()).where(messages_t.c.outbox.in_(["pending", "inflight"]))
            )
        ).scalar_one()
    return open_events == 0 and queued == 0


async def test_two_processes_drain_a_backlog_once_each_in_large_batches(
    pg_database: str, sandbox: Sandbox, tmp_path: Path, aiohttp_client: Any
) -> None:
    await asyncio.to_thread(upgrade, pg_database.replace("postgresql://", "postgresql+psycopg://"))
    db_url = pg_database.replace("postgresql://", "postgresql+asyncpg://")
    assert sandbox.url is not None
    texts = {_text(p, j) for p in range(PHONES) for j in range(TEXTS)}
    # The backlog: the real webhook intake (signed, stored durably) with nothing stepping it,
    # as when the provider delivers what queued while every process was down.
    settings = settings_for(db_url, sandbox.url)
    db = Database(db_url)
    bot = Bot(
        settings, providers=sandbox_clients(settings, sandbox.url), handler=EchoHandler(), db=db
    )
    intake = await aiohttp_client(create_app(bot, run_workers=False))
    await asyncio.gather(*(_queue(intake, p) for p in range(PHONES)))
    await intake.close()
    async with db.session() as s:
        pending = (
            await s.execute(select(func.count()).where(events_t.c.state == "pending"))
        ).scalar_one()
    assert pending == len(texts)

    servers = [ServerProcess(db_url, sandbox.url, tmp_path / f"s{i}.log") for i in range(2)]
    try:
        await asyncio.gather(*(s.start() for s in servers))
        urls = [s.url for s in servers]

        async with asyncio.timeout(120):  # a deadline, not a measurement
            while len(sandbox.messages) < len(texts) or not await _settled(db):
                await asyncio.sleep(0.1)

        # Each inbound answered exactly once: one reply per text, none twice, none missing.
        sent = collections.Counter(m.content for m in sandbox.messages)
        assert set(sent) == {f"You said: {t}" for t in texts}
        assert max(sent.values()) == 1, f"{sum(k > 1 for k in sent.values())} replies sent twice"
        per_phone: dict[str, list[str]] = collections.defaultdict(list)
        for m in sandbox.messages:
            per_phone[m.recipient].append(m.content)
        assert all(replies == sorted(replies) for replies in per_phone.values())  # in order
        async with db.session() as s:
            inbound = (
                await s.execute(select(func.count()).where(events_t.c.kind == "inbound"))
            ).scalar_one()
        assert inbound == len(texts)

        events, batches = await _metric_sums(urls)
        assert events == len(texts)  # every step counted once, by whichever process ran it
        assert events / batches >= BATCH_FLOOR, (
            f"{events:.0f} steps in {batches:.0f} batches: {events / batches:.1f} per batch"
        )
        for server in servers:
            assert await server.terminate() == 0
    finally:
        for server in servers:
            server.close()
        await db.dispose()
