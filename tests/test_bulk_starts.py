"""Bulk starts stepped in the starting process (pipeline/starts.py) keep the normal path's promises.

Each test runs on SQLite and on PostgreSQL, with the example flows, a real bot, the sandbox
provider and a virtual clock:
- a start written by the fast path leaves exactly the rows the dispatcher would have written
  for the same start (conversation, question held by quiet hours, timers, history, event);
- a conversation with a pending event, or one that moves between the read and the write,
  is not written by the fast path: its start is queued behind, and stepped once, in order;
- a start whose event is already stored writes nothing (once only);
- opted-out phones are skipped; a failing step is left to the dispatcher, which parks it;
- a step that waits past the step timeout is cut short and left to the dispatcher as a failing
  one is: the run goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from smsbot.app.bulk import SeenOnDisk, StartRow, Validator, csv_rows, enqueue_starts
from smsbot.app.bulk_cli import check_file
from smsbot.app.operations import OperatorError
from smsbot.app.server.app import create_app
from smsbot.channels.sandbox import Sandbox
from smsbot.clock import VirtualClock
from smsbot.engine.contract import (
    ConversationKey,
    ConversationSnapshot,
    DispatchEvent,
    StepResult,
)
from smsbot.engine.runtime import FlowRuntime
from smsbot.pipeline import step_rows
from smsbot.pipeline.bot import Bot
from smsbot.pipeline.contacts import suppression_hash
from smsbot.pipeline.starts import Start, start_chunk
from smsbot.store.engine import Database
from smsbot.store.models import (
    EventState,
    conversations_t,
    events_t,
    messages_t,
    opt_outs_t,
    state_changes_t,
    suppressions_t,
    timers_t,
)
from tests.support import VN, inbound_body, settings_for, signed
from tests.test_cli import smsbot
from tests.test_faults import REPO, TOKEN, appointment, new_bot, phone

NIGHT = dt.datetime(2026, 1, 15, 22, 30, tzinfo=dt.UTC)  # inside quiet hours in London
ENV = {
    "SMSBOT_API_KEY": TOKEN,
    "SMSBOT_DEFAULT_SENDER": VN,
    "SMSBOT_FLOWS_DIR": str(REPO / "flows"),
    "SMSBOT_TEMPLATES_DIR": str(REPO / "templates"),
    "SMSBOT_QUIET_HOURS": "21:00-08:00",
}
DATA = appointment(NIGHT.replace(day=20))


class Rig:
    """A bot on the example flows at NIGHT, its HTTP client, and its runtime."""

    def __init__(self, bot: Bot, client: Any, runtime: FlowRuntime) -> None:
        self.bot, self.client, self.runtime = bot, client, runtime

    async def start(self, rows: list[StartRow], handler: Any = None) -> Any:
        """Start the appointment flow for `rows` through the fast path (app/bulk), their data
        checked first as every caller of enqueue_starts checks it (Flow.parse_start_data; not
        against the clock, so that a test can start a past appointment for its step to refuse)."""
        bot = self.bot
        parse = self.runtime.flows["appointment"].parse_start_data
        rows = [dataclasses.replace(r, data=parse(r.data)) for r in rows]
        return await enqueue_starts(bot.db, handler or self.runtime, bot.clock, "appointment", rows)

    async def start_through_the_api(self, to: str) -> None:
        """Start the appointment flow for `to` through the operator API and the dispatcher."""
        resp = await self.client.post(
            "/api/flows/appointment/start",
            json={"to": to, "data": DATA},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert resp.status == 202, await resp.text()
        assert await self.bot.dispatcher.run_until_idle() == 1

    async def text(self, event_id: str, body: str, sender: str) -> None:
        """A person texts the bot: the webhook is stored, not yet stepped."""
        raw = inbound_body(event_id, body, sender=sender)
        resp = await self.client.post(
            "/webhooks/divergent", data=raw, headers=signed(raw, self.bot.clock)
        )
        assert resp.status == 200, await resp.text()

    async def rows(self, table: Any, to: str, *order: Any) -> list[dict[str, Any]]:
        """Every row of `table` about phone `to`, as dicts."""
        async with self.bot.db.session() as s:
            if "phone" not in table.c:  # timers, state changes: by their conversation
                convo = select(conversations_t.c.id).where(conversations_t.c.phone == to)
                query = select(table).where(table.c.conversation_id.in_(convo))
            else:
                query = select(table).where(table.c.phone == to)
            found = await s.execute(query.order_by(*order))
            return [dict(r._mapping) for r in found]


@pytest.fixture
async def rig(db_url: str, sandbox: Sandbox, aiohttp_client: Any) -> Rig:
    assert sandbox.url is not None
    runtime = FlowRuntime.from_settings(settings_for(db_url, sandbox.url, **ENV))
    bot = await new_bot(db_url, sandbox, runtime, VirtualClock(NIGHT), env=ENV)
    client = await aiohttp_client(create_app(bot, run_workers=False))
    return Rig(bot, client, runtime)


def same(rows: list[dict[str, Any]], *drop: str) -> list[dict[str, Any]]:
    """Rows without the columns that differ between two phones (ids, phone, foreign keys)."""
    # the API's start has its own event id, not bulk:RUN:LINE
    gone = {"id", "phone", "conversation_id", "event_id", "token", "state_token", *drop}
    return [{k: v for k, v in r.items() if k not in gone} for r in rows]


async def test_a_fast_start_writes_what_the_dispatcher_writes(rig: Rig) -> None:
    slow, fast = phone(1), phone(2)
    await rig.start_through_the_api(slow)
    result = await rig.start([StartRow(2, fast, VN, DATA)])
    assert (result.started, result.queued) == (1, 0)

    for table, order in (
        (conversations_t, conversations_t.c.id),
        (messages_t, messages_t.c.created_at),
        (timers_t, timers_t.c.name),
        (state_changes_t, state_changes_t.c.id),
        (events_t, events_t.c.id),
    ):
        slow_rows, fast_rows = (
            await rig.rows(table, slow, order),
            await rig.rows(table, fast, order),
        )
        assert slow_rows, table.name
        assert same(fast_rows) == same(slow_rows), table.name
    (question,) = await rig.rows(messages_t, fast, messages_t.c.created_at)
    assert question["send_after"] == NIGHT.replace(day=16, hour=8, minute=0)  # after quiet hours
    (event,) = await rig.rows(events_t, fast, events_t.c.id)
    assert event["state"] == EventState.DONE.value and event["event_id"].startswith("bulk:")
    # the ids only the write learnt (step_rows.StepRows.fill): the event's, on both paths
    for to in (slow, fast):
        (stored,) = await rig.rows(events_t, to, events_t.c.id)
        for table in (messages_t, state_changes_t):
            assert {r["event_id"] for r in await rig.rows(table, to, table.c.id)} == {stored["id"]}


async def test_rows_are_built_before_the_write_lock_is_taken(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bulk chunk's rows are built and bound while SQLite's write lock is free (step_rows.py,
    Database.write's `before`): the other start processes and `smsbot serve` wait for that lock.
    Another connection to the file tries to take the lock each time a step's rows are built."""
    db = rig.bot.db
    if db.is_postgres:
        pytest.skip("PostgreSQL has no one write lock for the rows to be built outside of")
    path = db.engine.sync_engine.url.database
    assert path is not None
    free: list[bool] = []
    build = step_rows.rows_of

    def recording(*args: Any) -> Any:
        other = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # fails at once while a writer holds the lock
            other.execute("ROLLBACK")
            free.append(True)
        except sqlite3.OperationalError:
            free.append(False)
        finally:
            other.close()
        return build(*args)

    monkeypatch.setattr(step_rows, "rows_of", recording)
    result = await rig.start([StartRow(2, phone(2), VN, DATA), StartRow(3, phone(3), VN, DATA)])
    assert (result.started, result.queued) == (2, 0)
    assert free == [True, True]


