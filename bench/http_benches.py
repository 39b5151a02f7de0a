"""Benchmarks 1 and 2 over HTTP: webhook intake and full turns, each against the baseline."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    API_KEY,
    SECRET,
    Child,
    Figure,
    Provider,
    base_env,
    cpu_seconds,
    free_port,
    postgres_database,
    postgres_problem,
    proc_status_kb,
    python_argv,
    say,
    server_env,
    skipped,
    sqlite_url,
    wait_for_quiet,
)

CONNECTIONS = 32


@dataclasses.dataclass
class Options:
    """What the run was asked for."""

    duration: float
    quick: bool
    workdir: Path
    profile: bool = False
    client: str = "raw"  # the load generator's HTTP client: raw (cheap) or aiohttp
    baseline_rps: float | None = None  # the last baseline measured
    sqlite_turns: float | None = None  # benchmark 2's single-process SQLite figure


async def loadgen(urls: list[str], o: Options, mode: str, **extra: str) -> dict[str, Any]:
    """Run bench.loadgen in its own process; return its JSON result."""
    argv = python_argv(
        "bench.loadgen",
        *[a for u in urls for a in ("--url", u)],
        "--secret",
        SECRET,
        "--duration",
        str(o.duration),
        "--warmup",
        "1" if o.quick else "2",
        "--connections",
        str(CONNECTIONS),
        "--mode",
        mode,
        "--api-key",
        API_KEY,
        "--client",
        o.client,
        *[a for k, v in extra.items() for a in (f"--{k.replace('_', '-')}", v)],
    )
    proc = await asyncio.create_subprocess_exec(
        *argv, env=base_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), o.duration + 120)
    if proc.returncode != 0:
        raise RuntimeError(f"loadgen failed: {err.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(out)
    return result


async def baseline(o: Options) -> float:
    """The baseline's requests/s, measured right before the smsbot figures it is compared to."""
    wait_for_quiet()
    port = free_port()
    argv = python_argv("bench.baseline", "--port", str(port), "--secret", SECRET)
    child = Child("baseline", argv, base_env(), o.workdir)
    child.start()
    try:
        await child.wait_http(f"http://127.0.0.1:{port}/healthz")
        cpu0 = cpu_seconds(child.pid)
        r = await loadgen([f"http://127.0.0.1:{port}"], o, "intake")
        cpu = (cpu_seconds(child.pid) - cpu0) / (o.duration + (1 if o.quick else 2))
    finally:
        await child.stop()
    say(
        f"baseline ({r['client']} client): {r['rps']:,.0f} req/s, p99"
        f" {r['latency_ms']['p99']:.1f} ms, server CPU {cpu:.0%}, generator CPU"
        f" {r['generator_cpu_share']:.0%}"
    )
    o.baseline_rps = float(r["rps"])
    return o.baseline_rps


class Servers:
    """One or more `smsbot serve --echo` (or bench.intake_only) processes on one database."""

    def __init__(
        self, o: Options, db_url: str, provider_url: str, n: int = 1, module: str = "smsbot"
    ) -> None:
        self.o = o
        self.children: list[Child] = []
        self.urls: list[str] = []
        self.profiles: list[Path] = []
        for i in range(n):
            port = free_port()
            prof = o.workdir / f"profile-{module}-{port}.txt" if o.profile else None
            args = ("serve", "--echo") if module == "smsbot" else ()
            env = server_env(db_url, port, provider_url)
            self.children.append(
                Child(f"{module}-{port}", python_argv(module, *args, profile=prof), env, o.workdir)
            )
            self.urls.append(f"http://127.0.0.1:{port}")
            if prof is not None:
                self.profiles.append(prof)
            del i

    async def __aenter__(self) -> Servers:
        for child, url in zip(self.children, self.urls, strict=True):
            child.start()  # one at a time: `serve` migrates at start-up
            await child.wait_http(f"{url}/healthz")
        await asyncio.to_thread(wait_for_quiet)
        if self.profiles:
            for child in self.children:
                child.proc.send_signal(signal.SIGUSR1)  # type: ignore[union-attr]
        self.cpu0 = [cpu_seconds(c.pid) for c in self.children]
        self.t0 = time.monotonic()
        return self

    def cpu_shares(self) -> list[float]:
        elapsed = time.monotonic() - self.t0
        return [
            (cpu_seconds(c.pid) - c0) / elapsed
            for c, c0 in zip(self.children, self.cpu0, strict=True)
        ]

    def rss_mb(self) -> list[float]:
        return [proc_status_kb(c.pid, "VmHWM") / 1024 for c in self.children]

    async def __aexit__(self, *exc: object) -> None:
        for child in self.children:
            await child.stop()
        for prof in self.profiles:
            if prof.exists():
                report_profile(prof)


