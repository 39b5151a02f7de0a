"""store/prepared.py: a Core statement run through sqlite3's cursor answers as Core does.

On SQLite the statement must bypass SQLAlchemy's execution (the engine event sees no execution
context) and still give the same rows, types and errors; where it cannot (a Python-side
default, an empty IN list) and on PostgreSQL, Core runs it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, bindparam, case, event, exc, or_, select, text, update

from smsbot.clock import VirtualClock
from smsbot.engine.contract import EventKind
from smsbot.pipeline.inbox import NEW_EVENT, AcceptOutcome, Inbox, InboxEntry, event_row
from smsbot.store import prepared
from smsbot.store.engine import Database
from smsbot.store.lookup import KeyedRows, Listed, rows_in
from smsbot.store.models import conversations_t, events_t, messages_t
from smsbot.store.prepared import Prepared
from smsbot.store.types import UTCDateTime
from smsbot.store.upsert import as_arrays, insert_on_conflict

T0 = dt.datetime(2026, 12, 5, 9, 30, 15, 123456, tzinfo=dt.UTC)
C = conversations_t
KEY = (C.c.virtual_number, C.c.phone)
INSERT = Prepared(C.insert())
BY_KEY = KeyedRows(KEY, lambda where: select(C).where(where).order_by(C.c.id))
NOW = bindparam("now", type_=UTCDateTime())  # used twice: two positions, one name
TOUCH = Prepared(
    update(C)
    .where(C.c.id.in_(bindparam("ids", expanding=True)))
    .values(
        version=C.c.version + 1,
        last_activity_at=NOW,
        started_at=case((C.c.started_at.is_(None), NOW), else_=C.c.started_at),
        flow=bindparam("b_flow"),
    )
    .returning(C.c.id, C.c.version, C.c.last_activity_at, C.c.started_at, C.c.flow)
)
# no RETURNING: all() returns no rows, through either path
END = Prepared(update(C).where(C.c.id == bindparam("b_id")).values(end_reason="done"))
# a message row without segments, encoding, attempts or workspace: Python-side defaults
INSERT_MESSAGE = Prepared(messages_t.insert())


def conversation(vn: str, phone: str, **extra: Any) -> dict[str, Any]:
    row = {
        "workspace": "default",
        "virtual_number": vn,
        "phone": phone,
        "flow": "appointment",
        "state": "asked",
        "data": {"when": "Tuesday", "n": 2, "nested": [1, {"a": None}]},
        "version": 0,
        "state_token": None,
        "started_at": T0,
        "last_activity_at": T0,
        "ended_at": None,
        "end_reason": None,
        "end_state": None,
    }
    return {**row, **extra}


class Contexts:
    """The execution context each statement ran with: None when it bypassed Core."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []

    def record(self, _c: Any, _cursor: Any, sql: str, _p: Any, context: Any, _many: Any) -> None:
        self.seen.append((" ".join(sql.split()), context))

    def of(self, prefix: str) -> list[Any]:
        return [context for sql, context in self.seen if sql.startswith(prefix)]


@pytest.fixture
def contexts() -> Iterator[Contexts]:
    found = Contexts()
    event.listen(Engine, "before_cursor_execute", found.record)
    yield found
    event.remove(Engine, "before_cursor_execute", found.record)


def fast(db: Database) -> bool:
    return not db.is_postgres


async def test_rows_types_and_row_values_match_core(db: Database, contexts: Contexts) -> None:
    rows = [
        conversation("+447700900001", "+447700900101"),
        conversation("+447700900002", "+447700900102", data={}, started_at=None),
        conversation("+447700900001", "+447700900102", flow=None, state=None),
    ]
    await db.write(lambda conn: INSERT.many(conn, rows))
    # two numbers and two phones: the exact row-value test keeps (…01, …102) out
    keys = [("+447700900001", "+447700900101"), ("+447700900002", "+447700900102")]

    def both(conn: Connection) -> tuple[list[Any], list[Any]]:
        core = conn.execute(select(C).where(rows_in(KEY, keys)).order_by(C.c.id)).all()
        return BY_KEY.all(conn, keys), [tuple(r) for r in core]

    prepared, core = await db.write(both)
    assert [tuple(r) for r in prepared] == core
    assert [(r.virtual_number, r.phone) for r in prepared] == keys
    first = prepared[0]
    assert first.data == {"when": "Tuesday", "n": 2, "nested": [1, {"a": None}]}
    assert first.started_at == T0 and first.started_at.tzinfo is not None
    assert prepared[1].started_at is None and prepared[1].data == {}
    # one phone on one number: the probe alone, in the reader's snapshot too
    alone = await db.read(lambda conn: BY_KEY.all(conn, [keys[0]]))
    assert [tuple(r) for r in alone] == core[:1]
    # the two prepared reads bypassed Core on SQLite; the Core one never does
    selects = contexts.of("SELECT conversations.id")
    assert len(selects) == 3
    assert sum(c is None for c in selects) == (2 if fast(db) else 0)
    assert all((c is None) == fast(db) for c in contexts.of("INSERT INTO conversations"))


