"""Benchmark 3: a bulk start of the appointment flow, sent by a running `smsbot serve`."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import datetime as dt
import itertools
import os
import subprocess
import time
import uuid
from pathlib import Path

import aiohttp

from bench import bulk_ceiling
from bench.common import (
    SECRET,
    VN,
    Child,
    Figure,
    Provider,
    TreePeak,
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
from bench.profiler import Profile, spawned, spawned_report
from smsbot.channels.divergent.signature import sign

BULK_GOAL_RATE = 15_000  # issue 13: a bulk start of 100,000 appointments
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
    '{"id":"evt_%s","timestamp":"2026-01-15T14:22:30Z","workspaceId":"%s","eventType":2,'
    '"data":{"messageId":"inb_%s","inboundNumber":"%s","sender":"%s","body":"HOURS",'
    '"receivedAt":"2026-01-15T14:22:30Z"}}'
)


@dataclasses.dataclass(frozen=True)
class Probe:
    """Whom the people text during the bulk run, and where their answers are looked for."""

    to: str = VN  # the number they text
    secret: str = SECRET  # its webhooks' signing secret
    workspace_id: str = "ws_bench"  # the workspaceId its webhooks carry
    prefix: str = "+4477118"  # their phones: prefix + 5 digits, a new one each second


async def _reply_latencies(port: int, provider: Provider, probe: Probe = Probe()) -> list[float]:
    """Text HOURS from a new phone every second until cancelled; each reply's latency (s)."""
    latencies: list[float] = []
    waits: list[asyncio.Task[None]] = []
    refused: list[int] = []

    async def one(phone: str, http: aiohttp.ClientSession) -> None:
        key = uuid.uuid4().hex
        body = (PROBE % (key, probe.workspace_id, key, probe.to, phone)).encode()
        ts = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "X-Webhook-Timestamp": ts,
            "X-Webhook-Signature": sign(probe.secret, ts, body),
        }
        sent = time.time()
        async with http.post(
            f"http://127.0.0.1:{port}/webhooks/divergent", data=body, headers=headers
        ) as r:
            answer = await r.read()
        if r.status != 200:  # refused: it can have no answer (counted as 30 s, said once)
            if not refused:
                say(f"a probe's webhook was refused: {r.status} {answer[:200]!r}")
            refused.append(r.status)
            latencies.append(30.0)
            return
        for _ in range(600):  # 30 s at most
            if (at := await provider.first_to(phone)) is not None:
                latencies.append(at - sent)
                return
            await asyncio.sleep(0.05)
        latencies.append(30.0)  # no reply in 30 s: counted as 30 s

    async with aiohttp.ClientSession() as http:
        try:
            for i in itertools.count():
                waits.append(asyncio.create_task(one(f"{probe.prefix}{i:05d}", http)))
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


@dataclasses.dataclass
class BulkRun:
    """What one bulk run measured."""

    n: int
    sent: int
    elapsed: float
    done: bool
    latencies: list[float]
    server_peak: float  # MB
    starter_peak: float  # MB

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed

    @property
    def p99(self) -> float | None:
        return _p99(self.latencies)

    def reply_note(self) -> str:
        ordered = sorted(self.latencies)
        return (
            f"{len(ordered)} texts (HOURS), one a second, while the campaign was sent;"
            f" median {ordered[len(ordered) // 2] if ordered else 0:.2f} s,"
            f" max {max(ordered, default=0):.2f} s"
        )


