"""The leanest bulk start this stack allows: what bounds benchmark 3 on this machine.

    python -m bench.bulk_ceiling --rows 100000 --db FILE --provider URL   (bench/offline.py runs it)

One process does, for N appointment rows, only what any bulk start must do, with nothing of
smsbot's in the way, and times each part:

- check: read the CSV row (csv module) and check the phone with phonenumbers (parse, possible);
- render: the flow's first message, `templates/appointment/ask.txt` compiled once by a plain
  Jinja environment, the time formatted for the recipient;
- write: the rows smsbot keeps for a started conversation (conversation, event, message,
  two timers, a history row) into a migrated smsbot database with the standard library's
  `sqlite3` `executemany`, 1,000 rows a transaction: the real schema and its indexes;
- send: the messages as the provider's bulk JSON (15,000 a call) posted to the fake provider.

Prints JSON: microseconds per message for each part and in all. No smsbot bulk start can do
with less CPU per message on the same machine: the figure that says how far the goal is.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
import jinja2
import phonenumbers

from bench.common import API_KEY, VN, Figure, base_env, python_argv, say, skipped, sqlite_url

REPO = Path(__file__).resolve().parents[1]
CHUNK = 1_000
BULK_CALL = 15_000


def _ts(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def run(rows: int, db: Path, provider: str, api_key: str) -> dict[str, Any]:
    from bench.offline import write_csv  # the same file as benchmark 3 (which imports this)

    path = db.with_suffix(".csv")
    write_csv(path, rows)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(REPO / "templates"), auto_reload=False)
    env.filters["datetime"] = lambda v: dt.datetime.fromisoformat(v).strftime("%a %-d %b, %H:%M")
    template = env.get_template("appointment/ask.txt")
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    spent = {"check": 0.0, "render": 0.0, "write": 0.0, "send": 0.0}
    now = dt.datetime.now(dt.UTC)
    stamp = _ts(now)
    outbox: list[dict[str, Any]] = []
    with path.open(newline="") as f:
        reader = csv.reader(f)
        next(reader)
        n = 0
        while True:
            t0 = time.perf_counter()
            chunk = []
            for to, name, starts_at, location in reader:
                number = phonenumbers.parse(to, "GB")
                if not phonenumbers.is_possible_number(number):  # as smsbot does
                    raise ValueError(to)
                chunk.append((to, name, starts_at, location))
                if len(chunk) == CHUNK:
                    break
            if not chunk:
                break
            t1 = time.perf_counter()
            texts = [template.render(name=a, starts_at=b, location=c) for _, a, b, c in chunk]
            t2 = time.perf_counter()
            _write(conn, chunk, texts, n, stamp, now)
            t3 = time.perf_counter()
            outbox += [
                {"sender": VN, "recipient": row[0], "content": text, "clientReference": f"m{n + i}"}
                for i, (row, text) in enumerate(zip(chunk, texts, strict=True))
            ]
            n += len(chunk)
            spent["check"] += t1 - t0
            spent["render"] += t2 - t1
            spent["write"] += t3 - t2
    t4 = time.perf_counter()
    asyncio.run(_send(outbox, provider, api_key))
    spent["send"] = time.perf_counter() - t4
    conn.close()
    per = {part: seconds / rows * 1e6 for part, seconds in spent.items()}
    return {"rows": rows, "us_per_message": per, "total_us": sum(per.values())}


def _write(
    conn: sqlite3.Connection,
    chunk: list[tuple[str, str, str, str]],
    texts: list[str],
    offset: int,
    stamp: str,
    now: dt.datetime,
) -> None:
    conn.execute("BEGIN IMMEDIATE")
    base = conn.execute("SELECT coalesce(max(id), 0) FROM conversations").fetchone()[0]
    ebase = conn.execute("SELECT coalesce(max(id), 0) FROM webhook_events").fetchone()[0]
    ids = range(base + 1, base + 1 + len(chunk))
    eids = range(ebase + 1, ebase + 1 + len(chunk))
    due = _ts(now + dt.timedelta(hours=48))
    conn.executemany(
        "INSERT INTO conversations (id, workspace, virtual_number, phone, flow, state, data,"
        " version, state_token, started_at, last_activity_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        [(i, "default", VN, row[0], "appointment", "waiting",
          json.dumps({"name": row[1], "starts_at": row[2], "location": row[3]}), 1,
          os.urandom(8).hex(), stamp, stamp) for i, row in zip(ids, chunk, strict=True)],
    )  # fmt: skip
    conn.executemany(
        "INSERT INTO webhook_events (id, workspace, source, event_id, kind, virtual_number, phone,"
        " payload, state, attempts, received_at, processed_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        [(e, "default", "api", f"bulk:ceiling:{offset + k}", "start", VN, row[0],
          json.dumps({"flow": "appointment", "data": {"name": row[1]}}), "done", 0, stamp, stamp)
         for k, (e, row) in enumerate(zip(eids, chunk, strict=True))],
    )  # fmt: skip
    conn.executemany(
        "INSERT INTO messages (id, workspace, direction, virtual_number, phone, body, origin,"
        " status, outbox, send_after, segments, encoding, event_id, created_at, status_at,"
        " attempts) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        [(os.urandom(16).hex(), "default", "out", VN, row[0], text, "flow",
          "queued", "pending", stamp, 1, "GSM-7", e, stamp, stamp, 0)
         for e, row, text in zip(eids, chunk, texts, strict=True)],
    )  # fmt: skip
    conn.executemany(
        "INSERT INTO timers (workspace, conversation_id, name, kind, token, due_at, payload,"
        " state, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
        [("default", i, name, "timeout", os.urandom(8).hex(), due, "{}", "scheduled", stamp)
         for i in ids for name in ("state:waiting", "remind")],
    )  # fmt: skip
    conn.executemany(
        "INSERT INTO state_changes (workspace, conversation_id, at, flow, from_state, to_state,"
        " reason, event_kind, event_id) VALUES (?,?,?,?,?,?,?,?,?)",
        [("default", i, stamp, "appointment", None, "waiting", "started", "start", e)
         for i, e in zip(ids, eids, strict=True)],
    )  # fmt: skip
    conn.execute("COMMIT")


async def _send(outbox: list[dict[str, Any]], provider: str, api_key: str) -> None:
    async with aiohttp.ClientSession() as http:
        for start in range(0, len(outbox), BULK_CALL):
            body = json.dumps({"messages": outbox[start : start + BULK_CALL]})
            headers = {"X-Api-Key": api_key, "Content-Type": "application/json"}
            async with http.post(f"{provider}/sms/send/bulk", data=body, headers=headers) as r:
                if r.status >= 300:
                    raise RuntimeError(f"bulk call answered {r.status}: {await r.text()}")


async def figure(o: Any, n: int, provider: Any) -> Figure:
    """The ceiling as an info figure of benchmark 3 (a child process, a fresh database)."""
    from bench.http_benches import migrate  # bench.http_benches imports this module's users

    url = sqlite_url(o.workdir)
    await migrate(url, o)
    argv = python_argv("bench.bulk_ceiling", "--rows", str(n), "--db", url.split(":///", 1)[1])
    proc = await asyncio.create_subprocess_exec(
        *argv, "--provider", provider.url, env=base_env(), cwd=o.workdir,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    if proc.returncode != 0:
        return skipped(f"3 bulk start {n:,}: lean ceiling", err.decode()[-200:])
    got = json.loads(out)
    total = float(got["total_us"])
    parts = ", ".join(f"{k} {v:.0f}" for k, v in got["us_per_message"].items())
    say(f"bulk ceiling {n:,}: {total:.0f} µs a message ({parts})")
    return Figure(
        f"3 bulk start {n:,}: lean ceiling",
        1e6 / total,
        "msg/s",
        note=f"one process, {total:.0f} µs a message: {parts} (bench/bulk_ceiling.py)",
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bulk_ceiling")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--db", type=Path, required=True, help="a migrated smsbot SQLite file")
    parser.add_argument("--provider", required=True, help="the fake provider's URL")
    parser.add_argument("--api-key", default=API_KEY)
    args = parser.parse_args()
    print(json.dumps(run(args.rows, args.db, args.provider, args.api_key)))


if __name__ == "__main__":
    main()