async def test_returning_and_fixed_values(db: Database, contexts: Contexts) -> None:
    rows = [conversation("+447700900001", f"+4477009001{i:02}") for i in range(3)]
    rows[2]["started_at"] = None
    await db.write(lambda conn: INSERT.many(conn, rows))
    later = T0 + dt.timedelta(hours=1)
    params = {"ids": [1, 3], "now": later, "b_flow": "survey"}
    touched = await db.write(lambda conn: TOUCH.all(conn, params))
    assert sorted(tuple(r) for r in touched) == [
        (1, 1, later, T0, "survey"),
        (3, 1, later, later, "survey"),
    ]
    versions = await db.read(
        lambda conn: conn.execute(select(C.c.id, C.c.version).order_by(C.c.id)).all()
    )
    assert [tuple(v) for v in versions] == [(1, 1), (2, 0), (3, 1)]
    assert await db.write(lambda conn: END.all(conn, {"b_id": 2})) == []
    ended = await db.read(
        lambda conn: conn.execute(select(C.c.end_reason).order_by(C.c.id)).scalars().all()
    )
    assert ended == [None, "done", None]
    assert [c is None for c in contexts.of("UPDATE conversations")] == [fast(db)] * 2


async def test_what_needs_core_goes_through_core(db: Database, contexts: Contexts) -> None:
    message = {
        "id": "m1",
        "direction": "out",
        "virtual_number": "+447700900001",
        "phone": "+447700900101",
        "body": "hello",
        "created_at": T0,
    }
    await db.write(lambda conn: INSERT_MESSAGE.many(conn, [message]))
    row = await db.read(lambda conn: conn.execute(select(messages_t)).one())
    assert (row.segments, row.encoding, row.attempts, row.workspace) == (1, "GSM-7", 0, "default")
    assert [c is None for c in contexts.of("INSERT INTO messages")] == [False]
    # an empty IN list: Core renders its empty set, and nothing is found
    assert (
        await db.write(lambda conn: TOUCH.all(conn, {"ids": [], "now": T0, "b_flow": None})) == []
    )
    assert await db.read(lambda conn: BY_KEY.all(conn, [])) == []
    # a value left out: Core's error, which names it (never a silent NULL)
    with pytest.raises(exc.StatementError, match="b_flow"):
        await db.write(lambda conn: TOUCH.all(conn, {"ids": [1], "now": T0}))


async def test_a_database_error_is_sqlalchemys_with_parameters_hidden(db: Database) -> None:
    row = conversation("+447700900001", "+447700900987")
    await db.write(lambda conn: INSERT.many(conn, [row]))
    with pytest.raises(exc.IntegrityError) as raised:
        await db.write(lambda conn: INSERT.many(conn, [row]))
    assert "[SQL parameters hidden due to hide_parameters=True]" in str(raised.value)
    # the failed transaction changed nothing
    count = await db.read(lambda conn: len(conn.execute(select(C.c.id)).all()))
    assert count == 1


TEXT = Prepared(text("SELECT id, phone FROM conversations WHERE version >= :v ORDER BY id"))
EACH = Prepared(select(C.c.id, C.c.started_at).order_by(C.c.id).limit(bindparam("limit")))


async def test_text_and_rows_read_as_asked(db: Database, contexts: Contexts) -> None:
    rows = [conversation("+447700900001", f"+4477009001{i:02}", version=i) for i in range(4)]
    await db.write(lambda conn: INSERT.many(conn, rows))
    found = await db.read(lambda conn: [tuple(r) for r in TEXT.all(conn, {"v": 2})])
    assert found == [(3, "+447700900102"), (4, "+447700900103")]

    def first_two(conn: Connection) -> list[Any]:
        taken = []
        for row in EACH.each(conn, {"limit": 10}):
            taken.append(tuple(row))
            if len(taken) == 2:
                break
        return taken

    assert await db.read(first_two) == [(1, T0), (2, T0)]
    assert [c is None for c in contexts.of("SELECT id, phone")] == [fast(db)]


