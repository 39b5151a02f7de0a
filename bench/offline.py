"""Benchmark 3: a bulk start of the appointment flow, sent by a running `smsbot serve`."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import itertools
import os
import subprocess
import time
import uuid
from pathlib import Path

import aiohttp

from bench.common import (
    SECRET,
    VN,
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
from smsbot.channels.divergent.signature import sign

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


REPLY_GOAL_S = 1.0  # issue 13: a person's reply during a 100,000 bulk run, p99
PROBE = (
    '{"id":"evt_%s","timestamp":"2026-01-15T14:22:30Z","workspaceId":"ws_bench","eventType":2,'
    '"data":{"messageId":"inb_%s","inboundNumber":"' + VN + '","sender":"%s","body":"HOURS",'
    '"receivedAt":"2026-01-15T14:22:30Z"}}'
)


async def _reply_latencies(port: int, provider: Provider) -> list[float]:
    """Text HOURS from a new phone every second until cancelled; each reply's latency (s)."""
    latencies: list[float] = []
    waits: list[asyncio.Task[None]] = []

    async def one(phone: str, http: aiohttp.ClientSession) -> None:
        key = uuid.uuid4().hex
        body = (PROBE % (key, key, phone)).encode()
        ts = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "X-Webhook-Timestamp": ts,
            "X-Webhook-Signature": sign(SECRET, ts, body),
        }
        sent = time.time()
        async with http.post(
            f"http://127.0.0.1:{port}/webhooks/divergent", data=body, headers=headers
        ) as r:
            await r.read()
        for _ in range(600):  # 30 s at most
            if (at := await provider.first_to(phone)) is not None:
                latencies.append(at - sent)
                return
            await asyncio.sleep(0.05)
        latencies.append(30.0)  # no reply in 30 s: counted as 30 s

    async with aiohttp.ClientSession() as http:
        try:
            for i in itertools.count():
                waits.append(asyncio.create_task(one(f"+4477118{i:05d}", http)))
                await asyncio.sleep(1.0)
        except asyncio.CancelledError:
            pass
        await asyncio.gather(*waits, return_exceptions=True)
    return latencies


def _p99(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


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
            replies = asyncio.create_task(_reply_latencies(port, provider))
            done_at = await provider.wait_count(n, limit, poll=0.25)
            replies.cancel()
            latencies = await replies
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
    p99 = _p99(latencies)
    return [
        Figure(
            f"3 bulk start {n:,}: a person's reply p99 meanwhile",
            p99,
            "s",
            f"< {REPLY_GOAL_S:g} s",
            p99 is not None and p99 < REPLY_GOAL_S,
            note=f"{len(latencies)} texts (HOURS), one a second, while the campaign was sent;"
            f" median {sorted(latencies)[len(latencies) // 2] if latencies else 0:.2f} s,"
            f" max {max(latencies, default=0):.2f} s",
        ),
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
