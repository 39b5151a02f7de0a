"""Timers across real `smsbot serve` processes: restarts, two processes, a killed leader."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import ProgrammingError

from smsbot.channels.sandbox import Sandbox
from smsbot.clock import SystemClock
from smsbot.store.engine import Database
from smsbot.store.migrate import upgrade
from smsbot.store.models import TimerState, conversations_t, new_token, timers_t
from tests.processes import ServerProcess
from tests.support import API_KEY, SECRET, VN
from tests.test_scheduler import timer_lock_holders

pytestmark = pytest.mark.slow


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    sb = Sandbox(api_key=API_KEY)
    await sb.start()
    yield sb
    await sb.stop()


def _sync(url: str) -> str:
    return url.replace("+aiosqlite", "").replace("+asyncpg", "+psycopg")


async def _wait_for(predicate: Callable[[], bool], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


async def _add_reminders(db_url: str, due: list[dt.datetime], per_phone: int) -> None:
    """Insert len(due) scheduled reminders, `per_phone` to a conversation, as steps would."""
    db = Database(db_url)
    now = SystemClock().now()
    try:
        async with db.session() as s, s.begin():
            phones = range((len(due) + per_phone - 1) // per_phone)
            await s.execute(
                conversations_t.insert(),
                [
                    {"virtual_number": VN, "phone": f"+4477009{p:05d}", "data": {}, "version": 0}
                    for p in phones
                ],
            )
            ids = dict(
                (await s.execute(select(conversations_t.c.phone, conversations_t.c.id))).all()
            )
            rows = [
                {
                    "conversation_id": ids[f"+4477009{i // per_phone:05d}"],
                    "name": f"r{i % per_phone}",
                    "kind": "remind",
                    "token": new_token(),
                    "due_at": when,
                    "payload": {"text": f"reminder {i:04d}"},
                    "state": TimerState.SCHEDULED.value,
                    "created_at": now,
                }
                for i, when in enumerate(due)
            ]
            await s.execute(timers_t.insert(), rows)
    finally:
        await db.dispose()


async def _scalar(db_url: str, sql: str) -> object:
    db = Database(db_url)
    try:
        async with db.session() as s:
            return (await s.execute(text(sql))).scalar()
    finally:
        await db.dispose()


async def test_a_reminder_due_while_the_server_was_down_is_sent_once_after_restart(
    db_url: str, sandbox: Sandbox, tmp_path: Path
) -> None:
    await asyncio.to_thread(upgrade, _sync(db_url))
    assert sandbox.url is not None
    first = ServerProcess(db_url, sandbox.url, tmp_path / "first.log")
    second = ServerProcess(db_url, sandbox.url, tmp_path / "second.log")
    try:
        await first.start()
        due = SystemClock().now() + dt.timedelta(seconds=9)
        await _add_reminders(db_url, [due], per_phone=1)

        async def mirrored() -> bool:
            try:
                return await _scalar(db_url, "SELECT count(*) FROM apscheduler_jobs") == 1
            except ProgrammingError:  # the leader has not created its job store yet
                return False

        async with asyncio.timeout(8):  # elected, then it mirrors new timers into its job store
            while not await mirrored():
                await asyncio.sleep(0.1)
        assert await first.terminate() == 0  # SIGTERM before it is due
        assert await mirrored()  # the job outlives the process
        assert SystemClock().now() < due
        await asyncio.sleep((due - SystemClock().now()).total_seconds() + 1.0)
        assert sandbox.messages == []
        await second.start()
        await _wait_for(lambda: len(sandbox.messages) >= 1, 20)
        await asyncio.sleep(1.0)  # a second send, if there were one, would land now
        assert [m.content for m in sandbox.messages] == ["reminder 0000"]
        state = await _scalar(db_url, "SELECT state FROM timers")
        assert state == TimerState.FIRED.value
        assert await second.terminate() == 0
    finally:
        first.close()
        second.close()


@pytest.mark.postgres
async def test_two_processes_fire_2000_timers_once_each_though_the_leader_is_killed(
    pg_database: str, sandbox: Sandbox, tmp_path: Path
) -> None:
    await asyncio.to_thread(upgrade, pg_database.replace("postgresql://", "postgresql+psycopg://"))
    db_url = pg_database.replace("postgresql://", "postgresql+asyncpg://")
    assert sandbox.url is not None
    sandbox.webhook_secret = SECRET  # receipts reconcile sends the killed process left open
    sandbox.receipt_retry_delays = (0.5, 1.0, 2.0, 4.0)
    env = {"SMSBOT_LEASE_SECONDS": "2", "SMSBOT_RESEND_GRACE": "8s"}
    servers = [ServerProcess(db_url, sandbox.url, tmp_path / f"s{i}.log", **env) for i in range(2)]
    async with asyncio.timeout(90):
        try:
            await asyncio.gather(*(s.start() for s in servers))
            by_pid = {s.proc.pid: s for s in servers if s.proc is not None}

            def leader() -> ServerProcess | None:
                holders = timer_lock_holders(pg_database)
                pids = [int(name.rpartition("pid=")[2]) for _, name in holders]
                return by_pid.get(pids[0]) if len(pids) == 1 else None

            async with asyncio.timeout(15):
                while (old := await asyncio.to_thread(leader)) is None:
                    await asyncio.sleep(0.2)
            survivor = servers[1 - servers.index(old)]
            sandbox.webhook_url = f"{survivor.url}/webhooks/divergent"

            n, start = 2_000, SystemClock().now() + dt.timedelta(seconds=3)
            due = [start + dt.timedelta(seconds=5 * i / n) for i in range(n)]
            await _add_reminders(db_url, due, per_phone=4)
            # Kill it mid-way: once it has sent a tenth (waiting for that rather than for a
            # fixed time, which a loaded machine can stretch past the leader's first send).
            await _wait_for(lambda: len(sandbox.messages) >= n // 10, 60)
            old.kill()
            sent_by_old = len(sandbox.messages)

            await _wait_for(lambda: len({m.content for m in sandbox.messages}) >= n, 60)
            assert await asyncio.to_thread(leader) is survivor
            await asyncio.sleep(11)  # past lease + resend grace: a resend would have happened
            sent = collections.Counter(m.content for m in sandbox.messages)
            assert set(sent) == {f"reminder {i:04d}" for i in range(n)}
            duplicates = [c for c, k in sent.items() if k > 1]
            assert duplicates == [], duplicates[:5]
            states = await _scalar(db_url, "SELECT string_agg(DISTINCT state, ',') FROM timers")
            assert states == TimerState.FIRED.value
            print(f"sent before the kill: {sent_by_old}")
            assert 0 < sent_by_old < n, sent_by_old  # the kill really was mid-way
            assert await survivor.terminate() == 0
        finally:
            for s in servers:
                s.close()
