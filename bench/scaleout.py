"""8. Scale-out on PostgreSQL: full turns with 1, 2 (and 3) `smsbot serve` processes, one database.

    .venv/bin/python -m bench --only scaleout        (--quick: 1 and 2 processes, short runs)

For each process count, on a fresh PostgreSQL database:

closed loop  benchmark 2's full-turns load (bench.loadgen in mode turns, the fake provider in the
             generator's process, 32 connections split over the processes). Measured over the
             generator's run: turns/s, smsbot CPU per turn (every `serve` process, from
             /proc/PID/stat), PostgreSQL CPU per turn (the database's backends, including
             those that exited in the window, and the cluster's own processes), write
             transactions, WAL bytes and WAL syncs per turn, connections, steps per batch.
backlog      bench.intake_only (the real intake, no dispatcher) stores a few thousand webhooks
             from distinct phones; then the `serve` processes start and drain them: steps per
             batch on a backlog (goal ≥ 20) and the drain rate once every process is up.

Per turn means per event the dispatchers processed in the window (smsbot's own
`smsbot_events_processed_total`), so idle polling and start-up are inside the figure, and the
window's last turns are counted on both sides. The numbers feed the model in
docs/deployment.md ("Scaling out").
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import (
    PG_ADMIN,
    Child,
    Figure,
    Provider,
    cpu_seconds,
    free_port,
    postgres_database,
    postgres_problem,
    python_argv,
    say,
    server_env,
    skipped,
    wait_for_quiet,
)
from bench.http_benches import Options, Servers, loadgen

BATCH_GOAL = 20.0  # steps per batch on a backlog (issue 13: ~7 before the dispatcher's fix)
TICK = os.sysconf("SC_CLK_TCK")


# -- what PostgreSQL spent ----------------------------------------------------------------------


def _stat(pid: str) -> tuple[str, int, int, int] | None:
    """(comm, ppid, utime+stime, cutime+cstime) in ticks, or None if the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw.rsplit(")", 1)[1].split()
    return (
        comm,
        int(fields[1]),
        int(fields[11]) + int(fields[12]),
        int(fields[13]) + int(fields[14]),
    )


class PostgresCpu:
    """CPU seconds the cluster's processes used since start(), split by whose they are.

    ours: backends of `database`; aux: the postmaster, walwriter, checkpointer, background
    writer, …; others: backends of other databases (someone else's work: noise, not counted
    in b). /proc is polled every 0.2 s while running and each process's last reading is kept,
    so a backend that exits in the window (a pool's overflow connection) still counts.
    """

    def __init__(self, database: str) -> None:
        self.database = database
        self.first: dict[str, float] = {}  # pid -> CPU at start (0 for a process born since)
        self.last: dict[str, tuple[str, float]] = {}  # pid -> (whose, CPU at the last poll)
        self._task: asyncio.Task[None] | None = None

    def poll(self) -> None:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
        stats = {p: s for p in pids if (s := _stat(p)) is not None and s[0] == "postgres"}
        for pid, (_comm, ppid, used, _reaped) in stats.items():
            whose = "aux"
            if str(ppid) in stats:  # a child of the postmaster
                with contextlib.suppress(OSError):
                    title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                    words = title.decode(errors="replace").split()
                    # a backend's title: "postgres: [15/main: ]USER DATABASE HOST(PORT) STATE"
                    if self.database in words:
                        whose = "ours"
                    elif any(w.endswith(")") and "(" in w for w in words) or "[local]" in words:
                        whose = "others"
            self.last[pid] = (whose, used / TICK)
            if self._task is None:
                self.first[pid] = used / TICK

    def totals(self) -> dict[str, float]:
        self.poll()
        out = {"ours": 0.0, "aux": 0.0, "others": 0.0}
        for pid, (whose, used) in self.last.items():
            out[whose] += used - self.first.get(pid, 0.0)
        return out

    async def __aenter__(self) -> PostgresCpu:
        self.poll()

        async def run() -> None:
            while True:
                await asyncio.sleep(0.2)
                self.poll()

        self._task = asyncio.create_task(run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def pg_counters(database: str) -> dict[str, float]:
    """The cluster's next transaction id (write transactions, exact), WAL position and syncs,
    and the database's commits and sessions (statistics: may trail by about a second)."""
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint,"
            " pg_current_wal_lsn() - '0/0'::pg_lsn, w.wal_sync, w.wal_write,"
            " d.xact_commit, d.sessions"
            " FROM pg_stat_wal w, pg_stat_database d WHERE d.datname = %s",
            (database,),
        ).fetchone()
        assert row is not None
        connected = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (database,)
        ).fetchone()
        assert connected is not None
    keys = ("xid", "wal_bytes", "wal_syncs", "wal_writes", "commits", "sessions")
    return {
        **{k: float(v) for k, v in zip(keys, row, strict=True)},
        "connected": float(connected[0]),
    }


# -- what smsbot says ---------------------------------------------------------------------------


