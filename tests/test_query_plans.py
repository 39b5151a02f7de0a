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
import functools
import json
import re
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import Engine, bindparam, event, func, insert, select, text, update
from sqlmodel import SQLModel

from bench.seed import seed_phone, seed_postgres, seed_sqlite
from smsbot.app.bulk import StartRow, enqueue_starts
from smsbot.app.server.app import create_app
from smsbot.channels.sandbox import Sandbox
from smsbot.clock import VirtualClock
from smsbot.engine.contract import EventKind
from smsbot.engine.runtime import FlowRuntime
from smsbot.pipeline import campaigns, due_timers, timer_claims
from smsbot.pipeline.bot import Bot
from smsbot.pipeline.inbox import InboxEntry
from smsbot.store import columns
from smsbot.store.engine import Database
from smsbot.store.models import (
    TIMER_SCHEDULED,
    TimerState,
    contact_groups_t,
    contacts_t,
    events_t,
    timers_t,
)
from smsbot.store.types import UTCDateTime
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


# Scheduled campaign fires of other contacts, beside the history's scheduled timers: a campaign
# that reaches a large contact list keeps one fire per contact in ix_timers_due.
SCHEDULED_FIRES = 100_000
_FIRES = (
    "INSERT INTO timers (contact_id, workspace, name, kind, token, due_at, payload, state,"
    " created_at) SELECT 1000000 + i, 'default', 'campaign:appointment-reminder@seed',"
    " 'campaign', {token}, :due, '{{}}', 'scheduled', :now FROM {rows}"
)


def insert_series(conn: Any, sql: str, n: int, **stamps: dt.datetime) -> None:
    """Run `sql` (an INSERT … SELECT … FROM {rows} with `i` from 1 to n and a {token} per row;
    datetimes as :NAME) on either database, then let PostgreSQL's planner see the rows."""
    if conn.dialect.name == "postgresql":
        sql = sql.format(token="md5(i::text)", rows="generate_series(1, :n) AS i")
    else:
        head = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :n) "
        sql = head + sql.format(token="printf('%032x', i)", rows="n")
    binds = [bindparam(name, value, type_=UTCDateTime()) for name, value in stamps.items()]
    conn.execute(text(sql).bindparams(*binds), {"n": n})
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("ANALYZE timers")


def seed_scheduled_fires(conn: Any, n: int) -> None:
    """`n` scheduled campaign fires, due a month ahead, of contacts the test never reads."""
    insert_series(conn, _FIRES, n, due=T0 + dt.timedelta(days=30), now=T0 - dt.timedelta(days=30))


async def test_a_campaign_sync_skips_and_cancels_only_its_own_fires(bot: Bot) -> None:
    # A campaign sync marks the fires it skips or cancels by `id IN (…)`, still scheduled. That
    # shape let SQLite's planner (no ANALYZE) pick ix_timers_due and read every scheduled timer
    # in a timer claim (test_claiming_several_timers_reads_only_them): here the sync moves
    # several fires each way at once, among SCHEDULED_FIRES scheduled fires of other contacts.
    await bot.db.write(functools.partial(seed_scheduled_fires, n=SCHEDULED_FIRES))
    sync = bot.scheduler.campaigns
    assert sync is not None and sync.active  # flows/appointment_reminders.py
    before = T0 - dt.timedelta(days=1)
    # 30 patients, each with an appointment tomorrow: a fire at 9:00 London time on T0's day
    appointment = {"appointment_at": "2026-01-16T10:00:00+00:00"}
    people = [
        {"phone": f"+447700900{400 + i}", "fields": appointment, "created_at": before}
        for i in range(30)
    ]

    def add_contacts(conn: Any) -> list[int]:
        ids = [
            conn.execute(
                insert(contacts_t).values(**p, updated_at=before - dt.timedelta(minutes=1))
            ).inserted_primary_key[0]
            for p in people
        ]
        rows = [{"contact_id": i, "name": "patients", "created_at": before} for i in ids]
        conn.execute(insert(contact_groups_t), rows)
        return ids

    ids = await bot.db.write(add_contacts)
    moved, left, kept = ids[:12], ids[12:20], ids[20:]

    def change(conn: Any) -> None:
        # 12 move to Tokyo, where 9:00 on T0's day has passed: skipped; 8 leave the group:
        # cancelled
        changed = T0 - dt.timedelta(minutes=1)
        c, g = contacts_t, contact_groups_t
        conn.execute(update(c).where(c.c.id.in_(moved)).values(timezone="Asia/Tokyo"))
        conn.execute(g.delete().where(g.c.contact_id.in_(left)))
        conn.execute(update(c).where(c.c.id.in_(moved + left)).values(updated_at=changed))

    def states(conn: Any) -> dict[int, str]:
        t = timers_t
        found = conn.execute(select(t.c.contact_id, t.c.state).where(t.c.contact_id.in_(ids)))
        return dict(found.all())

    recorded = Statements()  # the sync's and cancel_fires' statements, not the test's
    with recorded:
        await bot.scheduler.sync_campaigns(before)  # schedules the 30 fires
    assert set((await bot.db.read(states)).values()) == {TimerState.SCHEDULED.value}
    await bot.db.write(change)
    with recorded:
        await bot.scheduler.sync_campaigns(T0)
    # The scheduler cancels the fires of deleted contacts (6), one already cancelled among them
    fires = await bot.db.read(functools.partial(_fire_ids, contact_ids=[*kept[:6], left[0]]))
    with recorded:
        cancelled = await bot.db.write(functools.partial(campaigns.cancel_fires, ids=fires))
    assert cancelled == 6
    found = await bot.db.read(states)
    assert [found[i] for i in moved] == [TimerState.SKIPPED.value] * 12
    assert [found[i] for i in left + kept[:6]] == [TimerState.CANCELLED.value] * 14
    assert [found[i] for i in kept[6:]] == [TimerState.SCHEDULED.value] * 4
    statements = {s: p for s, p in recorded.seen.items() if not s.startswith(("BEGIN", "COMMIT"))}
    # the skips (12 ids), the cancels (8) and cancel_fires' (7, or the 6 still scheduled)
    updates = [s for s in statements if s.startswith("UPDATE timers")]
    assert len(updates) == 3, "\n".join(updates)
    if bot.db.is_postgres:
        problems = await postgres_problems(bot, statements)
    else:
        problems = sqlite_problems(bot.db.url.split(":///", 1)[1], statements)
    assert not problems, "\n".join(problems)
    bound = [s for s in statements if BOUND_STATE.search(s.split(" WHERE ", 1)[-1])]
    assert not bound, "\n".join(bound)
    async with bot.db.session() as s:  # the fires really were among that many scheduled ones
        t = timers_t
        scheduled = select(func.count()).select_from(t).where(TIMER_SCHEDULED)
        assert (await s.execute(scheduled)).scalar_one() >= SCHEDULED_FIRES


