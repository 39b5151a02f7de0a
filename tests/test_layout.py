"""The package layout's promises: the engine does no I/O, old public paths and stored jobs work."""

from __future__ import annotations

import asyncio
import datetime as dt
import pickle
import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine, text

from smsbot.store.migrate import upgrade


def _engine_modules() -> list[str]:
    """smsbot itself and every module of smsbot/engine, found on disk so none is forgotten."""
    root = Path(__file__).resolve().parents[1] / "smsbot" / "engine"
    found = [
        ".".join(("smsbot", "engine", *p.relative_to(root).with_suffix("").parts))
        for p in sorted(root.rglob("*.py"))
    ]
    return ["smsbot", "smsbot.flow", *(m.removesuffix(".__init__") for m in found)]


# The in-memory harness is the engine for tests: no database, no server.
ENGINE_MODULES = [*_engine_modules(), "smsbot.testing.harness"]


def _loaded_after_import(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return set(out.split())


def test_the_engine_imports_neither_sqlalchemy_nor_aiohttp() -> None:
    for module in ENGINE_MODULES:
        loaded = _loaded_after_import(module)
        heavy = {m for m in loaded if m.split(".")[0] in {"sqlalchemy", "sqlmodel", "aiohttp"}}
        assert not heavy, f"importing {module} loads {sorted(heavy)[:5]}"
        assert not any(m.startswith(("smsbot.pipeline", "smsbot.store")) for m in loaded), module


def test_the_public_import_paths_keep_working() -> None:
    import smsbot
    import smsbot.flow
    import smsbot.testing
    from smsbot import Conversation, Flow, FlowError, Message, State, VirtualClock

    assert smsbot.flow.Flow is Flow is smsbot.Flow
    assert smsbot.flow.State is State and smsbot.flow.Conversation is Conversation
    assert smsbot.flow.Message is Message and smsbot.flow.FlowError is FlowError
    assert smsbot.testing.BotDriver.__name__ == "BotDriver"
    assert VirtualClock(dt.datetime(2030, 1, 1, tzinfo=dt.UTC)).now().year == 2030
    for name in smsbot.__all__:
        assert getattr(smsbot, name) is not None, name


def _job_row(func_ref: str) -> bytes:
    """A job row's state as APScheduler 3's SQLAlchemyJobStore pickles it."""
    from apscheduler.job import Job
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.triggers.date import DateTrigger

    when = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    job = Job(
        BackgroundScheduler(timezone=dt.UTC),
        id="timer-7",
        func="smsbot.pipeline.scheduler:fire_timer",
        args=(7, "tok"),
        kwargs={},
        trigger=DateTrigger(when, timezone=dt.UTC),
        executor="default",
        misfire_grace_time=None,
        coalesce=True,
        max_instances=1,
        next_run_time=when,
        name="timer-7",
    )
    state = job.__getstate__()
    state["func"] = func_ref
    return pickle.dumps(state, pickle.HIGHEST_PROTOCOL)


async def test_a_job_stored_before_the_layout_change_still_loads(db_url: str) -> None:
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    from smsbot.pipeline.scheduler import FIRE_JOB, JOBSTORE_TABLE, fire_timer

    sync_url = db_url.replace("+aiosqlite", "").replace("+asyncpg", "+psycopg")
    if sync_url.startswith("postgresql://"):
        sync_url = sync_url.replace("postgresql://", "postgresql+psycopg://", 1)
    await asyncio.to_thread(upgrade, sync_url, "0002")
    engine = create_engine(sync_url)
    try:
        store = SQLAlchemyJobStore(engine=engine, tablename=JOBSTORE_TABLE)
        store.start(BackgroundScheduler(timezone=dt.UTC), "default")  # creates its table
        with engine.begin() as conn:
            conn.execute(
                text(
                    f"INSERT INTO {JOBSTORE_TABLE} (id, next_run_time, job_state) "
                    "VALUES ('timer-7', :t, :s)"
                ),
                {"t": 1893456000.0, "s": _job_row("smsbot.scheduler:fire_timer")},
            )
        await asyncio.to_thread(upgrade, sync_url)
        jobs = store.get_all_jobs()
        assert [j.id for j in jobs] == ["timer-7"]  # an unloadable job would have been dropped
        assert jobs[0].func_ref == FIRE_JOB and jobs[0].func is fire_timer
        assert jobs[0].args == (7, "tok")
    finally:
        engine.dispose()