async def step_counts(urls: list[str]) -> list[tuple[float, float]]:
    """(events processed, step batches) from each process's /metrics."""
    out = []
    async with aiohttp.ClientSession() as http:
        for url in urls:
            async with http.get(f"{url}/metrics") as resp:
                text = await resp.text()
            events = batches = 0.0
            for line in text.splitlines():
                if line.startswith("smsbot_events_processed_total{"):
                    events += float(line.rsplit(" ", 1)[1])
                elif line.startswith("smsbot_step_batches_total"):
                    batches += float(line.rsplit(" ", 1)[1])
            out.append((events, batches))
    return out


@dataclasses.dataclass
class Sample:
    """Everything read at one moment: CPU, PostgreSQL's counters, smsbot's step counters."""

    at: float
    smsbot_cpu: float
    pg_cpu: dict[str, float]
    pg: dict[str, float]
    steps: list[tuple[float, float]]
    machine: tuple[int, int]  # /proc/stat: busy and total ticks of all CPUs

    @classmethod
    async def take(cls, pids: list[int], urls: list[str], pg: PostgresCpu) -> Sample:
        steps = await step_counts(urls)
        return cls(
            time.monotonic(),
            sum(cpu_seconds(p) for p in pids),
            pg.totals(),
            await asyncio.to_thread(pg_counters, pg.database),
            steps,
            _machine(),
        )


def _machine() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


@dataclasses.dataclass
class Window:
    """The difference of two samples, per turn."""

    turns: float  # events processed by the dispatchers
    seconds: float
    smsbot_us: float  # per turn
    pg_us: float  # per turn: backends of the database, and the cluster's own processes
    pg_split: dict[str, float]  # the same, by whose (µs per turn)
    writes: float  # write transactions per turn (next-xid delta, cluster-wide)
    commits: float  # commits per turn in the database (statistics)
    wal_bytes: float
    wal_syncs: float
    sessions: float  # connections opened in the window
    connected: float  # connections to the database at the end
    steps_per_batch: float
    machine_us: float  # all CPU used on the machine, per turn (generator and provider too)
    machine_busy: float  # 0..1 of all cores

    @classmethod
    def between(cls, a: Sample, b: Sample) -> Window:
        turns = max(1.0, sum(e for e, _ in b.steps) - sum(e for e, _ in a.steps))
        batches = max(1.0, sum(n for _, n in b.steps) - sum(n for _, n in a.steps))
        split = {k: (b.pg_cpu[k] - a.pg_cpu[k]) / turns * 1e6 for k in a.pg_cpu}
        noise = split.pop("others")
        busy, total = (b.machine[0] - a.machine[0]), (b.machine[1] - a.machine[1])
        seconds = b.at - a.at
        return cls(
            turns=turns,
            seconds=seconds,
            smsbot_us=(b.smsbot_cpu - a.smsbot_cpu) / turns * 1e6,
            pg_us=sum(split.values()),
            pg_split={**split, "other databases' backends (not counted)": noise},
            writes=(b.pg["xid"] - a.pg["xid"] - 1) / turns,  # the sample's own read takes none
            commits=(b.pg["commits"] - a.pg["commits"]) / turns,
            wal_bytes=(b.pg["wal_bytes"] - a.pg["wal_bytes"]) / turns,
            wal_syncs=(b.pg["wal_syncs"] - a.pg["wal_syncs"]) / turns,
            sessions=b.pg["sessions"] - a.pg["sessions"],
            connected=b.pg["connected"],
            steps_per_batch=turns / batches,
            machine_us=busy / TICK / turns * 1e6,
            machine_busy=busy / max(1, total) if total else 0.0,
        )

    def describe(self) -> str:
        split = ", ".join(f"{k} {v:,.0f}" for k, v in self.pg_split.items())
        return (
            f"{self.turns:,.0f} turns in {self.seconds:.1f} s; per turn: smsbot CPU"
            f" {self.smsbot_us:,.0f} µs, PostgreSQL CPU {self.pg_us:,.0f} µs ({split}), whole"
            f" machine {self.machine_us:,.0f} µs; {self.writes:.2f} write transactions,"
            f" {self.commits:.2f} commits (stats), {self.wal_bytes:,.0f} WAL bytes,"
            f" {self.wal_syncs:.3f} WAL syncs; steps per batch {self.steps_per_batch:.1f};"
            f" machine {self.machine_busy:.0%} busy; connections opened {self.sessions:.0f},"
            f" open at the end {self.connected:.0f}"
        )


# -- the runs -----------------------------------------------------------------------------------


async def closed_loop(o: Options, n: int) -> tuple[dict[str, Any], Window]:
    """Full turns against n processes on a fresh database."""
    with postgres_database() as pg:
        database = pg.rpartition("/")[2]
        provider_port = free_port()
        provider_url = f"http://127.0.0.1:{provider_port}"
        async with Servers(o, pg, provider_url, n=n) as servers:
            pids = [c.pid for c in servers.children]
            async with PostgresCpu(database) as pg_cpu:
                before = await Sample.take(pids, servers.urls, pg_cpu)
                r = await loadgen(servers.urls, o, "turns", provider_port=str(provider_port))
                after = await Sample.take(pids, servers.urls, pg_cpu)
    return r, Window.between(before, after)


