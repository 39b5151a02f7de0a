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

With `--procs P` (P > 1) the same work runs in P processes at once, each taking every P-th
chunk of the file (as `smsbot start --jobs` does) and sending its own messages 15,000 a call as
it goes; the writes take turns as smsbot's do: an exclusive flock beside the database around
each transaction (store/sqlite_writer.WriterHandoff itself), so none sleeps in SQLite's busy
handler.
Then the figure is wall time, from launching the processes until the last one has its messages
accepted: what both cores together can do when the one writer is the only thing shared.

With `--outbox` as well, the P processes only write (their messages pending in the outbox, as
`smsbot start` leaves them) and one more process sends, as `smsbot serve`'s sender does, at its
leanest: it claims up to 15,000 due messages in one `UPDATE … RETURNING`, posts them in one bulk
call and marks them sent in one UPDATE, until all N are sent. That is smsbot's shape (start
processes write, a server sends from the durable outbox) with nothing else: the bound for a
bulk start whose messages wait in an outbox before they go.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import datetime as dt
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jinja2
import phonenumbers

from bench.common import API_KEY, VN, Figure, base_env, python_argv, say, skipped, sqlite_url
from smsbot.store.sqlite_writer import WriterHandoff

REPO = Path(__file__).resolve().parents[1]
CHUNK = 1_000
BULK_CALL = 15_000