IDS = bindparam("ids", expanding=True)
TWICE = Prepared(select(C.c.id).where(or_(C.c.id.in_(IDS), C.c.version.in_(IDS))).order_by(C.c.id))


async def test_one_in_list_in_two_places(db: Database) -> None:
    rows = [conversation("+447700900001", f"+4477009001{i:02}", version=i * 10) for i in range(4)]
    await db.write(lambda conn: INSERT.many(conn, rows))
    found = await db.read(lambda conn: [i for (i,) in TWICE.all(conn, {"ids": [1, 20]})])
    assert found == [1, 3]  # id 1, and the row whose version is 20


NEW_EVENTS = Prepared(
    NEW_EVENT.returning(events_t.c.event_id, events_t.c.id, events_t.c.received_at)
)


def inbound(n: int) -> dict[str, Any]:
    entry = InboxEntry("divergent", f"evt_{n}", EventKind.INBOUND, {"n": n}, "+447700900001")
    return event_row(entry, T0 + dt.timedelta(seconds=n))


async def test_many_rows_inserted_with_returning(
    db: Database, contexts: Contexts, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prepared, "_MAX_ROWS", 2)  # five rows: three statements on SQLite
    await db.write(lambda conn: NEW_EVENTS.inserted(conn, [inbound(1), inbound(3)]))
    # 1 and 3 are stored: ON CONFLICT skips them and RETURNING leaves them out
    rows = [inbound(n) for n in range(5)]
    found = await db.write(lambda conn: NEW_EVENTS.inserted(conn, rows))
    assert sorted((r.event_id, r.received_at) for r in found) == [
        (f"evt_{n}", T0 + dt.timedelta(seconds=n)) for n in (0, 2, 4)
    ]
    assert all(r.received_at.tzinfo is not None for r in found)
    stored = await db.read(
        lambda conn: conn.execute(
            select(events_t.c.id, events_t.c.event_id, events_t.c.payload)
        ).all()
    )
    assert sorted((r.event_id, r.id) for r in found) == sorted(
        (r.event_id, r.id) for r in stored if r.event_id in {"evt_0", "evt_2", "evt_4"}
    )
    assert sorted(r.payload["n"] for r in stored) == [0, 1, 2, 3, 4]
    inserts = contexts.of("INSERT INTO webhook_events")
    assert len(inserts) == (1 + 3 if fast(db) else 2)
    assert all((c is None) == fast(db) for c in inserts)
    assert await db.write(lambda conn: NEW_EVENTS.inserted(conn, [])) == []


def test_datetimes_converted_once_still_bind_right(monkeypatch: pytest.MonkeyPatch) -> None:
    from zoneinfo import ZoneInfo

    from sqlalchemy.dialects import sqlite

    from smsbot.store import types

    monkeypatch.setattr(types, "_KNOWN_TEXTS", 2)  # forget often: the cache must not matter
    process = UTCDateTime().bind_processor(sqlite.dialect())
    later = T0 + dt.timedelta(seconds=1)
    for _ in range(3):  # converted, then remembered, then forgotten and converted again
        assert process(T0) == "2026-12-05 09:30:15.123456"
        assert process(later) == "2026-12-05 09:30:16.123456"
        assert process(later + dt.timedelta(days=1)) == "2026-12-06 09:30:16.123456"
    # the repeated hour of a DST change: equal as datetimes, one hour apart as instants
    london = ZoneInfo("Europe/London")
    first = dt.datetime(2026, 10, 25, 1, 30, tzinfo=london)
    assert process(first) == "2026-10-25 00:30:00.000000"
    assert process(first.replace(fold=1)) == "2026-10-25 01:30:00.000000"
    assert process(None) is None
    with pytest.raises(ValueError, match="timezone-aware"):
        process(T0.replace(tzinfo=None))


CONVERSATION_KEYS = tuple(conversation("", ""))


