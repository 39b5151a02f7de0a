"""Every query of the hot path finds its rows through an index, however big the tables are.

The statements are not copied here: an event listener records what the real code runs while
the real inbox, dispatcher, sender, receipts and timer scheduler take a few conversations
through their turns on a database that already holds 50,000 conversations of history. Each
statement that touches a large table is then explained with its own parameters:

- SQLite (`EXPLAIN QUERY PLAN`, no ANALYZE, as in a deployment): no `SCAN` of a large table
  (a full pass over it or over one of its indexes), and no `SEARCH` without an equality in its
  index condition (a range such as `rowid>?` can be the whole table too).
- PostgreSQL (`EXPLAIN`, after ANALYZE: the tables are large enough that the planner really
  chooses a sequential scan where no index serves; `enable_seqscan` is left on): no `Seq Scan`
  of a large table, no index scan without an index condition.

A plan can use an index and still read much of the table (an index on `state`, for every
scheduled timer of every conversation), so each statement is also run (and rolled back) to
measure its work: SQLite's virtual-machine instructions (a progress handler),
PostgreSQL's rows read (`EXPLAIN ANALYZE`). Both stay within a budget far below one pass
over the history.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import re
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import Engine, event, update
from sqlmodel import SQLModel

from bench.seed import seed_phone, seed_postgres, seed_sqlite
from smsbot.app.bulk import StartRow, enqueue_starts
from smsbot.app.server.app import create_app
from smsbot.channels.sandbox import Sandbox
from smsbot.clock import VirtualClock
from smsbot.engine.contract import EventKind
from smsbot.engine.runtime import FlowRuntime
from smsbot.pipeline import timer_claims
from smsbot.pipeline.bot import Bot
from smsbot.pipeline.inbox import InboxEntry
from smsbot.store import columns
from smsbot.store.models import events_t
from tests.support import VN, inbound_body, make_bot, receipt_body, settings_for, signed

REPO = Path(__file__).resolve().parents[1]
T0 = dt.datetime(2026, 1, 15, 14, 0, tzinfo=dt.UTC)
HISTORY = 50_000
LARGE = ("conversations", "messages", "webhook_events", "opt_outs", "timers")
MENTIONS = re.compile(r"\b(" + "|".join(LARGE) + r")\b")
ALIAS = re.compile(r"\b(" + "|".join(LARGE) + r")\s+AS\s+(\w+)", re.IGNORECASE)
# Indexes of only the unfinished rows: pending events, scheduled timers, open messages
# (store/columns.py, only_rows):
# PostgreSQL leaves their predicate out of a plan's index condition, and may read such an index
# from its start when it is small. That reads the backlog, never the history; the rows-read
# budget below still bounds it.
PARTIAL = {
    i.name
    for t in SQLModel.metadata.sorted_tables
    for i in t.indexes
    if i.info.get(columns.PARTIAL) is not None
}
# An event's or timer's state compared with a parameter, not a value written in the SQL.
BOUND_STATE = re.compile(r"(?<![\w.])(?:webhook_events\.|timers\.)?state = (?:\?|\$\d+)")
PHONES = ["+447700900201", "+447700900202", "+447700900203"]
# What one statement of these turns may cost: a few index probes. Reading the history of one
# table (50,000 rows) costs about a hundred times more.
SQLITE_BUDGET = 2_000  # virtual-machine instructions
POSTGRES_BUDGET = 500  # rows read from the large tables


class Statements:
    """Every statement any engine runs while recording, with its first set of parameters."""

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}

    def __enter__(self) -> Statements:
        event.listen(Engine, "before_cursor_execute", self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(Engine, "before_cursor_execute", self._record)

    def _record(
        self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        if MENTIONS.search(statement) and statement not in self.seen:
            # executemany: the first row's parameters (a batched INSERT has them flat already)
            nested = many and parameters and isinstance(parameters[0], tuple | list | dict)
            self.seen[statement] = parameters[0] if nested else parameters


@pytest.fixture
async def bot(db_url: str, sandbox: Sandbox) -> AsyncIterator[Bot]:
    """The example flows' bot on a database that holds HISTORY conversations already."""
    assert sandbox.url is not None
    flows = {
        "SMSBOT_FLOWS_DIR": str(REPO / "flows"),
        "SMSBOT_TEMPLATES_DIR": str(REPO / "templates"),
        "SMSBOT_DEFAULT_SENDER": VN,
    }
    runtime = FlowRuntime.from_settings(settings_for(db_url, sandbox.url, **flows))
    bot = await make_bot(db_url, sandbox, runtime, VirtualClock(T0), **flows)
    if bot.db.is_postgres:
        plain = db_url.replace("postgresql+asyncpg://", "postgresql://", 1)
        await asyncio.to_thread(seed_postgres, plain, HISTORY, T0)
    else:
        await asyncio.to_thread(seed_sqlite, db_url.split(":///", 1)[1], HISTORY, T0)
    yield bot
    await bot.stop()