async def test_a_start_goes_behind_a_pending_text_and_both_are_stepped_in_order(rig: Rig) -> None:
    busy, free = phone(1), phone(2)
    await rig.text("evt_hours", "HOURS", busy)  # stored, not stepped yet
    result = await rig.start([StartRow(2, busy, VN, DATA), StartRow(3, free, VN, DATA)])
    assert (result.started, result.queued) == (2, 1)
    assert len(await rig.rows(messages_t, busy, messages_t.c.created_at)) == 0
    await rig.bot.dispatcher.run_until_idle()
    events = await rig.rows(events_t, busy, events_t.c.id)
    assert [e["kind"] for e in events] == ["inbound", "start"]
    assert all(e["state"] == EventState.DONE.value for e in events)
    assert events[0]["processed_at"] <= events[1]["processed_at"]
    (convo,) = await rig.rows(conversations_t, busy, conversations_t.c.id)
    assert (convo["flow"], convo["state"]) == ("appointment", "waiting")


class Meddler:
    """The flows' runtime, except that while one phone's start is stepped, `meanwhile` runs."""

    def __init__(self, runtime: FlowRuntime, target: str, meanwhile: Callable[[], Awaitable[None]]):
        self.runtime, self.target, self.meanwhile = runtime, target, meanwhile
        self.campaigns = runtime.campaigns

    async def handle(
        self, event: DispatchEvent, convo: ConversationSnapshot, now: dt.datetime
    ) -> StepResult:
        result = await self.runtime.handle(event, convo, now)
        if convo.key.phone == self.target:
            await self.meanwhile()
        return result