async def run_bulk(
    o: Options,
    n: int,
    bulk_provider: Provider,
    *,
    env: dict[str, str],
    port: int,
    replies: tuple[Provider, Probe],
) -> BulkRun:
    """`smsbot start appointment --csv` for n rows into a running `smsbot serve` (env, port),
    until `bulk_provider` has accepted n messages; meanwhile a new phone texts HOURS every
    second as `replies` says, and each answer's latency is measured at that provider."""
    path = o.workdir / "bulk.csv"
    write_csv(path, n)
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
        starter_raw = o.workdir / "profile-bulk-start.raw"
        if o.profile:  # `smsbot start` and its --jobs processes too; its CPU and memory
            argv = spawned(argv, starter_raw)  # then include py-spy's own
        log = (o.workdir / "bulk-start.log").open("wb")
        starter = subprocess.Popen(argv, env=env, cwd=o.workdir, stdout=log, stderr=log)  # noqa: ASYNC220
        starter_memory = TreePeak(starter.pid)
        starter_rusage = asyncio.get_running_loop().run_in_executor(None, os.wait4, starter.pid, 0)
        limit = 120 if o.quick else 900
        probing = asyncio.create_task(_reply_latencies(port, *replies))
        done_at = await bulk_provider.wait_count(n, limit, poll=0.25)
        probing.cancel()
        latencies = await probing
        _, status, rusage = await starter_rusage
        starter_peak, starter_total, starter_procs = starter_memory.stop()
        log.close()
        sent = await bulk_provider.count()
        elapsed = (done_at or time.monotonic()) - started
        server_cpu = cpu_seconds(server.pid) - cpu0
        server_peak = proc_status_kb(server.pid, "VmHWM") / 1024
    finally:
        if profile is not None:
            profile.work = (n, "message")
            await profile.stop()
        await server.stop(30)
    starter_time = rusage.ru_utime + rusage.ru_stime
    if profile is not None:
        report_profile(profile.out)
        out = starter_raw.with_suffix(".txt")
        out.write_text(spawned_report(starter_raw, elapsed, starter_time, (n, "message")))
        report_profile(out)
    say(
        f"bulk {n:,}: {sent:,} accepted by the provider in {elapsed:.1f} s"
        f" ({sent / elapsed:,.0f}/s);"
        f" `smsbot start` exit {status >> 8}, CPU {starter_time:.1f} s, peak {starter_peak:.0f} MB"
        f" ({starter_procs} processes, {starter_total:.0f} MB together);"
        f" server CPU {server_cpu:.1f} s, peak {server_peak:.0f} MB"
    )
    return BulkRun(n, sent, elapsed, done_at is not None, latencies, server_peak, starter_peak)


async def bulk(o: Options) -> list[Figure]:
    """3. `smsbot start appointment --csv` for N rows, sent by a running `smsbot serve`."""
    n = 10_000 if o.quick else 100_000
    db = sqlite_url(o.workdir)
    async with Provider(o.workdir) as provider:
        port = free_port()
        env = server_env(db, port, provider.url)
        run = await run_bulk(o, n, provider, env=env, port=port, replies=(provider, Probe()))
        ceiling = await bulk_ceiling.figure(o, n, provider)
        cores = os.cpu_count() or 2
        ceiling2 = await bulk_ceiling.figure(o, n, provider, procs=cores)
        ceiling3 = await bulk_ceiling.figure(o, n, provider, procs=cores, outbox=True)
    peak = max(run.starter_peak, run.server_peak)
    note = "" if run.done else f"INCOMPLETE: {run.sent:,} of {n:,} after {run.elapsed:.0f} s"
    p99 = run.p99
    return [
        Figure(
            f"3 bulk start {n:,}: a person's reply p99 meanwhile",
            p99,
            "s",
            f"< {REPLY_GOAL_S:g} s",
            p99 is not None and p99 < REPLY_GOAL_S,
            note=run.reply_note(),
        ),
        Figure(
            f"3 bulk start {n:,}: messages/s",
            run.rate,
            "msg/s",
            f"≥ {BULK_GOAL_RATE:,}/s",
            run.rate >= BULK_GOAL_RATE and run.done,
            note=note or f"{run.elapsed:.1f} s wall",
        ),
        Figure(
            "3 bulk start: peak RSS",
            peak,
            "MB",
            f"≤ {BULK_GOAL_MB} MB",
            peak <= BULK_GOAL_MB,
            note=f"serve {run.server_peak:.0f} MB, `smsbot start` {run.starter_peak:.0f} MB",
        ),
        ceiling,
        ceiling2,
        ceiling3,
    ]