async def test_rows_bound_ahead_write_what_many_writes(db: Database, contexts: Contexts) -> None:
    """A Binder's rows, bound before the transaction (JSON, datetimes: no lock held) with one
    value set inside it (`put`), store what Prepared.many stores from the same mappings."""
    binder = INSERT.binder(db.binds_ahead, CONVERSATION_KEYS)
    assert (db.binds_ahead is not None) == fast(db)  # SQLite's file databases write on sqlite3
    given = [
        conversation("+447700900001", "+447700900101"),
        conversation("+447700900002", "+447700900102", data={}, started_at=None),
    ]
    bound = [binder(row) for row in given]
    if fast(db):  # positional and processed already: the data column is JSON text
        assert all(isinstance(row, list) for row in bound)
        assert '"nested"' in str(bound[0])
    for row in bound:
        binder.put(row, "version", 7)  # what only the transaction knows (an id, in the write)
    await db.write(lambda conn: binder.many(conn, bound))
    core = [dict(row, virtual_number="+447700900009", version=7) for row in given]
    await db.write(lambda conn: INSERT.many(conn, core))
    stored = await db.read(lambda conn: conn.execute(select(C).order_by(C.c.id)).all())
    assert [r.version for r in stored] == [7, 7, 7, 7]
    # the same rows from the phone on (id, workspace, number differ or may): every column read
    # back equal, types and time zones included
    assert [tuple(r)[3:] for r in stored[:2]] == [tuple(r)[3:] for r in stored[2:]]
    assert stored[0].data == {"when": "Tuesday", "n": 2, "nested": [1, {"a": None}]}
    assert stored[0].started_at == T0 and stored[1].started_at is None
    inserts = contexts.of("INSERT INTO conversations")
    assert [c is None for c in inserts] == [fast(db), fast(db)]  # sqlite3 directly, both ways


async def test_rows_bound_ahead_insert_with_returning(db: Database) -> None:
    binder = NEW_EVENTS.binder(db.binds_ahead, tuple(inbound(0)))
    assert binder is NEW_EVENTS.binder(db.binds_ahead, tuple(inbound(0)))  # made once
    await db.write(lambda conn: NEW_EVENTS.inserted(conn, [inbound(1)]))
    bound = [binder(inbound(n)) for n in range(3)]
    found = await db.write(lambda conn: binder.inserted(conn, bound))
    assert sorted(r.event_id for r in found) == ["evt_0", "evt_2"]  # evt_1 was there
    assert all(r.received_at.tzinfo is not None for r in found)


async def test_rows_bound_for_sqlite3_refuse_another_connection(tmp_path: Any) -> None:
    """Rows bound for sqlite3 cannot run through aiosqlite's connection (Core would bind them
    twice): a clear error, not a wrong row."""
    files = Database(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}")
    memory = Database("sqlite+aiosqlite:///:memory:")  # writes through aiosqlite
    try:
        await memory.create_all()
        assert files.binds_ahead is not None and memory.binds_ahead is None
        binder = INSERT.binder(files.binds_ahead, CONVERSATION_KEYS)
        bound = [binder(conversation("+447700900001", "+447700900101"))]
        with pytest.raises(RuntimeError, match="another kind of connection"):
            await memory.write(lambda conn: binder.many(conn, bound))
    finally:
        await files.dispose()
        await memory.dispose()


async def test_keyed_rows_on_postgresql_are_one_statement_whatever_the_number_of_keys(
    db: Database, contexts: Contexts
) -> None:
    if not db.is_postgres:
        pytest.skip("SQLite runs its plans through sqlite3, one plan per number of keys")
    numbers = [f"+44770090{n:04d}" for n in range(6)]
    rows = [conversation(vn, f"+44770091{i:04d}") for i, vn in enumerate(numbers)]
    rows += [conversation(numbers[0], "+447700919999")]  # a second phone on the first number
    await db.write(lambda conn: INSERT.many(conn, rows))
    everything = [(r["virtual_number"], r["phone"]) for r in rows]
    # one number (the probe alone) and several (the exact test too), each at 1 to 7 keys
    batches = [[everything[0]], [everything[0], everything[-1]]]
    batches += [everything[:n] for n in range(2, len(everything) + 1)]

    def look(conn: Connection) -> list[tuple[list[Any], list[Any]]]:
        answers = []
        for keys in batches:
            core = conn.execute(select(C).where(rows_in(KEY, keys)).order_by(C.c.id)).all()
            answers.append(([tuple(r) for r in BY_KEY.all(conn, keys)], [tuple(r) for r in core]))
        return answers

    answers = await db.read(look)
    for prepared_rows, core_rows in answers:
        assert prepared_rows == core_rows
    assert [len(p) for p, _ in answers] == [len(b) for b in batches]
    contexts.seen.clear()
    await db.read(lambda conn: [BY_KEY.all(conn, keys) for keys in batches])
    texts = {sql for sql, _ in contexts.seen if sql.startswith("SELECT conversations.id")}
    # asyncpg prepares a statement per SQL text: two (probe, exact), not one per number of keys
    assert len(texts) == 2, texts


