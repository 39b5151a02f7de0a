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