async def test_a_conversation_that_moves_during_the_step_is_not_overwritten(rig: Rig) -> None:
    target, other = phone(1), phone(2)

    async def text_and_step() -> None:  # the dispatcher answers a text from `target` meanwhile
        await rig.text("evt_meanwhile", "HOURS", target)
        assert await rig.bot.dispatcher.run_until_idle() == 1

    meddler = Meddler(rig.runtime, target, text_and_step)
    rows = [StartRow(2, target, VN, DATA), StartRow(3, other, VN, DATA)]
    result = await rig.start(rows, handler=meddler)
    assert (result.started, result.queued) == (2, 1)  # the target's start was not written here
    await rig.bot.dispatcher.run_until_idle()
    messages = await rig.rows(messages_t, target, messages_t.c.created_at)
    outbound = [m["body"] for m in messages if m["direction"] == "out"]
    assert len(outbound) == 2 and "Reply YES" in outbound[1]  # the hours, then one question
    (convo,) = await rig.rows(conversations_t, target, conversations_t.c.id)
    assert (convo["state"], convo["version"]) == ("waiting", 2)


async def test_a_fast_start_does_not_parse_its_checked_data_again(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """enqueue_starts' rows were checked by Flow.parse_start_data (app/bulk.Validator); their
    steps take that answer as it is (DispatchEvent.data_checked) instead of parsing it again
    in Router.check_start. A START read back from the inbox is still parsed."""
    flow = rig.runtime.flows["appointment"]
    parsed: list[dict[str, Any]] = []
    original = flow.parse_start_data

    def counting(data: Any, **kwargs: Any) -> dict[str, Any]:
        parsed.append(dict(data))
        return original(data, **kwargs)

    monkeypatch.setattr(flow, "parse_start_data", counting)
    fast, slow = phone(1), phone(2)
    result = await rig.start([StartRow(2, fast, VN, DATA)])
    assert (result.started, parsed) == (1, [DATA])  # Rig.start's check, and no second parse
    await rig.start_through_the_api(slow)
    assert parsed == [DATA, DATA, DATA]  # the API's check, then the dispatcher's step
    for to in (fast, slow):
        (convo,) = await rig.rows(conversations_t, to, conversations_t.c.id)
        assert (convo["state"], convo["data"]["name"]) == ("waiting", "Sam")


async def test_a_start_already_stored_writes_nothing_again(rig: Rig) -> None:
    key = ConversationKey(VN, phone(1))
    start = Start("bulk:once:2", key, DATA)
    now = rig.bot.clock.now()
    first = await start_chunk(
        rig.bot.db, rig.runtime, now, "appointment", [start], workspace="default"
    )
    again = await start_chunk(
        rig.bot.db, rig.runtime, now, "appointment", [start], workspace="default"
    )
    assert (first.stepped, first.duplicates) == (1, 0)
    assert (again.stepped, again.queued, again.duplicates) == (0, 0, 1)
    assert len(await rig.rows(messages_t, key.phone, messages_t.c.created_at)) == 1
    (convo,) = await rig.rows(conversations_t, key.phone, conversations_t.c.id)
    assert convo["version"] == 1


async def test_opted_out_phones_are_skipped_and_failing_steps_are_parked(rig: Rig) -> None:
    stopped, past, fine = phone(1), phone(2), phone(3)
    async with rig.bot.db.session() as s:
        await s.execute(
            opt_outs_t.insert().values(
                workspace="default", virtual_number=VN, phone=stopped, keyword="STOP",
                created_at=NIGHT,
            )
        )  # fmt: skip
        await s.commit()
    gone = appointment(NIGHT - dt.timedelta(days=1))  # the flow refuses a past appointment
    rows = [
        StartRow(2, stopped, VN, DATA),
        StartRow(3, past, VN, gone),
        StartRow(4, fine, VN, DATA),
    ]
    result = await rig.start(rows)
    assert (result.started, result.queued, result.skipped_opted_out) == (2, 1, 1)
    assert await rig.rows(events_t, stopped, events_t.c.id) == []
    for _ in range(10):  # the dispatcher retries the failing step, then parks it
        await rig.bot.dispatcher.run_until_idle()
        rig.bot.clock.advance(dt.timedelta(hours=1))
    (event,) = await rig.rows(events_t, past, events_t.c.id)
    assert event["state"] == EventState.FAILED.value
    assert await rig.rows(messages_t, past, messages_t.c.created_at) == []
    assert len(await rig.rows(messages_t, fine, messages_t.c.created_at)) == 1


async def test_an_erased_phone_that_opted_out_is_skipped(rig: Rig) -> None:
    # Its opt-out is kept only as a keyed hash (contacts_erase): the read must hash the phones
    # of the chunk when the database keeps such a hash, and only then.
    erased, fine = phone(1), phone(2)
    async with rig.bot.db.session() as s:
        await s.execute(
            suppressions_t.insert().values(
                workspace="default", virtual_number=VN, phone_hash=suppression_hash(erased),
                keyword="STOP", created_at=NIGHT,
            )
        )  # fmt: skip
        await s.commit()
    result = await rig.start([StartRow(2, erased, VN, DATA), StartRow(3, fine, VN, DATA)])
    assert (result.started, result.queued, result.skipped_opted_out) == (1, 0, 1)
    assert await rig.rows(events_t, erased, events_t.c.id) == []
    assert len(await rig.rows(messages_t, fine, messages_t.c.created_at)) == 1


class Hangs:
    """The flows' runtime, except that the step of `target` waits for ever."""

    def __init__(self, runtime: FlowRuntime, target: str) -> None:
        self.runtime, self.target = runtime, target
        self.cancelled = 0

    async def handle(
        self, event: DispatchEvent, convo: ConversationSnapshot, now: dt.datetime
    ) -> StepResult:
        if convo.key.phone == self.target:
            try:
                await asyncio.Event().wait()  # never set
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return await self.runtime.handle(event, convo, now)


async def test_a_start_that_hangs_is_cut_short_and_queued_as_a_failing_one(rig: Rig) -> None:
    hangs, fails, fine = phone(1), phone(2), phone(3)
    gone = appointment(NIGHT - dt.timedelta(days=1))  # the flow refuses a past appointment
    rows = [
        StartRow(2, hangs, VN, DATA),
        StartRow(3, fails, VN, gone),
        StartRow(4, fine, VN, DATA),
    ]
    handler = Hangs(rig.runtime, hangs)
    bot = rig.bot
    async with asyncio.timeout(10):  # without the step timeout the run would never end
        result = await enqueue_starts(
            bot.db, handler, bot.clock, "appointment", rows, step_timeout=0.2
        )
    assert handler.cancelled == 1
    assert (result.started, result.queued, result.skipped_opted_out) == (3, 2, 0)
    assert len(await rig.rows(messages_t, fine, messages_t.c.created_at)) == 1
    for who in (hangs, fails):  # nothing of the step kept, the start left to the dispatcher
        assert await rig.rows(messages_t, who, messages_t.c.created_at) == []
        assert await rig.rows(conversations_t, who, conversations_t.c.id) == []
    (hung,) = await rig.rows(events_t, hangs, events_t.c.id)
    (failed,) = await rig.rows(events_t, fails, events_t.c.id)
    assert hung["state"] == EventState.PENDING.value and hung["kind"] == "start"
    assert same([hung], "payload") == same([failed], "payload")  # queued alike
    await bot.dispatcher.run_until_idle()  # its handler does not hang: the start goes through
    (question,) = await rig.rows(messages_t, hangs, messages_t.c.created_at)
    assert "Reply YES" in question["body"]


# --- the CSV, read as a stream ------------------------------------------------------------------


def test_csv_rows_reads_as_it_goes() -> None:
    def lines() -> Any:
        yield "to,name\n"
        yield "+447700900001,Ann\n"
        raise AssertionError("read past the first row")

    first = next(csv_rows(lines()))
    assert first == (2, {"to": "+447700900001", "data": {"name": "Ann"}})


def test_check_file_spools_good_rows_and_counts_bad_ones(tmp_path: Path, db_url: str) -> None:
    settings = settings_for(db_url, "http://127.0.0.1:9", **ENV)
    path = tmp_path / "starts.csv"
    path.write_text(
        "to,name\n+447700900001,Ann\nnot a phone,Bob\n07700 900003,Cy\n+447700900001,Ann\n"
    )
    seen = SeenOnDisk()  # what `smsbot start` uses: the recipients seen, on disk
    with (tmp_path / "spool").open("w+b") as spool, contextlib.closing(seen):
        spooled = check_file(path, Validator(settings, seen=seen), spool)
        rows = list(spooled.rows())
    assert [(r.line, r.phone, r.data) for r in rows] == [
        (2, "+447700900001", {"name": "Ann"}),
        (4, "+447700900003", {"name": "Cy"}),
    ]
    checked = spooled.checked
    assert (checked.good, checked.bad) == (2, 2)
    assert [(e.line, e.field) for e in checked.errors] == [(3, "to"), (5, "to")]


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"PK\x03\x04\xff\xfe\x00 a spreadsheet, not CSV", "cannot read"),
        (b"to,name\n+447700900001," + b"A" * 200_000 + b"\n", "not readable as CSV"),
        (b"phone,name\n+447700900001,Ann\n", "needs a header row with a 'to' column"),
    ],
)
def test_a_file_that_is_not_csv_is_refused_with_its_name(
    tmp_path: Path, db_url: str, content: bytes, says: str
) -> None:
    settings = settings_for(db_url, "http://127.0.0.1:9", **ENV)
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with (tmp_path / "spool").open("w+b") as spool, pytest.raises(OperatorError) as err:
        check_file(path, Validator(settings), spool)
    assert "bad.csv" in str(err.value) and says in str(err.value)


