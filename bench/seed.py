"""History for a database: conversations that already happened, written straight into the tables.

A deployment that has run for a year holds a row in conversations, webhook_events, messages and
timers for everyone it ever texted. `seed_sqlite` (executemany) and `seed_postgres` (COPY) write
that history for `n` conversations fast, without the API, so that a benchmark or a test can
check that the hot path costs the same on a full database as on an empty one.

Per conversation: the conversation (idle), one finished inbound event, one delivered reply,
one timer (fired, with its firing's finished event; one in ten still scheduled a month ahead;
one in 10,000 scheduled in the past, which the next sweep marks missed). One phone in 20 has
opted out. The phones are `+4479…`: they never meet the phones the benchmarks and tests text
(`+447700…`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

VN = "+447700900100"

COLUMNS = {
    "conversations": ("id", "virtual_number", "phone", "flow", "state", "data", "version"),
    "webhook_events": (
        "id",
        "source",
        "event_id",
        "kind",
        "virtual_number",
        "phone",
        "payload",
        "state",
        "attempts",
        "received_at",
        "processed_at",
    ),
    "messages": (
        "id",
        "direction",
        "virtual_number",
        "phone",
        "body",
        "origin",
        "status",
        "provider_message_id",
        "client_reference",
        "segments",
        "encoding",
        "outbox",
        "send_after",
        "attempts",
        "created_at",
        "sent_at",
        "status_at",
    ),
    "opt_outs": ("virtual_number", "phone", "keyword", "created_at"),
    "timers": (
        "id",
        "conversation_id",
        "name",
        "kind",
        "token",
        "due_at",
        "payload",
        "state",
        "created_at",
        "fired_at",
    ),
}


SERIAL = {"conversations": 1, "webhook_events": 2, "timers": 1}  # ids seeded per conversation


def seed_phone(i: int) -> str:
    """The i-th seeded phone."""
    return f"+4479{i:08d}"


Stamp = Callable[[dt.datetime], Any]  # a datetime as the database driver wants it


def rows(table: str, n: int, now: dt.datetime, stamp: Stamp) -> Iterator[Any]:
    """The seeded rows of `table`, as tuples in COLUMNS order; ids 1..n (the tables are empty)."""
    past = stamp(now - dt.timedelta(days=30))
    for i in range(n):
        phone = seed_phone(i)
        if table == "conversations":
            yield (i + 1, VN, phone, None, None, "{}", 3)
        elif table == "webhook_events":
            payload = json.dumps({"body": "hello", "message_id": f"seed-in-{i}"})
            yield (
                2 * i + 1, "divergent", f"seed-{i}", "inbound", VN, phone, payload, "done", 0,
                past, past,
            )  # fmt: skip
            if _timer(i, now, stamp)[0] == "fired":  # its firing, stepped long ago
                yield (
                    2 * i + 2, "timer", f"timer:{i + 1}:{i:016x}", "timer", VN, phone, "{}",
                    "done", 0, past, past,
                )  # fmt: skip
        elif table == "messages":
            yield (
                f"seed{i:028d}", "out", VN, phone, "You said: hello", "reply", "delivered",
                f"seed-batch-{i}", f"seed{i:028d}", 1, "GSM-7", "done", past, 1, past, past,
                past,
            )  # fmt: skip
        elif table == "opt_outs":
            if i % 20 == 0:
                yield (VN, phone, "STOP", past)
        elif table == "timers":
            state, due = _timer(i, now, stamp)
            yield (i + 1, i + 1, "reminder", "remind", f"{i:016x}", due, "{}", state, past, None)


def _timer(i: int, now: dt.datetime, stamp: Stamp) -> tuple[str, Any]:
    """The i-th timer's state and due time."""
    if i % 10 == 0:
        return "scheduled", stamp(now + dt.timedelta(days=30))
    if i % 10_000 == 1:
        return "scheduled", stamp(now - dt.timedelta(days=1))
    return "fired", stamp(now - dt.timedelta(days=30))


def seed_sqlite(path: str, n: int, now: dt.datetime) -> None:
    """Write the history of `n` conversations into the (migrated, empty) SQLite file at `path`."""

    def stamp(moment: dt.datetime) -> str:  # SQLAlchemy's DateTime format on SQLite, naive UTC
        return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")

    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        # No journal, no fsync, a large page cache. Turning the journal off needs the file to
        # ourselves: while a bot's pool holds it open (in WAL), seed through the WAL instead.
        with contextlib.suppress(sqlite3.OperationalError):
            conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-1000000")  # KiB
        conn.execute("BEGIN")
        # Building an index from sorted rows is several times faster than growing it row by
        # row: the tables' own indexes are dropped and made again (UNIQUE constraints stay).
        indexes = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        ).fetchall()
        for name, _ in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        for table, columns in COLUMNS.items():
            marks = ", ".join("?" * len(columns))
            conn.executemany(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})",
                rows(table, n, now, stamp),
            )
        for _, sql in indexes:
            conn.execute(sql)
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode=WAL")  # as smsbot keeps it
    # No ANALYZE: a deployment's SQLite file has no statistics either.


def seed_postgres(url: str, n: int, now: dt.datetime) -> None:
    """The same into the PostgreSQL database at `url` (postgresql://), with COPY; then ANALYZE."""
    import psycopg

    def stamp(moment: dt.datetime) -> dt.datetime:
        return moment.astimezone(dt.UTC).replace(tzinfo=None)

    with psycopg.connect(url, autocommit=True) as conn:
        for table, columns in COLUMNS.items():
            with (
                conn.cursor() as cur,
                cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy,
            ):
                for row in rows(table, n, now, stamp):
                    copy.write_row(row)
            if table in SERIAL:  # the next id the table hands out comes after the seeded ones
                last = SERIAL[table] * n
                conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), {last})")
        # PostgreSQL plans from statistics; autovacuum would gather them a little later.
        conn.execute("ANALYZE")