def report_profile(path: Path, top: int = 45) -> None:
    """Print the head of a bench.profiler report to stderr (the whole file stays in workdir)."""
    say(f"profile: {path}")
    print("\n".join(path.read_text().splitlines()[:top]), file=sys.stderr)


def backlog(db_path: str) -> int:
    """Pending events left in a SQLite database (after the server stopped)."""
    with contextlib.closing(sqlite3.connect(db_path)) as conn, conn:
        return int(
            conn.execute("SELECT count(*) FROM webhook_events WHERE state='pending'").fetchone()[0]
        )


INFO_NOTES = {
    "bench.intake_only": "dispatcher, sender and timers off",
    "bench.ceiling": "bench/ceiling.py: aiohttp + raw sqlite3 group commit, nothing else",
}


async def intake(o: Options) -> list[Figure]:
    """1. Signed inbound webhooks, 32 connections: smsbot's full server vs the baseline."""
    base = await baseline(o)
    figures: list[Figure] = []
    async with Provider(o.workdir) as provider:
        for label, module in (
            ("full server", "smsbot"),
            ("intake only", "bench.intake_only"),
            ("ceiling", "bench.ceiling"),
        ):
            db = sqlite_url(o.workdir)
            async with Servers(o, db, provider.url, module=module) as servers:
                r = await loadgen(servers.urls, o, "intake")
                cpu, rss = servers.cpu_shares()[0], servers.rss_mb()[0]
            left = backlog(db.split(":///", 1)[1]) if module != "bench.ceiling" else 0
            p99 = r["latency_ms"]["p99"]
            ratio = r["rps"] / base
            say(
                f"intake ({label}): {r['rps']:,.0f} req/s, latency {r['latency_ms']},"
                f" statuses {r['statuses']}, errors {r['errors']}, server CPU {cpu:.0%},"
                f" generator CPU {r['generator_cpu_share']:.0%}, peak RSS {rss:.0f} MB,"
                f" steps still pending at stop {left:,}"
            )
            full = module == "smsbot"
            note = f"{r['errors']} errors; {left:,} steps pending at stop"
            if not full:
                note = INFO_NOTES[module]
            figures.append(
                Figure(
                    f"1 intake req/s, SQLite ({label})",
                    r["rps"],
                    "req/s",
                    "≥ 0.60× baseline" if full else "",
                    ratio >= 0.6 if full else None,
                    ratio,
                    note,
                )
            )
            figures.append(
                Figure(
                    f"1 intake p99, SQLite ({label})",
                    p99,
                    "ms",
                    "≤ 20 ms" if full else "",
                    p99 <= 20 if full else None,
                )
            )
    return figures


async def turns(o: Options) -> list[Figure]:
    """2. Whole turns (inbound → step → reply accepted by the fake provider)."""
    base = await baseline(o)
    figures: list[Figure] = []
    provider_port = free_port()
    provider_url = f"http://127.0.0.1:{provider_port}"
    db = sqlite_url(o.workdir)
    async with Servers(o, db, provider_url) as servers:
        r = await loadgen(servers.urls, o, "turns", provider_port=str(provider_port))
        cpu = servers.cpu_shares()
    rate = float(r["turns_per_s"])
    o.sqlite_turns = rate
    say(
        f"turns (SQLite, 1 process): {rate:,.0f} turns/s, turn latency {r['turn_latency_ms']},"
        f" webhook latency {r['latency_ms']}, server CPU {cpu}, generator+provider CPU"
        f" {r['generator_cpu_share']:.0%}"
    )
    figures.append(
        Figure(
            "2 full turns/s, SQLite, 1 process",
            rate,
            "turns/s",
            "≥ 0.35× baseline",
            rate / base >= 0.35,
            rate / base,
            f"turn p99 {r['turn_latency_ms']['p99'] or 0:.0f} ms",
        )
    )
    problem = postgres_problem()
    if problem is not None:
        figures.append(skipped("2 full turns/s, PostgreSQL, 2 procs", problem))
        return figures
    with postgres_database() as pg:
        provider_port = free_port()
        provider_url = f"http://127.0.0.1:{provider_port}"
        async with Servers(o, pg, provider_url, n=2) as servers:
            r = await loadgen(servers.urls, o, "turns", provider_port=str(provider_port))
            cpu = servers.cpu_shares()
    pg_rate = float(r["turns_per_s"])
    say(
        f"turns (PostgreSQL, 2 processes): {pg_rate:,.0f} turns/s, turn latency"
        f" {r['turn_latency_ms']}, server CPU {cpu}, generator+provider CPU"
        f" {r['generator_cpu_share']:.0%}"
    )
    figures.append(
        Figure(
            "2 full turns/s, PostgreSQL, 2 procs",
            pg_rate,
            "turns/s",
            f"≥ SQLite 1 proc ({rate:,.0f})",
            pg_rate >= rate,
            pg_rate / base,
            f"turn p99 {r['turn_latency_ms']['p99'] or 0:.0f} ms",
        )
    )
    return figures