# --- several start processes --------------------------------------------------------------------


async def test_start_in_two_processes_starts_every_row_once(tmp_path: Path, db_url: str) -> None:
    rows = 2_500  # ten chunks, dealt out to two processes in turn
    path = tmp_path / "many.csv"
    starts_at = "2030-01-20T10:30:00+00:00"  # the command checks it against the real clock
    path.write_text(
        "to,name,starts_at,location\n"
        + "".join(f"+4474{i:08d},P{i},{starts_at},Riverside\n" for i in range(rows))
    )
    url = db_url.replace("+aiosqlite", "").replace("+asyncpg", "")
    env = {**ENV, "SMSBOT_DATABASE_URL": url}
    out = smsbot("start", "appointment", "--csv", str(path), "--jobs", "2", env=env, timeout=180)
    assert out.returncode == 0, out.stderr
    assert f"started {rows:,} conversation(s)" in out.stdout
    db = Database(db_url)
    try:
        async with db.session() as s:
            found = (await s.execute(select(events_t.c.event_id, events_t.c.state))).all()
            sent = (await s.execute(select(messages_t.c.phone))).all()
    finally:
        await db.dispose()
    assert {state for _, state in found} == {EventState.DONE.value}
    runs = {event_id.split(":")[1] for event_id, _ in found}
    lines = sorted(int(event_id.split(":")[2]) for event_id, _ in found)
    assert len(runs) == 1 and lines == list(range(2, rows + 2))  # one run, each line once
    assert len(sent) == len({phone for (phone,) in sent}) == rows


