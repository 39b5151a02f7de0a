"""Contacts import: rows/s and peak RSS for a CSV of N contacts with three typed fields.

    .venv/bin/python -m bench.contacts_import [--rows 100000] [--postgres]

Writes the CSV to a temporary directory, then imports it in a child process (a fresh SQLite
file, or a fresh PostgreSQL database with --postgres) exactly as `smsbot contacts import` does,
and prints rows/s (import only, after the schema exists) and the child's peak RSS.
Goal (issue 15): >= 10,000 rows/s and <= 200 MB for 100,000 rows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import proc_status_kb

FIELDS = {"appointment_at": "datetime", "visits": "number", "vip": "boolean"}
PG = "postgresql://postgres@127.0.0.1:5432/postgres"


def write_csv(path: Path, rows: int) -> None:
    """N rows: phone, name and the three fields (a datetime, a number, a boolean)."""
    rnd = random.Random(15)
    start = dt.datetime(2027, 1, 1, 9, tzinfo=dt.UTC)
    with path.open("w", encoding="utf-8") as out:
        out.write("phone,name,appointment_at,visits,vip\n")
        for n in range(rows):
            at = start + dt.timedelta(minutes=15 * rnd.randrange(50_000))
            phone = f"+4477009{n:05d}" if n < 100_000 else f"+4479{n:08d}"
            vip = "true" if n % 7 == 0 else "false"
            out.write(f"{phone},Person {n},{at.isoformat()},{rnd.randrange(20)},{vip}\n")


def child(path: Path, url: str) -> None:
    """Migrate, then time the import; print JSON."""
    from sqlalchemy import create_engine, pool

    from smsbot.app.contacts_io import import_csv
    from smsbot.app.database import migrate
    from smsbot.config import Settings

    settings = Settings.from_env({"SMSBOT_DATABASE_URL": url}, toml_path=path.parent / "none")
    migrate(settings)
    engine = create_engine(settings.sync_database_url, poolclass=pool.NullPool)
    started = time.perf_counter()
    report = import_csv(
        engine, path, region="GB", config_fields=FIELDS, now=dt.datetime.now(dt.UTC)
    )
    seconds = time.perf_counter() - started
    # VmHWM, not ru_maxrss: that one carries the parent's high-water mark over fork and exec
    rss_mb = proc_status_kb("self", "VmHWM") / 1024
    print(json.dumps({"rows": report.imported, "bad": len(report.bad), "seconds": seconds,
                      "rss_mb": rss_mb}))  # fmt: skip


def main() -> None:
    """Run the benchmark and print one line per backend."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--postgres", action="store_true", help="also on PostgreSQL")
    parser.add_argument("--child", nargs=2, metavar=("CSV", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), args.child[1])
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "contacts.csv"
        write_csv(path, args.rows)
        urls = {"sqlite": f"sqlite:///{Path(tmp) / 'bench.db'}"}
        if args.postgres:
            import psycopg

            name = f"bench_{uuid.uuid4().hex[:10]}"
            with psycopg.connect(PG, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {name}")
            urls["postgresql"] = PG.rsplit("/", 1)[0] + "/" + name
        try:
            for backend, url in urls.items():
                done = subprocess.run(
                    [sys.executable, "-m", "bench.contacts_import", "--child", str(path), url],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                r = json.loads(done.stdout)
                print(
                    f"contacts import {backend}: {r['rows']:,} rows in {r['seconds']:.2f} s ="
                    f" {r['rows'] / r['seconds']:,.0f} rows/s (goal >= 10,000), peak RSS"
                    f" {r['rss_mb']:.0f} MB (goal <= 200)"
                )
        finally:
            if "postgresql" in urls:
                with psycopg.connect(PG, autocommit=True) as conn:
                    conn.execute(f"DROP DATABASE {urls['postgresql'].rsplit('/', 1)[1]}")


if __name__ == "__main__":
    main()


async def contacts(o: Any) -> list[Any]:
    """`make bench`'s figures: an import of 100,000 contacts (10,000 with --quick) per backend."""
    import asyncio

    from bench.common import Figure, postgres_database, postgres_problem, skipped

    n = 10_000 if o.quick else 100_000
    path = o.workdir / "contacts-import.csv"
    write_csv(path, n)
    urls = {"SQLite": f"sqlite:///{o.workdir / f'contacts-{uuid.uuid4().hex[:8]}.db'}"}
    figures: list[Figure] = []

    async def measure(backend: str, url: str) -> None:
        cmd = [sys.executable, "-m", "bench.contacts_import", "--child", str(path), url]
        done = await asyncio.to_thread(
            subprocess.run, cmd, capture_output=True, text=True, check=True
        )
        r = json.loads(done.stdout)
        rate = r["rows"] / r["seconds"]
        figures.append(
            Figure(f"7 contacts: import {n:,} rows, 3 fields ({backend})", rate, "rows/s",
                   ">= 10,000 rows/s", rate >= 10_000)
        )  # fmt: skip
        figures.append(
            Figure(f"7 contacts: import {n:,} rows, peak RSS ({backend})", r["rss_mb"], "MB",
                   "<= 200 MB", r["rss_mb"] <= 200)
        )  # fmt: skip

    await measure("SQLite", urls["SQLite"])
    if (problem := postgres_problem()) is None:
        with postgres_database() as url:
            plain = url.replace("postgresql+asyncpg://", "postgresql://")
            await measure("PostgreSQL", plain)
    else:
        figures.append(skipped(f"7 contacts: import {n:,} rows (PostgreSQL)", problem))
    return figures
