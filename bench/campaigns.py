"""6. Campaigns: import N contacts into a group, time the sync that schedules a campaign's fire
for each (goal: under 10 s for 100,000), then fire them all on a virtual clock, once each, in
order (SQLite; the scheduling also on PostgreSQL when it answers)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path

from sqlalchemy import create_engine, func, pool, select

from bench.common import (
    API_KEY,
    VN,
    Figure,
    postgres_database,
    postgres_problem,
    say,
    server_env,
    skipped,
    sqlite_url,
    wait_for_quiet,
)
from bench.contacts_import import FIELDS, write_csv
from bench.http_benches import Options
from bench.provider import CountingSandbox
from smsbot.app.contacts_io import import_csv
from smsbot.channels.divergent.client import DivergentClient
from smsbot.clock import VirtualClock
from smsbot.config import Settings
from smsbot.engine.campaign import Campaign
from smsbot.engine.runtime import FlowRuntime
from smsbot.pipeline.bot import Bot
from smsbot.pipeline.campaigns import CampaignSync, Plan
from smsbot.sms.templates import SmsTemplates
from smsbot.store.engine import Database
from smsbot.store.models import events_t, timers_t

T0 = dt.datetime(2026, 1, 15, 9, 0, tzinfo=dt.UTC)  # the CSV's appointments start in 2027
GOAL = 10.0
STEP = dt.timedelta(days=7)  # the virtual clock moves a week at a time while firing
CAMPAIGN = Campaign(
    name="reminder",
    group="patients",
    field="appointment_at",
    offset=dt.timedelta(hours=-24),
    send="reminder.txt",
)


def _settings(db_url: str, provider_url: str) -> Settings:
    env = {
        k: v for k, v in server_env(db_url, 8080, provider_url).items() if k.startswith("SMSBOT_")
    }
    env["SMSBOT_DEFAULT_SENDER"] = VN
    # The clock jumps a week at a time: nothing may count as missed on the way.
    env["SMSBOT_REMINDER_MAX_LATENESS"] = "30d"
    return Settings.from_env(env, toml_path=Path("/nonexistent/smsbot.toml"))


async def _schedule(o: Options, db_url: str, csv: Path, n: int, backend: str) -> Figure:
    """Import the CSV into the group, then time one sync pass; check every fire is there."""
    db = Database(db_url)
    await db.create_all()
    settings = _settings(db_url, "http://127.0.0.1:9")
    engine = create_engine(settings.sync_database_url, poolclass=pool.NullPool)
    try:
        t = time.monotonic()
        await asyncio.to_thread(
            import_csv, engine, csv, region="GB", config_fields=FIELDS, now=T0, group="patients"
        )
        import_s = time.monotonic() - t
        await asyncio.to_thread(wait_for_quiet)
        sync = CampaignSync(Plan.of(settings, {CAMPAIGN.name: CAMPAIGN}))
        t = time.monotonic()
        done = await sync.run(db, T0)
        schedule_s = time.monotonic() - t
        async with db.session() as s:
            count = (await s.execute(select(func.count()).select_from(timers_t))).scalar_one()
    finally:
        engine.dispose()
        await db.dispose()
    say(
        f"campaigns {backend}: imported {n:,} in {import_s:.1f} s; one sync read"
        f" {done.contacts:,} contacts and scheduled {done.scheduled:,} fires in {schedule_s:.2f} s"
    )
    return Figure(
        f"6 campaign: schedule {n:,} ({backend})",
        schedule_s,
        "s",
        f"< {GOAL:g} s after the import",
        schedule_s < GOAL and count == n,
        note=f"{n / schedule_s:,.0f} fires/s; {count:,} timers",
    )


async def _fire(o: Options, n: int) -> Figure:
    """Import, sync and fire every fire on a virtual clock; check once each and in order."""
    received: list[str] = []
    sandbox = CountingSandbox(api_key=API_KEY, on_message=lambda m, _t: received.append(m.content))
    url = await sandbox.start("127.0.0.1", 0)
    db_url = sqlite_url(o.workdir)
    settings = _settings(db_url, url)
    templates_dir = o.workdir / "campaign-templates"
    templates_dir.mkdir(exist_ok=True)
    (templates_dir / "reminder.txt").write_text("Reminder for {{ name }}")
    runtime = FlowRuntime(settings, SmsTemplates(templates_dir), [], {CAMPAIGN.name: CAMPAIGN})
    clock = VirtualClock(T0)
    db = Database(db_url)
    await db.create_all()
    csv = o.workdir / "campaign-fire.csv"
    write_csv(csv, n)
    engine = create_engine(settings.sync_database_url, poolclass=pool.NullPool)
    await asyncio.to_thread(
        import_csv, engine, csv, region="GB", config_fields=FIELDS, now=T0, group="patients"
    )
    engine.dispose()
    bot = Bot(settings, provider=DivergentClient(API_KEY, url), handler=runtime, clock=clock, db=db)
    await bot.start(background=False)
    try:
        t = time.monotonic()
        fired = 0
        while (due := await bot.next_due(T0 + dt.timedelta(days=3 * 365))) is not None:
            clock.set(max(due, clock.now() + STEP))
            fired += await bot.fire_due_timers()
            await bot.run_until_idle()
        seconds = time.monotonic() - t
        async with db.session() as s:
            dues = [
                r.payload["due_at"]
                for r in (
                    await s.execute(
                        select(events_t.c.payload)
                        .where(events_t.c.source == "timer")
                        .order_by(events_t.c.id)
                    )
                ).all()
            ]
    finally:
        await bot.stop()
        await sandbox.stop()
    in_order = dues == sorted(dues)
    once = len(received) == n and len(set(received)) == n
    say(
        f"campaigns: fired {fired:,} in {seconds:.1f} s; delivered {len(received):,}, each once"
        f" {once}; firing order by due time {'OK' if in_order else 'WRONG'}"
    )
    return Figure(
        f"6 campaign: fire {n:,} on virtual clock",
        seconds,
        "s",
        "all, once, in order",
        in_order and once and fired == n,
        note="SQLite; the clock moves a week at a time",
    )


async def campaigns(o: Options) -> list[Figure]:
    """The campaign figures: scheduling after an import (each backend), then firing."""
    n = 10_000 if o.quick else 100_000
    csv = o.workdir / "campaign.csv"
    write_csv(csv, n)
    figures = [await _schedule(o, sqlite_url(o.workdir), csv, n, "SQLite")]
    if (problem := postgres_problem()) is None:
        with postgres_database() as url:
            figures.append(await _schedule(o, url, csv, n, "PostgreSQL"))
    else:
        figures.append(skipped(f"6 campaign: schedule {n:,} (PostgreSQL)", problem))
    figures.append(await _fire(o, n))
    return figures
