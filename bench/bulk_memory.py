"""Benchmark 3b: `smsbot start --csv` holds no file in memory: peak RSS at N and 10 × N rows.

    python -m bench --only bulk-memory     # in `make bench`; --quick: 10,000 and 100,000 rows

`smsbot start appointment --csv` runs twice, on a fresh SQLite database each time (no server:
the starts are written, nothing is sent), once with N rows and once with 10 × N, every phone
distinct. The figure is the larger run's peak RSS over the smaller's: 1.0 is constant memory.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import os
import subprocess
import time
from pathlib import Path

from bench.common import REPO, Figure, TreePeak, base_env, python_argv, say, sqlite_url
from bench.http_benches import Options, migrate

GOAL = 1.1  # peak RSS at 10 × the rows, over the smaller run's


def write_rows(path: Path, n: int) -> None:
    """n appointment rows to n distinct UK mobile numbers (+447400000000 on)."""
    starts = (dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).replace(microsecond=0).isoformat()
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["to", "name", "starts_at", "location"])
        for i in range(n):
            out.writerow([f"+4474{i:08d}", f"Patient {i}", starts, "Riverside Clinic"])


async def start_rows(o: Options, n: int) -> tuple[float, float, float]:
    """Run `smsbot start` on n rows: (wall seconds, CPU seconds, peak RSS in MB)."""
    path = o.workdir / f"memory-{n}.csv"
    await asyncio.to_thread(write_rows, path, n)
    url = sqlite_url(o.workdir)
    await migrate(url, o)
    env = {
        **base_env(),
        "SMSBOT_DATABASE_URL": url,
        "SMSBOT_DEFAULT_SENDER": "+447700900100",
        "SMSBOT_PROVIDER": "sandbox",
    }
    argv = python_argv("smsbot", "start", "appointment", "--csv", str(path))
    started = time.monotonic()
    log_path = o.workdir / f"memory-{n}.log"
    with log_path.open("wb") as log:
        # Popen, not asyncio's subprocess: its child watcher would reap the process before
        # wait4 could (ChildProcessError), and wait4's ru_maxrss is the bench's own (TreePeak)
        proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=log, stderr=log)  # noqa: ASYNC220
        memory = TreePeak(proc.pid)
        _, status, usage = await asyncio.to_thread(os.wait4, proc.pid, 0)
        peak, _total, _procs = memory.stop()
    wall = time.monotonic() - started
    if status != 0:
        raise RuntimeError(f"smsbot start failed: {log_path.read_text()[-500:]}")
    path.unlink()
    return wall, usage.ru_utime + usage.ru_stime, peak


async def bulk_memory(o: Options) -> list[Figure]:
    """3b. Peak RSS of `smsbot start --csv` at N and 10 × N rows."""
    small = 10_000 if o.quick else 100_000
    runs = {}
    for n in (small, 10 * small):
        wall, cpu, peak = await start_rows(o, n)
        runs[n] = peak
        say(f"bulk memory {n:,}: {wall:.0f} s ({n / wall:,.0f} rows/s), CPU {cpu:.0f} s,"
            f" peak {peak:.0f} MB")  # fmt: skip
    ratio = runs[10 * small] / runs[small]
    return [
        Figure(
            f"3b `smsbot start` RSS, {10 * small:,} / {small:,} rows",
            ratio,
            "×",
            f"≤ {GOAL} (constant memory)",
            ratio <= GOAL,
            note=f"{runs[10 * small]:.0f} MB vs {runs[small]:.0f} MB peak",
        )
    ]