IDS_TOUCHED = Listed(
    lambda listed: update(C).where(listed(C.c.id, "ids")).values(version=C.c.version + 1)
)


async def test_lists_and_rows_in_as_arrays_answer_as_in_lists(
    db: Database, contexts: Contexts
) -> None:
    numbers = [f"+44770092{n:04d}" for n in range(5)]
    rows = [conversation(vn, f"+44770093{i:04d}") for i, vn in enumerate(numbers)]
    await db.write(lambda conn: INSERT.many(conn, rows))
    everything = [(r["virtual_number"], r["phone"]) for r in rows]

    def both(conn: Connection, keys: list[tuple[str, str]]) -> tuple[list[Any], list[Any]]:
        def ids(arrays: bool) -> list[Any]:
            found = select(C.c.id).where(rows_in(KEY, keys, arrays=arrays)).order_by(C.c.id)
            return list(conn.execute(found).scalars())

        return ids(False), ids(db.is_postgres)  # arrays only where there are arrays

    contexts.seen.clear()
    for n in range(1, len(everything) + 1):
        listed, arrays = await db.read(lambda conn, n=n: both(conn, everything[:n]))
        assert listed == arrays and len(listed) == n
    if db.is_postgres:  # two texts for the arrays (one key; the exact test), at any length
        texts = {sql for sql, _ in contexts.seen if "ANY" in sql}
        assert len(texts) == 2, texts
    # Listed: an id list, matched in the form the database prepares once
    all_ids = await db.read(lambda conn: [r.id for r in BY_KEY.all(conn, everything)])
    contexts.seen.clear()
    for n in (1, 3, 5):
        await db.write(lambda conn, n=n: IDS_TOUCHED.all(conn, {"ids": all_ids[:n]}))
    async with db.engine.connect() as conn:
        versions = (await conn.execute(select(C.c.version).order_by(C.c.id))).scalars().all()
    touched = [3, 2, 2, 1, 1]  # the first id in all three lists, the last two in one
    assert list(versions) == [r["version"] + t for r, t in zip(rows, touched, strict=True)]
    updates = {sql for sql, _ in contexts.seen if sql.startswith("UPDATE conversations")}
    assert len(updates) == (1 if db.is_postgres else 3)


async def test_the_inbox_stores_any_group_size_with_one_statement_text(
    db: Database, contexts: Contexts
) -> None:
    inbox = Inbox(db, VirtualClock(T0))

    def entry(n: int, body: str = "same") -> InboxEntry:
        payload = {"text": f"hello {n}", "n": n}
        return InboxEntry("divergent", f"grp-{n}", EventKind.INBOUND, payload, "+447700900100",
                          f"+4477009002{n:02d}", body)  # fmt: skip

    contexts.seen.clear()
    assert await inbox.accept_many([entry(0)]) == [AcceptOutcome.NEW]
    assert await inbox.accept_many([entry(1), entry(2)]) == [AcceptOutcome.NEW] * 2
    again = [entry(0), entry(1, "changed"), entry(3), entry(3), entry(4)]
    assert await inbox.accept_many(again) == [
        AcceptOutcome.DUPLICATE,
        AcceptOutcome.CONFLICT,  # the same event id with another body
        AcceptOutcome.NEW,
        AcceptOutcome.DUPLICATE,  # twice in one group: stored once
        AcceptOutcome.NEW,
    ]
    inserts = {sql for sql, _ in contexts.seen if sql.startswith("INSERT INTO webhook_events")}
    # PostgreSQL: the group as arrays, one text for 1, 2 and 4 rows; SQLite: a VALUES group a row
    assert len(inserts) == (1 if db.is_postgres else 3), inserts
    async with db.engine.connect() as conn:
        stored = (await conn.execute(select(events_t).order_by(events_t.c.id))).all()
    assert [(r.event_id, r.phone, r.payload, r.received_at, r.state) for r in stored] == [
        (f"grp-{n}", f"+4477009002{n:02d}", {"text": f"hello {n}", "n": n}, T0, "pending")
        for n in range(5)
    ]