async def backlog(o: Options, n: int) -> tuple[int, Window, Window]:
    """Queue webhooks with the intake alone, then let n processes drain them.

    Returns the number queued, the whole drain (steps per batch) and the part of it after
    every process was up (the drain rate)."""
    import psycopg

    seconds = 1.5 if o.quick else 4.0
    with postgres_database() as pg:
        database = pg.rpartition("/")[2]
        async with Provider(o.workdir) as provider:
            port = free_port()
            intake = Child(
                f"intake-{port}",
                python_argv("bench.intake_only"),
                server_env(pg, port, provider.url),
                o.workdir,
            )
            intake.start()
            try:
                await intake.wait_http(f"http://127.0.0.1:{port}/healthz")
                short = dataclasses.replace(o, duration=seconds)
                await loadgen([f"http://127.0.0.1:{port}"], short, "intake")
            finally:
                await intake.stop()
            admin = f"{PG_ADMIN.rpartition('/')[0]}/{database}"
            with psycopg.connect(admin) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM webhook_events WHERE state = 'pending'"
                ).fetchone()
            queued = int(row[0]) if row else 0
            await asyncio.to_thread(wait_for_quiet)
            children = []
            urls = []
            for _ in range(n):
                p = free_port()
                env = server_env(pg, p, provider.url)
                children.append(
                    Child(f"smsbot-{p}", python_argv("smsbot", "serve", "--echo"), env, o.workdir)
                )
                urls.append(f"http://127.0.0.1:{p}")
            async with PostgresCpu(database) as pg_cpu:
                counters0 = await asyncio.to_thread(pg_counters, database)
                t0, machine0 = time.monotonic(), _machine()
                start = Sample(t0, 0.0, pg_cpu.totals(), counters0, [(0.0, 0.0)] * n, machine0)
                try:
                    for child in children:
                        child.start()
                    for child, url in zip(children, urls, strict=True):
                        await child.wait_http(f"{url}/healthz")
                    pids = [c.pid for c in children]
                    up = await Sample.take(pids, urls, pg_cpu)
                    if await provider.wait_count(queued, limit=60 + queued / 50) is None:
                        raise TimeoutError(f"{queued:,} replies were not all sent")
                    end = await Sample.take(pids, urls, pg_cpu)
                finally:
                    for child in children:
                        await child.stop()
    return queued, Window.between(start, end), Window.between(up, end)


async def scaleout(o: Options) -> list[Figure]:
    """8. Full turns on PostgreSQL with 1, 2 (and 3) processes; steps per batch on a backlog."""
    problem = postgres_problem()
    if problem is not None:
        return [skipped("8 scale-out, PostgreSQL", problem)]
    figures: list[Figure] = []
    for n in (1, 2) if o.quick else (1, 2, 3):
        r, w = await closed_loop(o, n)
        rate = float(r["turns_per_s"])
        p99 = r["turn_latency_ms"]["p99"] or 0
        say(
            f"scale-out, {n} process(es), closed loop: {rate:,.0f} turns/s, turn latency"
            f" {r['turn_latency_ms']}, generator+provider CPU {r['generator_cpu_share']:.0%};"
            f" {w.describe()}"
        )
        c = os.cpu_count() or 1
        say(
            f"  model: {c} cores / (a + b) = {c / (w.smsbot_us + w.pg_us) * 1e6:,.0f} turns/s"
            f" (smsbot and PostgreSQL alone); {c} / whole machine per turn ="
            f" {c / w.machine_us * 1e6:,.0f}"
        )
        queued, drain, after_up = await backlog(o, n)
        say(f"scale-out, {n} process(es), backlog of {queued:,}: whole drain {drain.describe()}")
        say(
            f"  once all {n} were up: {after_up.turns / after_up.seconds:,.0f} turns/s;"
            f" {after_up.describe()}"
        )
        procs = f"{n} proc{'s' if n > 1 else ''}"
        figures += [
            Figure(
                f"8 turns/s, PostgreSQL, {procs}", rate, "turns/s", note=f"turn p99 {p99:.0f} ms"
            ),
            Figure(f"8 smsbot CPU per turn, {procs}", w.smsbot_us, "µs"),
            Figure(
                f"8 PostgreSQL CPU per turn, {procs}",
                w.pg_us,
                "µs",
                note=f"{w.writes:.2f} write tx, {w.wal_bytes / 1024:.1f} KiB WAL,"
                f" {w.wal_syncs:.2f} WAL syncs per turn",
            ),
            Figure(f"8 steps/batch, closed loop, {procs}", w.steps_per_batch, "steps"),
            Figure(
                f"8 steps/batch, backlog, {procs}",
                drain.steps_per_batch,
                "steps",
                f"≥ {BATCH_GOAL:g}",
                drain.steps_per_batch >= BATCH_GOAL,
                note=f"{queued:,} queued; drained at {after_up.turns / after_up.seconds:,.0f}"
                " turns/s",
            ),
        ]
    return figures