async def test_more_jobs_than_chunks_and_a_refused_file_with_jobs(
    tmp_path: Path, db_url: str
) -> None:
    """`--jobs 4` for a file of two chunks starts each row once, in two processes; a file the
    check refuses with `--jobs 2` starts nothing and says why, without a traceback."""
    starts_at = "2030-01-20T10:30:00+00:00"
    good = tmp_path / "two-chunks.csv"
    good.write_text(
        "to,name,starts_at,location\n"
        + "".join(f"+4474{i:08d},P{i},{starts_at},Riverside\n" for i in range(500))
    )
    bad = tmp_path / "bad.csv"
    bad.write_text(f"to,name,starts_at,location\nnot-a-phone,P,{starts_at},Riverside\n")
    url = db_url.replace("+aiosqlite", "").replace("+asyncpg", "")
    env = {**ENV, "SMSBOT_DATABASE_URL": url}
    out = smsbot("start", "appointment", "--csv", str(good), "--jobs", "4", env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "started 500 conversation(s)" in out.stdout
    refused = smsbot("start", "appointment", "--csv", str(bad), "--jobs", "2", env=env, timeout=120)
    assert refused.returncode != 0
    assert "1 invalid row(s)" in refused.stderr and "nothing was started" in refused.stderr
    assert "Traceback" not in refused.stderr
    db = Database(db_url)
    try:
        async with db.session() as s:
            lines = (await s.execute(select(events_t.c.event_id))).scalars().all()
    finally:
        await db.dispose()
    assert sorted(int(e.split(":")[2]) for e in lines) == list(range(2, 502))