async def test_many_rows_inserted_are_one_text_at_any_count_on_postgresql(
    db: Database, contexts: Contexts
) -> None:
    """Prepared.inserted of an insert_on_conflict … DO NOTHING: on PostgreSQL one array a
    column (one SQL text, so one prepared statement, for 1, 2 or 3 rows); the same rows back
    as SQLite's VALUES groups. Fired reminders and bulk starts insert their events so."""
    create = Prepared(
        insert_on_conflict(C, ["virtual_number", "phone"]).returning(
            C.c.virtual_number, C.c.phone, C.c.id
        )
    )
    found: list[Any] = []
    for count in (1, 2, 3):
        rows = [inbound(10 * count + n) for n in range(count)]
        found += await db.write(lambda conn, rows=rows: NEW_EVENTS.inserted(conn, rows))
        people = [conversation("+447700900100", f"+44770090{10 * count + n:04d}")
                  for n in range(count)]  # fmt: skip
        await db.write(lambda conn, people=people: create.inserted(conn, people))
    again = [conversation("+447700900100", "+447700900010"), conversation("+447700900100", "x")]
    made = await db.write(lambda conn: create.inserted(conn, again))  # the first is there
    assert [(r.virtual_number, r.phone) for r in made] == [("+447700900100", "x")]
    assert sorted(r.event_id for r in found) == sorted(
        f"evt_{10 * c + n}" for c in (1, 2, 3) for n in range(c)
    )
    assert {r.received_at for r in found} == {
        T0 + dt.timedelta(seconds=10 * c + n) for c in (1, 2, 3) for n in range(c)
    }
    stored = await db.read(lambda conn: conn.execute(select(C.c.id, C.c.data)).all())
    assert len(stored) == 7 and all(r.data == conversation("", "")["data"] for r in stored)
    assert made[0].id == max(r.id for r in stored)
    events = {sql for sql, _ in contexts.seen if sql.startswith("INSERT INTO webhook_events")}
    convos = {sql for sql, _ in contexts.seen if sql.startswith("INSERT INTO conversations")}
    if db.is_postgres:
        assert len(events) == 1 and "unnest" in next(iter(events)), events
        assert len(convos) == 1 and "unnest" in next(iter(convos)), convos
    else:  # a VALUES group a row: one text per row count
        assert len(events) == 3 and len(convos) == 3


async def test_an_insert_arrays_cannot_express_goes_through_core(
    db: Database, contexts: Contexts
) -> None:
    upsert = Prepared(
        insert_on_conflict(C, ["virtual_number", "phone"], update=["state"]).returning(C.c.state)
    )
    assert as_arrays(upsert.statement, tuple(conversation("", ""))) is None
    assert as_arrays(C.insert().values(state="x"), tuple(conversation("", ""))) is None
    assert as_arrays(C.insert(), tuple(conversation("", ""))) is not None  # a plain INSERT
    skip = insert_on_conflict(C, ["virtual_number", "phone"])
    assert as_arrays(skip, tuple(conversation("", ""))) is not None
    # version and workspace have Python-side defaults: rows that leave them out go by Core
    assert as_arrays(skip, ("virtual_number", "phone", "data")) is None
    rows = [conversation("+447700900100", "+447700900001")]
    await db.write(lambda conn: upsert.inserted(conn, rows))
    rows = [conversation("+447700900100", "+447700900001", state="moved")]
    found = await db.write(lambda conn: upsert.inserted(conn, rows))
    assert [r.state for r in found] == ["moved"]
    texts = {sql for sql, _ in contexts.seen if sql.startswith("INSERT INTO conversations")}
    assert texts and not any("unnest" in sql for sql in texts)


async def test_many_rows_of_a_plain_insert_are_one_statement_on_postgresql(
    db: Database, contexts: Contexts
) -> None:
    """Prepared.many of a plain INSERT: on PostgreSQL one statement over arrays (asyncpg's
    executemany binds and executes a row at a time on the server); on SQLite executemany."""
    for count in (1, 3):
        rows = [conversation("+447700900100", f"+44770090{count}{n:03d}") for n in range(count)]
        await db.write(lambda conn, rows=rows: INSERT.many(conn, rows))
    stored = await db.read(
        lambda conn: conn.execute(select(C.c.phone, C.c.data, C.c.started_at).order_by(C.c.id))
    )
    assert [tuple(r) for r in stored] == [
        (f"+44770090{c}{n:03d}", conversation("", "")["data"], T0) for c in (1, 3) for n in range(c)
    ]
    texts = [sql for sql, _ in contexts.seen if sql.startswith("INSERT INTO conversations")]
    if db.is_postgres:
        assert len(texts) == 2 and len(set(texts)) == 1 and "unnest" in texts[0], texts
    else:
        assert len(texts) == 2 and not any("unnest" in sql for sql in texts)
