"""Benchmark 3: a bulk start of the appointment flow, sent by a running `smsbot serve`."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import os
import subprocess
import time
from pathlib import Path

from bench.common import (
    Child,
    Figure,
    Provider,
    cpu_seconds,
    free_port,
    phone,
    proc_status_kb,
    python_argv,
    say,
    server_env,
    sqlite_url,
    wait_for_quiet,
)
from bench.http_benches import Options, report_profile
from bench.profiler import Profile

BULK_GOAL_RATE = 20_000
BULK_GOAL_MB = 500


def write_csv(path: Path, n: int) -> None:
    """n appointment rows, 30 days ahead, to n distinct phones."""
    starts = (dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).replace(microsecond=0)
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["to", "name", "starts_at", "location"])
        for i in range(n):
            out.writerow([phone(i), f"Patient {i}", starts.isoformat(), "Riverside Clinic"])


async def bulk(o: Options) -> list[Figure]:
    """3. `smsbot start appointment --csv` for N rows, sent by a running `smsbot serve`."""
    n = 10_000 if o.quick else 100_000
    path = o.workdir / "bulk.csv"
    write_csv(path, n)
    db = sqlite_url(o.workdir)
    async with Provider(o.workdir) as provider:
        port = free_port()
        env = server_env(db, port, provider.url)
        server = Child(f"bulk-serve-{port}", python_argv("smsbot", "serve"), env, o.workdir)
        server.start()
        profile = None
        try:
            await server.wait_http(f"http://127.0.0.1:{port}/healthz")
            await asyncio.to_thread(wait_for_quiet)
            if o.profile:
                profile = Profile(server.pid, o.workdir / f"profile-{server.name}.txt")
                await profile.start()
            cpu0 = cpu_seconds(server.pid)
            started = time.monotonic()
            argv = python_argv("smsbot", "start", "appointment", "--csv", str(path))
            log = (o.workdir / "bulk-start.log").open("wb")
            starter = subprocess.Popen(argv, env=env, cwd=o.workdir, stdout=log, stderr=log)  # noqa: ASYNC220
            starter_rusage = asyncio.get_running_loop().run_in_executor(
                None, os.wait4, starter.pid, 0
            )
            limit = 120 if o.quick else 900
            done_at = await provider.wait_count(n, limit, poll=0.25)
            _, status, rusage = await starter_rusage
            log.close()
            sent = await provider.count()
            elapsed = (done_at or time.monotonic()) - started
            server_cpu = cpu_seconds(server.pid) - cpu0
            server_peak = proc_status_kb(server.pid, "VmHWM") / 1024
        finally:
            if profile is not None:
                profile.work = (n, "message")
                await profile.stop()
            await server.stop(30)
        if profile is not None:
            report_profile(profile.out)
    starter_peak = rusage.ru_maxrss / 1024
    starter_time = rusage.ru_utime + rusage.ru_stime
    rate = sent / elapsed
    say(
        f"bulk {n:,}: {sent:,} accepted by the provider in {elapsed:.1f} s ({rate:,.0f}/s);"
        f" `smsbot start` exit {status >> 8}, CPU {starter_time:.1f} s, peak {starter_peak:.0f} MB;"
        f" server CPU {server_cpu:.1f} s, peak {server_peak:.0f} MB"
    )
    peak = max(starter_peak, server_peak)
    note = "" if done_at else f"INCOMPLETE: {sent:,} of {n:,} after {elapsed:.0f} s"
    return [
        Figure(
            f"3 bulk start {n:,}: messages/s",
            rate,
            "msg/s",
            f"≥ {BULK_GOAL_RATE:,}/s",
            rate >= BULK_GOAL_RATE and done_at is not None,
            note=note or f"{elapsed:.1f} s wall",
        ),
        Figure(
            "3 bulk start: peak RSS",
            peak,
            "MB",
            f"≤ {BULK_GOAL_MB} MB",
            peak <= BULK_GOAL_MB,
            note=f"serve {server_peak:.0f} MB, `smsbot start` {starter_peak:.0f} MB",
        ),
    ]
