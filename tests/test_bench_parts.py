"""Parts of the benchmarks (bench/) that only `make bench` runs otherwise: run them small here,
so a change that breaks one is found by `make test`, not by the next benchmark run."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy import select

from bench.timers import _insert_reminders
from smsbot.store.engine import Database
from smsbot.store.models import TimerState, conversations_t, timers_t


async def test_the_realtime_timers_bench_inserts_one_reminder_per_conversation(
    tmp_path: Path,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'bench.db'}"
    db = Database(url)
    await db.create_all()
    await db.dispose()
    start = dt.datetime(2026, 1, 15, 9, 0, tzinfo=dt.UTC).timestamp()
    await _insert_reminders(url, [start, start + 1, start + 2])
    db = Database(url)
    try:
        async with db.session() as s:
            convos = dict(
                (await s.execute(select(conversations_t.c.id, conversations_t.c.phone)))
                .tuples()
                .all()
            )
            timers = (await s.execute(select(timers_t).order_by(timers_t.c.due_at))).all()
    finally:
        await db.dispose()
    assert len(convos) == 3
    assert [t.state for t in timers] == [TimerState.SCHEDULED.value] * 3
    assert {t.conversation_id for t in timers} == set(convos)
    assert [t.payload["text"] for t in timers] == ["reminder 0", "reminder 1", "reminder 2"]


def test_a_profile_of_several_processes_groups_samples_by_thread(tmp_path: Path) -> None:
    """`bench --profile` on `smsbot start` (py-spy --subprocesses): each line starts with its
    processes, whose argv may hold ";"; samples group by thread name, the CPU is spread by
    running samples."""
    from bench.profiler import spawned_report

    child = 'process 7:"python -c from multiprocessing.spawn import spawn_main; spawn_main(x=1)"'
    raw = tmp_path / "start.raw"
    raw.write_text(
        f'process 5:"python -m smsbot start";{child};thread (7): MainThread;'
        "run (smsbot/pipeline/starts.py:10);dumps (json/__init__.py:1) 30\n"
        f'process 5:"python -m smsbot start";{child};thread (8): smsbot-sqlite_0;'
        "whole (smsbot/store/sqlite_writer.py:5);sqlite3VdbeExec (libsqlite3.so.0) 10\n"
    )
    report = spawned_report(raw, wall=2.0, cpu_total=4.0, work=(1_000, "message"))
    assert "4,000 µs of CPU per message" in report
    assert "3.00 s  main (event loop)" in report and "1.00 s  smsbot-sqlite" in report
    assert "json" in report and "SQLite (C library)" in report
    assert "spawn_main" not in report  # no process's argv taken for a thread


async def test_the_turns_ceiling_makes_a_whole_turn_once(tmp_path: Path) -> None:
    """bench/turns_ceiling.py bounds benchmark 2 only if it does a whole turn: the event
    stored once, the conversation, both messages, the reply accepted by the provider and its
    outcome written."""
    import asyncio
    import sqlite3
    import time as wall

    import aiohttp
    from aiohttp import web

    from bench.provider import CountingSandbox
    from bench.turns_ceiling import Turns, make_app
    from smsbot.channels.divergent.signature import sign

    path = tmp_path / "ceiling.db"
    db = Database(f"sqlite+aiosqlite:///{path}")
    await db.create_all()
    await db.dispose()
    replied = asyncio.Event()
    provider = CountingSandbox(api_key="k", on_message=lambda message, at: replied.set())
    provider_url = await provider.start()
    turns = Turns(str(path), provider_url, "k", "+447700900001")
    runner = web.AppRunner(make_app("s3cret", turns))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    body = (
        b'{"id":"evt_1","eventType":2,"data":{"messageId":"inb_1","inboundNumber":"+447700900001",'
        b'"sender":"+447700900123","body":"hi","receivedAt":"2026-01-15T14:22:30Z"}}'
    )
    try:
        async with aiohttp.ClientSession() as client:
            for _ in range(2):  # the second is a duplicate: answered, not stepped
                stamp = str(int(wall.time()))
                headers = {
                    "X-Webhook-Timestamp": stamp,
                    "X-Webhook-Signature": sign("s3cret", stamp, body),
                }
                async with client.post(
                    f"http://127.0.0.1:{port}/webhooks/divergent", data=body, headers=headers
                ) as response:
                    assert response.status == 200
            await asyncio.wait_for(replied.wait(), 10)
        conn = sqlite3.connect(path)
        deadline = wall.monotonic() + 10  # the outcome is written by the writer's next group
        while conn.execute(
            "SELECT outbox FROM messages WHERE direction = 'outbound'"
        ).fetchone() != ("done",):
            assert wall.monotonic() < deadline, "the reply's outcome was never written"
            await asyncio.sleep(0.01)
        events = conn.execute("SELECT event_id, state FROM webhook_events").fetchall()
        convos = conn.execute("SELECT phone, version FROM conversations").fetchall()
        messages = conn.execute(
            "SELECT direction, body, outbox, status FROM messages ORDER BY direction"
        ).fetchall()
        conn.close()
    finally:
        await runner.cleanup()
        await provider.stop()
    assert [m.content for m in provider.messages] == ["You said: hi"]
    assert provider.messages[0].recipient == "+447700900123"
    assert events == [("evt_1", "done")]
    assert convos == [("+447700900123", 1)]
    assert messages == [("inbound", "hi", None, None), ("outbound", "You said: hi", "done", "sent")]