async def take_turns(bot: Bot, client: TestClient[Any, Any], sandbox: Sandbox) -> None:
    """Bulk starts, a reply, a duplicate, a receipt, a reminder, a STOP, a timer leader's sync."""
    clock = bot.clock
    assert isinstance(clock, VirtualClock)
    bot.sender.handover = True  # replies claimed by their step's write too (its queries)

    async def post(body: bytes) -> None:
        resp = await client.post("/webhooks/divergent", data=body, headers=signed(body, clock))
        assert resp.status == 200, await resp.text()

    starts = T0 + dt.timedelta(days=1, minutes=5)  # the reminder is due 5 minutes from now
    data = {"name": "Sam", "starts_at": starts.isoformat(), "location": "Riverside Clinic"}
    past = {**data, "starts_at": (T0 - dt.timedelta(days=1)).isoformat()}  # refused: parked
    rows = [StartRow(i, p, VN, data) for i, p in enumerate(PHONES)]
    rows += [StartRow(9, seed_phone(0), VN, data), StartRow(10, "+447700900209", VN, past)]
    result = await enqueue_starts(bot.db, bot.handler, bot.clock, "appointment", rows)
    assert (result.started, result.skipped_opted_out) == (4, 1)  # seed_phone(0) opted out
    await bot.run_until_idle()
    confirm = inbound_body("evt_yes", "YES", sender=PHONES[0])
    await post(confirm)
    await post(confirm)  # a duplicate: the inbox looks the stored one up
    await bot.run_until_idle()
    first = next(m for m in sandbox.messages if m.recipient == PHONES[0])
    await post(receipt_body(first.client_reference, "Delivered"))
    await post(inbound_body("evt_stop", "STOP", sender=PHONES[1]))
    await bot.run_until_idle()
    clock.set(T0 + dt.timedelta(minutes=5))
    assert await bot.fire_due_timers() == 1  # the reminder
    await bot.run_until_idle()
    await bot.scheduler.start()  # on SQLite, or alone on PostgreSQL, it leads: sweep and mirror
    try:
        async with asyncio.timeout(30):
            while bot.scheduler.last_sync is None:
                await asyncio.sleep(0.05)
    finally:
        await bot.scheduler.stop()
    texts = [m.content for m in sandbox.messages]
    assert len(texts) == 3 + 1 + 1 + 1, texts  # 3 asks, confirmed, STOP's answer, reminder


def sqlite_problems(db_path: str, statements: dict[str, Any]) -> list[str]:
    """The plan lines that read a large table in full, and statements over the work budget."""
    problems = []
    with contextlib.closing(sqlite3.connect(db_path, isolation_level=None)) as conn:
        for sql, params in statements.items():
            large = set(LARGE) | {alias for _, alias in ALIAS.findall(sql)}
            plan = plan_lines(conn, sql, params)
            for line in plan:
                m = re.match(r"(SCAN|SEARCH) (\w+)(.*)", line)
                if m is not None and m[2] in large and (m[1] == "SCAN" or "=" not in m[3]):
                    problems.append(f"{line}\n    in: {sql}\n    plan: {plan}")
            if not sql.startswith("INSERT"):  # an INSERT reads nothing; it would collide, too
                steps = sqlite_steps(conn, sql, params)
                if steps > SQLITE_BUDGET:
                    problems.append(f"{steps:,} instructions\n    in: {sql}\n    plan: {plan}")
    return problems


def sqlite_steps(conn: sqlite3.Connection, sql: str, params: Any) -> int:
    """How many virtual-machine instructions SQLite runs for `sql` (then rolled back)."""
    counted = [0]

    def tick() -> int:
        counted[0] += 10
        return 0  # go on

    conn.set_progress_handler(tick, 10)
    conn.execute("BEGIN")
    try:
        conn.execute(sql, params or ()).fetchall()
    finally:
        conn.execute("ROLLBACK")
        conn.set_progress_handler(None, 0)
    return counted[0]


async def postgres_problems(bot: Bot, statements: dict[str, Any]) -> list[str]:
    """Full scans of a large table in the plans, and statements that read too many rows."""
    problems = []
    async with bot.db.engine.connect() as conn:
        for sql, params in statements.items():
            # ANALYZE runs the statement to count the rows it read, then it is rolled back. An
            # INSERT is only planned: it reads nothing, and would collide with the turn's row.
            options = "FORMAT JSON" if sql.startswith("INSERT") else "ANALYZE, FORMAT JSON"
            async with conn.begin() as tx:
                found = await conn.exec_driver_sql(f"EXPLAIN ({options}) {sql}", tuple(params))
                doc = found.scalar_one()
                await tx.rollback()
            read = 0
            for node in _nodes((json.loads(doc) if isinstance(doc, str) else doc)[0]["Plan"]):
                table, kind = node.get("Relation Name"), node["Node Type"]
                if table not in LARGE:
                    continue
                read += node.get("Actual Rows", 0) * node.get("Actual Loops", 1)
                read += node.get("Rows Removed by Filter", 0)
                read += node.get("Rows Removed by Index Recheck", 0)
                whole = "Index Cond" not in node and node.get("Index Name") not in PARTIAL
                if kind == "Seq Scan" or ("Index" in kind and whole):
                    problems.append(f"{kind} on {table}\n    in: {sql}")
            if read > POSTGRES_BUDGET:
                problems.append(f"{read:,} rows read\n    in: {sql}")
    return problems


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan] + [n for child in plan.get("Plans", []) for n in _nodes(child)]