def _fire_ids(conn: Any, contact_ids: list[int]) -> list[int]:
    """The ids of these contacts' campaign fires."""
    t = timers_t
    return list(conn.execute(select(t.c.id).where(t.c.contact_id.in_(contact_ids))).scalars())


# More late timers than a page of the sweep (due_timers.BATCH = 500): it marks them a page at
# a time, and a plan on ix_timers_due would read every late one left for each page.
LATE = 1_200
_LATE = (
    "INSERT INTO timers (conversation_id, workspace, name, kind, token, due_at, payload, state,"
    " created_at) SELECT i, 'default', 'late', 'remind', {token}, :due, '{{}}', 'scheduled',"
    " :due FROM {rows}"
)


def seed_late_timers(conn: Any, n: int) -> None:
    """`n` scheduled timers of the seeded conversations 1..n, due a week before T0."""
    insert_series(conn, _LATE, n, due=T0 - dt.timedelta(days=7))


async def test_a_sweep_marks_late_timers_missed_by_primary_key(bot: Bot) -> None:
    # Timers later than SMSBOT_REMINDER_MAX_LATENESS are marked missed, a page of ids at a
    # time. Next to `id IN (…)`, the state and the due time let SQLite's planner take
    # ix_timers_due and read every late timer still scheduled, for each page.
    await bot.db.write(functools.partial(seed_late_timers, n=LATE))
    recorded = Statements()
    with recorded:
        await bot.scheduler.fire_due(T0)

    def missed(conn: Any) -> int:
        t = timers_t
        query = select(func.count()).where(t.c.name == "late", t.c.state == "missed")
        return int(conn.execute(query).scalar_one())

    assert await bot.db.read(missed) == LATE
    by_id = {
        s: p
        for s, p in recorded.seen.items()
        if re.match(r"(UPDATE timers|SELECT timers\.id, timers\.state, timers\.due_at)", s)
    }
    assert len(by_id) >= 2, "\n".join(recorded.seen)  # the read and the mark
    # A page of ids reads a page of rows, more than the per-statement budgets above allow:
    # what is checked is that timers are read by primary key only.
    if bot.db.is_postgres:
        async with bot.db.engine.connect() as conn:
            for sql, params in by_id.items():
                found = await conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {sql}", tuple(params))
                doc = found.scalar_one()
                plan = (json.loads(doc) if isinstance(doc, str) else doc)[0]["Plan"]
                scans = [n for n in _nodes(plan) if "Scan" in n["Node Type"]]
                used = {n.get("Index Name") for n in scans if n.get("Relation Name") == "timers"}
                assert used == {"timers_pkey"}, f"{used}\n    in: {sql}"
    else:
        path = bot.db.url.split(":///", 1)[1]
        for sql, params in by_id.items():
            plan = sqlite_plan(path, sql, params)
            assert "timers USING INTEGER PRIMARY KEY" in plan and "ix_timers_due" not in plan, (
                f"{plan}\n    in: {sql}"
            )


async def test_a_timer_page_probes_only_its_own_events_before_any_analyze(db: Database) -> None:
    """due_timers' "fired already" read on PostgreSQL, as a prepared statement's generic plan
    runs it on a webhook_events table that has no statistics yet (a fresh database filling
    fast): one index probe an id. `IN (…)` and `= ANY (…)` read every 'timer' event there."""
    if not db.is_postgres:
        pytest.skip("SQLite answers an IN list on the unique index with or without statistics")
    async with db.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO webhook_events (source, event_id, kind, payload, state, attempts,"
                " received_at, workspace) SELECT 'timer', 'timer:' || g || :token, 'timer', '{}',"
                " 'done', 0, now(), 'default' FROM generate_series(1, 3000) AS g"
            ),
            {"token": ":t"},
        )
    ids = [f"timer:{g}:t" for g in range(1000, 1010)] + ["timer:0:none"]
    sql = str(due_timers._FIRED_PG.statement).replace(":ids", "$1")
    async with db.engine.connect() as conn:
        await conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
        found = await conn.exec_driver_sql(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", (ids,))
        doc = found.scalar_one()
        rows = (await conn.exec_driver_sql(sql, (ids,))).scalars().all()
    plan = (json.loads(doc) if isinstance(doc, str) else doc)[0]["Plan"]
    read = sum(
        n.get("Actual Rows", 0) * n.get("Actual Loops", 1) + n.get("Rows Removed by Filter", 0)
        for n in _nodes(plan)
        if n.get("Relation Name") == "webhook_events"
    )
    assert sorted(rows) == sorted(ids[:-1])
    assert read <= len(ids), json.dumps(plan, indent=1)