def _ts(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def run(
    rows: int, db: Path, provider: str, api_key: str, procs: int = 1, outbox: bool = False
) -> dict[str, Any]:
    from bench.offline import write_csv  # the same file as benchmark 3 (which imports this)

    path = db.with_suffix(".csv")
    write_csv(path, rows)
    if procs > 1 or outbox:
        return _run_parallel(rows, path, db, provider, api_key, procs, outbox)
    return _run_part(rows, path, db, provider, api_key, 0, 1)


def _run_parallel(
    rows: int, path: Path, db: Path, provider: str, api_key: str, procs: int, outbox: bool
) -> dict[str, Any]:
    """`procs` processes, each every procs-th chunk (and with `outbox` one more that sends);
    wall time until the last message is sent."""
    common = ["--rows", str(rows), "--db", str(db), "--provider", provider, "--api-key", api_key]
    argv = [sys.executable, "-m", "bench.bulk_ceiling", *common]
    write_only = ["--write-only"] if outbox else []
    started = time.perf_counter()
    children = [
        subprocess.Popen([*argv, "--part", f"{k}/{procs}", *write_only], stdout=subprocess.PIPE)
        for k in range(procs)
    ]
    if outbox:
        children.append(subprocess.Popen([*argv, "--sender"], stdout=subprocess.PIPE))
    outs = [child.communicate()[0] for child in children]
    wall = time.perf_counter() - started
    if any(child.returncode for child in children):
        raise RuntimeError(f"a ceiling process failed: {[c.returncode for c in children]}")
    parts = [json.loads(out) for out in outs]
    per = {
        name: sum(p["us_per_message"].get(name, 0.0) * p["rows"] for p in parts) / rows
        for name in parts[0]["us_per_message"]
    }
    return {
        "rows": rows,
        "procs": procs + outbox,
        "us_per_message": per,  # CPU and waits of every process, summed, a message
        "total_us": sum(per.values()),
        "wall_s": wall,
        "rate": rows / wall,
    }


def _run_part(
    rows: int,
    path: Path,
    db: Path,
    provider: str,
    api_key: str,
    part: int,
    parts: int,
    write_only: bool = False,
) -> dict[str, Any]:
    """Every parts-th chunk of the file from the part-th: checked, rendered, written, sent."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(REPO / "templates"), auto_reload=False)
    env.filters["datetime"] = lambda v: dt.datetime.fromisoformat(v).strftime("%a %-d %b, %H:%M")
    template = env.get_template("appointment/ask.txt")
    conn = sqlite3.connect(db, isolation_level=None, timeout=600)
    handoff = WriterHandoff.beside(str(db))
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    spent = {"check": 0.0, "render": 0.0, "write": 0.0, "send": 0.0}
    now = dt.datetime.now(dt.UTC)
    stamp = _ts(now)
    outbox: list[dict[str, Any]] = []
    loop = asyncio.new_event_loop()
    http = loop.run_until_complete(_session())
    mine = 0
    with path.open(newline="") as f:
        reader = csv.reader(f)
        next(reader)
        n = 0
        index = -1
        while True:
            index += 1
            if index % parts != part:  # another process's chunk: skipped unread
                skipped = sum(1 for _ in zip(range(CHUNK), reader, strict=False))
                if not skipped:
                    break
                n += skipped
                continue
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
            with _turn(conn, handoff):
                _write(conn, chunk, texts, n, stamp, now)
            t3 = time.perf_counter()
            n += len(chunk)
            mine += len(chunk)
            spent["check"] += t1 - t0
            spent["render"] += t2 - t1
            spent["write"] += t3 - t2
            if write_only:  # the sender process sends them from the outbox
                continue
            first = n - len(chunk)
            outbox += [
                {"sender": VN, "recipient": row[0], "content": text, "clientReference": f"m{i}"}
                for i, (row, text) in enumerate(zip(chunk, texts, strict=True), start=first)
            ]
            if parts > 1 and len(outbox) >= BULK_CALL:  # send as it goes, as a sender would
                t4 = time.perf_counter()
                loop.run_until_complete(_send(http, outbox, provider, api_key))
                spent["send"] += time.perf_counter() - t4
                outbox = []
    t4 = time.perf_counter()
    loop.run_until_complete(_send(http, outbox, provider, api_key))
    loop.run_until_complete(http.close())
    loop.close()
    spent["send"] += time.perf_counter() - t4
    conn.close()
    handoff.close()
    per = {name: seconds / mine * 1e6 for name, seconds in spent.items()}
    return {"rows": mine, "us_per_message": per, "total_us": sum(per.values())}


@contextlib.contextmanager
def _turn(conn: sqlite3.Connection, handoff: WriterHandoff) -> Iterator[None]:
    """One write transaction, in turn with the other processes (smsbot's own flock)."""
    handoff.acquire()
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
        conn.execute("COMMIT")
    finally:
        handoff.release()


def _write(
    conn: sqlite3.Connection,
    chunk: list[tuple[str, str, str, str]],
    texts: list[str],
    offset: int,
    stamp: str,
    now: dt.datetime,
) -> None:
    """A chunk's rows, in the caller's transaction."""
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


_CLAIM = (
    "UPDATE messages SET outbox = 'inflight', lease_until = ?, attempts = attempts + 1"
    " WHERE id IN (SELECT id FROM messages WHERE outbox = 'pending' AND workspace = 'default'"
    " AND send_after <= ? ORDER BY send_after, created_at LIMIT ?)"
    " RETURNING id, virtual_number, phone, body"
)
_SENT = (
    "UPDATE messages SET outbox = 'done', status = 'accepted', status_at = ?, sent_at = ?,"
    " batch_id = ? WHERE id IN (SELECT value FROM json_each(?))"
)


def _send_outbox(rows: int, db: Path, provider: str, api_key: str) -> dict[str, Any]:
    """Send `rows` messages from the outbox as a lean sender would: claim, post, mark sent."""
    conn = sqlite3.connect(db, isolation_level=None, timeout=600)
    handoff = WriterHandoff.beside(str(db))
    conn.execute("PRAGMA synchronous=NORMAL")
    loop = asyncio.new_event_loop()
    http = loop.run_until_complete(_session())
    sent, busy = 0, 0.0
    while sent < rows:
        t0 = time.perf_counter()
        now = dt.datetime.now(dt.UTC)
        with _turn(conn, handoff):
            claim = (_ts(now + dt.timedelta(minutes=5)), _ts(now), BULK_CALL)
            taken = conn.execute(_CLAIM, claim).fetchall()
        if not taken:
            busy += time.perf_counter() - t0
            time.sleep(0.005)  # nothing due yet: the writers are still writing
            continue
        outbox = [
            {"sender": vn, "recipient": to, "content": body, "clientReference": mid}
            for mid, vn, to, body in taken
        ]
        loop.run_until_complete(_send(http, outbox, provider, api_key))
        stamp = _ts(dt.datetime.now(dt.UTC))
        ids = json.dumps([mid for mid, *_ in taken])
        with _turn(conn, handoff):
            conn.execute(_SENT, (stamp, stamp, f"b{sent}", ids))
        sent += len(taken)
        busy += time.perf_counter() - t0
    loop.run_until_complete(http.close())
    loop.close()
    conn.close()
    handoff.close()
    return {"rows": sent, "us_per_message": {"send": busy / sent * 1e6}, "total_us": 0.0}


async def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession()


async def _send(
    http: aiohttp.ClientSession, outbox: list[dict[str, Any]], provider: str, api_key: str
) -> None:
    for start in range(0, len(outbox), BULK_CALL):
        body = json.dumps({"messages": outbox[start : start + BULK_CALL]})
        headers = {"X-Api-Key": api_key, "Content-Type": "application/json"}
        async with http.post(f"{provider}/sms/send/bulk", data=body, headers=headers) as r:
            if r.status >= 300:
                raise RuntimeError(f"bulk call answered {r.status}: {await r.text()}")


async def figure(o: Any, n: int, provider: Any, procs: int = 1, outbox: bool = False) -> Figure:
    """The ceiling as an info figure of benchmark 3 (a child process, a fresh database)."""
    from bench.http_benches import migrate  # bench.http_benches imports this module's users

    name = f"3 bulk start {n:,}: lean ceiling"
    if procs > 1:
        name += f", {procs} processes" + (" and an outbox sender" if outbox else "")
    url = sqlite_url(o.workdir)
    await migrate(url, o)
    argv = python_argv("bench.bulk_ceiling", "--rows", str(n), "--db", url.split(":///", 1)[1])
    proc = await asyncio.create_subprocess_exec(
        *argv, "--provider", provider.url, "--procs", str(procs), *(["--outbox"] * outbox),
        env=base_env(),
        cwd=o.workdir, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    if proc.returncode != 0:
        return skipped(name, err.decode()[-200:])
    got = json.loads(out)
    total = float(got["total_us"])
    parts = ", ".join(f"{k} {v:.0f}" for k, v in got["us_per_message"].items())
    if procs == 1:
        say(f"bulk ceiling {n:,}: {total:.0f} µs a message ({parts})")
        note = f"one process, {total:.0f} µs a message: {parts} (bench/bulk_ceiling.py)"
        return Figure(name, 1e6 / total, "msg/s", note=note)
    rate = float(got["rate"])
    shape = f"{procs} processes" + (" writing, one sending from the outbox" if outbox else "")
    say(f"bulk ceiling {n:,}, {shape}: {rate:,.0f}/s wall ({parts} µs summed)")
    flags = "--procs" + (" --outbox" if outbox else "")
    note = (
        f"{shape}, wall {got['wall_s']:.1f} s; a message's time in all of them: {parts} µs"
        f" (bench/bulk_ceiling.py {flags})"
    )
    return Figure(name, rate, "msg/s", note=note)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bulk_ceiling")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--db", type=Path, required=True, help="a migrated smsbot SQLite file")
    parser.add_argument("--provider", required=True, help="the fake provider's URL")
    parser.add_argument("--api-key", default=API_KEY)
    parser.add_argument("--procs", type=int, default=1, help="processes at once (wall time)")
    parser.add_argument("--outbox", action="store_true", help="one more process sends")
    parser.add_argument("--part", help="K/P: run only every P-th chunk from the K-th (internal)")
    parser.add_argument("--write-only", action="store_true", help="(internal) leave them pending")
    parser.add_argument("--sender", action="store_true", help="(internal) the outbox's sender")
    args = parser.parse_args()
    if args.sender:
        print(json.dumps(_send_outbox(args.rows, args.db, args.provider, args.api_key)))
        return
    if args.part:
        k, p = (int(x) for x in args.part.split("/"))
        path = args.db.with_suffix(".csv")
        got = _run_part(
            args.rows, path, args.db, args.provider, args.api_key, k, p, args.write_only
        )
        print(json.dumps(got))
        return
    got = run(args.rows, args.db, args.provider, args.api_key, args.procs, args.outbox)
    print(json.dumps(got))


if __name__ == "__main__":
    main()