async def test_no_hot_query_scans_a_large_table(
    bot: Bot, sandbox: Sandbox, aiohttp_client: Any
) -> None:
    client = await aiohttp_client(create_app(bot, run_workers=False))
    # Another workspace waits too (its event not due for a month), so the dispatcher shares
    # each batch between workspaces (claims.due_keys' fair lanes) all through the turns.
    other = InboxEntry(
        "api", "other", EventKind.START, {}, "+447700900999", "+447700900998", workspace="other"
    )
    await bot.inbox.accept(other)
    async with bot.db.session() as s, s.begin():
        later = T0 + dt.timedelta(days=30)
        await s.execute(
            update(events_t).where(events_t.c.event_id == "other").values(next_attempt_at=later)
        )
    with Statements() as recorded:
        await take_turns(bot, client, sandbox)
    statements = {s: p for s, p in recorded.seen.items() if not s.startswith(("BEGIN", "COMMIT"))}
    touched = {t for s in statements for t in MENTIONS.findall(s)}
    assert touched == set(LARGE)  # the turns reached every large table
    # the dispatcher's interactive lane (claims.due_keys: pending inbound messages first) ran
    # and so has its plan checked below
    lane = [s for s in statements if "webhook_events.kind =" in s and "IS NOT NULL" in s]
    assert lane, "the interactive lane's query did not run"
    handed = [s for s in statements if "messages.outbox = 'inflight'" in s and "DISTINCT" in s]
    assert handed, "no reply was handed over to its sender (handover.take's query)"
    fair = [s for s in statements if "webhook_events.workspace =" in s]
    assert fair, "the dispatcher's per-workspace lanes did not run"
    # The partial indexes serve a query only if it names the state in its SQL (is_value): a
    # bound state makes SQLite prepare the statement again at every call, and PostgreSQL's
    # generic plan (a prepared statement's, after five runs) cannot use them at all.
    assert {"ix_events_pending", "ix_timers_due", "ix_messages_open"} <= PARTIAL
    bound = [s for s in statements if BOUND_STATE.search(s.split(" WHERE ", 1)[-1])]
    assert not bound, "\n".join(bound)
    if bot.db.is_postgres:
        problems = await postgres_problems(bot, statements)
    else:
        problems = sqlite_problems(bot.db.url.split(":///", 1)[1], statements)
        # a conversation's open messages, not its history (ix_messages_key): the handover's
        # and the sender's one-send-at-a-time check
        claim = [s for s in statements if "other.outbox = 'inflight'" in s]
        assert claim, "the sender's claim did not run"
        for sql in handed + claim:
            plan = sqlite_plan(bot.db.url.split(":///", 1)[1], sql, statements[sql])
            assert "ix_messages_open" in plan, plan
    assert not problems, "\n".join(problems)


def sqlite_plan(db_path: str, sql: str, params: Any) -> str:
    """SQLite's plan for `sql`, one line a step."""
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        return "\n".join(plan_lines(conn, sql, params))


def plan_lines(conn: sqlite3.Connection, sql: str, params: Any) -> list[str]:
    """What `EXPLAIN QUERY PLAN` says of `sql`: one line a step."""
    return [str(row[3]) for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params or ())]


async def test_claiming_several_timers_reads_only_them(bot: Bot) -> None:
    # Next to `id IN (…)`, a `state = ?` test let SQLite's planner (no ANALYZE) pick the index
    # on state and read every scheduled timer of the history (one in ten of HISTORY): 10 ms a
    # claim at 100,000. A claim of one timer plans on the primary key and hides that.
    fires = {(i + 1, f"{i:016x}"): 1_000 + i for i in range(0, 200, 10)}  # seeded, scheduled
    with Statements() as recorded:
        assert len(await bot.db.read(lambda conn: timer_claims._read_fires(conn, fires))) == 20
        assert len(await bot.db.write(lambda conn: timer_claims.claim_fires(conn, fires, T0))) == 20
    statements = {s: p for s, p in recorded.seen.items() if not s.startswith(("BEGIN", "COMMIT"))}
    assert any("timers" in s for s in statements)
    if bot.db.is_postgres:
        problems = await postgres_problems(bot, statements)
    else:
        problems = sqlite_problems(bot.db.url.split(":///", 1)[1], statements)
    assert not problems, "\n".join(problems)
