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
