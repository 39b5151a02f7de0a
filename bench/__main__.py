"""`python -m bench [--quick] [--only NAME ...] [--duration S] [--profile]`: run the benchmarks.

Prints one line per figure (name, value, ratio to the baseline, goal, PASS/FAIL) and exits 0
whether or not a goal is met: it is a measurement. Progress and details go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import sqlite3
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable

from bench import (
    bulk_memory,
    campaigns,
    contacts_import,
    footprint,
    http_benches,
    offline,
    profiler,
    scaleout,
    timers,
    workspaces,
)
from bench.common import QUIET, REPO, Figure, postgres_problem, say, skipped, workdir
from bench.http_benches import Options

Bench = Callable[[Options], Awaitable[list[Figure]]]
BENCHES: dict[str, Bench] = {
    "intake": http_benches.intake,
    "turns": http_benches.turns,
    "history": http_benches.history,
    "bulk": offline.bulk,
    "bulk-memory": bulk_memory.bulk_memory,
    "timers": timers.timers,
    "footprint": footprint.footprint,
    "campaigns": campaigns.campaigns,
    "contacts": contacts_import.contacts,
    "workspaces": workspaces.workspaces,
    "scaleout": scaleout.scaleout,
}


def machine() -> str:
    """One line about where this ran."""
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
        with open("/proc/meminfo") as f:
            mem_kb = int(next(ln.split()[1] for ln in f if ln.startswith("MemTotal")))
    except (OSError, StopIteration):
        mem_kb = 0
    pg = "PostgreSQL unreachable" if postgres_problem() else _pg_version()
    return (
        f"{os.cpu_count()} cores, {cpu}, {mem_kb / 1024**2:.0f} GiB; Python"
        f" {platform.python_version()}; SQLite {sqlite3.sqlite_version}; {pg};"
        f" {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; smsbot {_revision()}"
    )


def _revision() -> str:
    """The commit measured, and whether the work tree had uncommitted changes to smsbot/."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "smsbot"], cwd=REPO, capture_output=True
        ).stdout
    except OSError:
        return "(no git)"
    return f"{head or '?'}{' + uncommitted changes' if dirty else ''}"


def _pg_version() -> str:
    import psycopg

    from bench.common import PG_ADMIN

    with psycopg.connect(PG_ADMIN, connect_timeout=3) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return f"PostgreSQL {row[0] if row else '?'}"


async def run(names: list[str], o: Options) -> list[Figure]:
    figures: list[Figure] = []
    for name in names:
        say(f"--- {name} ---")
        started = time.monotonic()
        QUIET["noisiest"] = 0.0
        try:
            got = await BENCHES[name](o)
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            got = [skipped(name, f"crashed: {type(exc).__name__}: {exc}"[:200])]
        for figure in got:
            if QUIET["noisiest"] >= QUIET["threshold"]:
                busy = f"NOISY: machine {QUIET['noisiest']:.0%} busy with other work"
                figure.note = f"{figure.note}; {busy}" if figure.note else busy
            print(figure.line(), flush=True)
        figures += got
        say(f"{name} took {time.monotonic() - started:.0f} s")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 s and 10,000 items: a smoke run")
    parser.add_argument("--only", nargs="+", choices=list(BENCHES), metavar="NAME")
    parser.add_argument("--duration", type=float, help="seconds per HTTP load run (20; quick 3)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample every thread of the processes measured with py-spy (see bench/profiler.py)",
    )
    parser.add_argument(
        "--client",
        choices=["raw", "aiohttp"],
        default="raw",
        help="the load generator's HTTP client (raw: minimal keep-alive HTTP/1.1, the default)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=120.0,
        help="before each measurement, wait up to this many seconds for other work to stop",
    )
    args = parser.parse_args()
    if args.profile and (why := profiler.problem()) is not None:
        parser.error(why)
    QUIET["limit"] = args.quiet_wait
    names = args.only or list(BENCHES)
    print(f"machine: {machine()}", flush=True)
    print(f"command: python -m bench {' '.join(sys.argv[1:])}".rstrip(), flush=True)
    with workdir() as tmp:
        o = Options(
            duration=args.duration or (3.0 if args.quick else 20.0),
            quick=args.quick,
            workdir=tmp,
            profile=args.profile,
            client=args.client,
        )
        figures = asyncio.run(run(names, o))
    print("\nsummary")
    for figure in figures:
        print(figure.line())
    failed = [f.name for f in figures if f.passed is False]
    print(f"\n{len(failed)} goal(s) missed" + (f": {', '.join(failed)}" if failed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
