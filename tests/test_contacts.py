"""Contacts: typed fields, groups, CSV import/export, flows using them, erasure."""

from __future__ import annotations

import datetime as dt
import io
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, pool, select, text

from smsbot import Conversation, Flow, State
from smsbot.app import contacts_io
from smsbot.app.cli import main
from smsbot.app.contacts_erase import erase, subject_data
from smsbot.app.contacts_io import ContactsError, export_csv, import_csv, used_fields
from smsbot.app.database import migrate
from smsbot.app.operations import OperatorError, send_now
from smsbot.config import ConfigError, Settings
from smsbot.engine.contact import Contact, ContactSnapshot, FieldTypeError, parse_field
from smsbot.pipeline.contacts import field_types, suppression_hash
from smsbot.store.models import (
    contact_fields_t,
    contact_groups_t,
    contacts_t,
    conversations_t,
    messages_t,
    opt_outs_t,
    suppressions_t,
)
from smsbot.testing import BotDriver, StepFailedError, driver_settings
from smsbot.testing.driver import StartRefusedError
from smsbot.testing.harness import Chat, make_runtime

NOW = dt.datetime(2026, 1, 15, 9, 0, tzinfo=dt.UTC)
ANN, BOB = "+447700900123", "+447700900124"
TYPES = {"appointment_at": "datetime", "visits": "number", "vip": "boolean"}
PEOPLE = """phone,name,appointment_at,visits,vip
07700 900123,Ann,2026-03-01T09:30:00+00:00,3,true
+447700900124,Bob,not a date,1,false
12,Nobody,,,
+447700900125,Cy,2026-03-02 10:00,2.5,no
+447700900126,Di,,,maybe
"""


# --- fields: types and their errors -------------------------------------------------------------


def test_a_value_that_does_not_fit_its_type_names_the_field_value_and_type() -> None:
    assert parse_field("visits", "number", " 42 ") == 42
    assert parse_field("vip", "boolean", "No") is False
    assert parse_field("at", "datetime", "2026-03-01 09:30") == dt.datetime(
        2026, 3, 1, 9, 30, tzinfo=dt.UTC
    )
    assert parse_field("visits", "number", "") is None
    with pytest.raises(FieldTypeError, match=r"field 'visits': 'many' is not a number"):
        parse_field("visits", "number", "many")
    with pytest.raises(FieldTypeError, match=r"'nan' is not a number"):
        parse_field("visits", "number", "nan")
    contact = Contact(ContactSnapshot(ANN, types={"visits": "number"}))
    with pytest.raises(FieldTypeError, match=r"contact field 'visits' is a number; got str"):
        contact.fields["visits"] = "3"
    with pytest.raises(FieldTypeError, match=r"cannot name a contact field"):
        contact.fields["Bad Name"] = 1
    assert contact.change() is None  # nothing fitted, nothing changed
    # smsbot.toml's type holds before any import recorded the field
    declared = Contact(ContactSnapshot(ANN), declared={"visits": "number"})
    with pytest.raises(FieldTypeError, match=r"'visits' is a number"):
        declared.fields["visits"] = "3"
    declared.fields["visits"] = 3
    change = declared.change()
    assert change is not None and change.new_types == {"visits": "number"}


def test_a_flow_writes_typed_values_and_groups_through_the_contact() -> None:
    snap = ContactSnapshot(
        ANN,
        fields={"appointment_at": "2026-03-01T09:30:00+00:00"},
        groups=frozenset({"patients"}),
        types={"appointment_at": "datetime"},
    )
    contact = Contact(snap)
    at = contact.fields["appointment_at"]
    assert at == dt.datetime(2026, 3, 1, 9, 30, tzinfo=dt.UTC)
    contact.fields["appointment_at"] = at + dt.timedelta(days=1)
    contact.fields["seen"] = True  # a new field takes its type from its first value
    contact.groups.add("reminded")
    contact.groups.remove("patients")
    change = contact.change()
    assert change is not None
    assert change.fields == {"appointment_at": "2026-03-02T09:30:00+00:00", "seen": True}
    assert (change.new_types, change.join, change.leave) == (
        {"seen": "boolean"},
        {"reminded"},
        {"patients"},
    )


def test_smsbot_toml_declares_fields_and_names_a_bad_type(tmp_path: Path) -> None:
    toml = tmp_path / "smsbot.toml"
    toml.write_text('[contacts.fields]\nappointment_at = "datetime"\n')
    assert Settings.from_env({}, toml_path=toml).contact_fields == {"appointment_at": "datetime"}
    toml.write_text('[contacts.fields]\nappointment_at = "date"\n')
    with pytest.raises(ConfigError) as bad:
        Settings.from_env({}, toml_path=toml)
    assert str(bad.value) == (
        f"contacts.fields.appointment_at in {toml} is 'date': a field's type is one of"
        " text, number, datetime, boolean"
    )


# --- import and export ---------------------------------------------------------------------------


@pytest.fixture
def engine(db_url: str, tmp_path: Path) -> Iterator[Engine]:
    """A migrated database on each backend, as the contacts commands use it."""
    settings = Settings.from_env({"SMSBOT_DATABASE_URL": db_url}, toml_path=tmp_path / "none")
    migrate(settings)
    engine = create_engine(settings.sync_database_url, poolclass=pool.NullPool)
    yield engine
    engine.dispose()


def _import(engine: Engine, path: Path, text: str, group: str | None = None) -> list[str]:
    path.write_text(text, encoding="utf-8")
    report = import_csv(engine, path, region="GB", config_fields=TYPES, now=NOW, group=group)
    return report.bad


def _contacts(engine: Engine) -> dict[str, dict[str, object]]:
    with engine.connect() as conn:
        rows = conn.execute(select(contacts_t)).all()
    return {r.phone: {"name": r.name, **r.fields} for r in rows}


def _groups(engine: Engine, name: str) -> set[str]:
    c, g = contacts_t, contact_groups_t
    with engine.connect() as conn:
        found = conn.execute(
            select(c.c.phone).join(g, g.c.contact_id == c.c.id).where(g.c.name == name)
        )
        return set(found.scalars())


def test_an_import_reports_every_bad_row_by_line_and_imports_the_rest(
    engine: Engine, tmp_path: Path
) -> None:
    bad = _import(engine, tmp_path / "people.csv", PEOPLE, group="patients")
    assert bad == [
        "line 3: field 'appointment_at': 'not a date' is not a datetime"
        " (write it like 2026-03-01T09:30:00+00:00)",
        "line 4: '12' is not a phone number (too short): give it in international form like"
        " +447700900123",
        "line 6: field 'vip': 'maybe' is not a boolean (write it like true or false)",
    ]
    assert _contacts(engine) == {
        ANN: {
            "name": "Ann",
            "appointment_at": "2026-03-01T09:30:00+00:00",
            "visits": 3,
            "vip": True,
        },
        "+447700900125": {
            "name": "Cy",
            "appointment_at": "2026-03-02T10:00:00+00:00",
            "visits": 2.5,
            "vip": False,
        },
    }
    assert _groups(engine, "patients") == {ANN, "+447700900125"}


def test_each_workspace_declares_its_own_field_types(engine: Engine, tmp_path: Path) -> None:
    """One client's `visit` is a datetime, another's free text; neither sees the other's."""
    path = tmp_path / "visits.csv"

    def load(workspace: str, text: str) -> tuple[list[str], list[str]]:
        path.write_text(text, encoding="utf-8")
        report = import_csv(
            engine, path, region="GB", config_fields={}, now=NOW, workspace=workspace
        )
        return report.bad, report.new_fields

    with engine.begin() as conn:  # a declares visit a datetime, as an earlier import could
        conn.execute(
            contact_fields_t.insert().values(
                workspace="a", name="visit", type="datetime", created_at=NOW
            )
        )
    assert load("a", f"phone,visit\n{ANN},next tuesday\n") == (
        ["line 2: field 'visit': 'next tuesday' is not a datetime"
         " (write it like 2026-03-01T09:30:00+00:00)"],
        [],
    )  # fmt: skip
    # b's import of the same column is its own: text, a new field of b's
    assert load("b", f"phone,visit,shoe\n{ANN},next tuesday,42\n") == ([], ["visit", "shoe"])
    with engine.connect() as conn:
        assert field_types(conn, "a") == {"visit": "datetime"}  # b's shoe is not a's
        assert field_types(conn, "b") == {"visit": "text", "shoe": "text"}
        assert used_fields(conn, "a") == [] and used_fields(conn, "b") == ["shoe", "visit"]
    out = io.StringIO()
    export_csv(engine, out, workspace="a")
    assert "shoe" not in out.getvalue()


def test_a_reimport_upserts_by_phone_and_keeps_what_it_does_not_mention(
    engine: Engine, tmp_path: Path
) -> None:
    _import(engine, tmp_path / "a.csv", PEOPLE, group="patients")
    again = "phone,name,visits,clinic,groups\n+44 7700 900123,Ann Lee,4,Riverside,vip;patients\n"
    path = tmp_path / "b.csv"
    path.write_text(again, encoding="utf-8")
    report = import_csv(engine, path, region="GB", config_fields=TYPES, now=NOW)
    assert (report.imported, report.bad, report.new_fields) == (1, [], ["clinic"])
    assert _contacts(engine)[ANN] == {
        "name": "Ann Lee",
        "appointment_at": "2026-03-01T09:30:00+00:00",  # not in this file: kept
        "visits": 4,
        "vip": True,
        "clinic": "Riverside",  # undeclared: a text field
    }
    assert len(_contacts(engine)) == 2
    assert _groups(engine, "vip") == {ANN}
    assert _groups(engine, "patients") == {ANN, "+447700900125"}


def test_export_round_trips_through_import(engine: Engine, tmp_path: Path) -> None:
    _import(engine, tmp_path / "a.csv", PEOPLE, group="patients")
    _import(engine, tmp_path / "b.csv", "phone,name\n+447700900127,Ed\n")
    out = io.StringIO()
    assert export_csv(engine, out) == 3
    exported = out.getvalue()
    assert exported.splitlines()[0] == (
        "phone,name,language,timezone,groups,appointment_at,vip,visits"
    )
    only = io.StringIO()
    assert export_csv(engine, only, group="patients") == 2
    with engine.begin() as conn:  # empty the tables, then import what was exported
        conn.execute(contact_groups_t.delete())
        conn.execute(contacts_t.delete())
    assert _import(engine, tmp_path / "exported.csv", exported) == []
    again = io.StringIO()
    export_csv(engine, again)
    assert again.getvalue() == exported


def _planner_rows(engine: Engine) -> dict[str, float]:
    """What the database's planner believes each contacts table holds (PostgreSQL's pg_class;
    SQLite: its sqlite_stat1 rows, which exist only once ANALYZE has run)."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            found = conn.execute(
                text(
                    "SELECT relname, reltuples FROM pg_class"
                    " WHERE relname IN ('contacts', 'contact_groups')"
                )
            )
            return {str(name): float(n) for name, n in found}
        has_stats = conn.execute(
            text("SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'")
        ).scalar_one()
        return {"sqlite_stat1": float(has_stats)}


def test_a_large_import_leaves_the_planner_its_statistics(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A small import leaves statistics to autovacuum: PostgreSQL still plans on the empty tables.
    _import(engine, tmp_path / "a.csv", PEOPLE, group="patients")
    before = _planner_rows(engine)
    # ANALYZE_AFTER rows or more (10,000; lowered here to this file's two good rows): ANALYZE.
    monkeypatch.setattr(contacts_io, "ANALYZE_AFTER", 2)
    _import(engine, tmp_path / "b.csv", PEOPLE, group="patients")
    after = _planner_rows(engine)
    if engine.dialect.name == "postgresql":
        assert before["contacts"] != 2 and before["contact_groups"] != 2
        assert after == {"contacts": 2.0, "contact_groups": 2.0}
    else:  # SQLite plans without statistics (tests/test_query_plans.py): none are made
        assert before == after == {"sqlite_stat1": 0.0}


def test_a_header_without_phone_or_with_a_bad_column_stops_the_import(
    engine: Engine, tmp_path: Path
) -> None:
    with pytest.raises(ContactsError, match=r"has no 'phone' column"):
        _import(engine, tmp_path / "a.csv", "number,name\n+447700900123,Ann\n")
    with pytest.raises(ContactsError, match=r"column 'Appointment At'.*lower-case letters"):
        _import(engine, tmp_path / "a.csv", "phone,Appointment At\n+447700900123,x\n")
    assert _contacts(engine) == {}


# --- the command line ----------------------------------------------------------------------------


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with a SQLite database and declared fields, for `smsbot contacts`."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SMSBOT_DATABASE_URL", f"sqlite:///{tmp_path / 'smsbot.db'}")
    (tmp_path / "smsbot.toml").write_text(
        '[contacts.fields]\nappointment_at = "datetime"\nvisits = "number"\nvip = "boolean"\n'
    )
    (tmp_path / "people.csv").write_text(PEOPLE, encoding="utf-8")
    return tmp_path


def test_the_contacts_commands(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["contacts", "import", "people.csv", "--group", "patients"]) == 1  # bad rows
    out, err = capsys.readouterr()
    assert out == "imported 2 contact(s) from people.csv; 3 bad row(s)\n"
    assert "people.csv:line 3: field 'appointment_at'" in err
    assert main(["contacts", "export", "--group", "patients", "-o", "out.csv"]) == 0
    assert (project / "out.csv").read_text().count("\n") == 3
    assert main(["contacts", "show", "07700 900123", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["contact"]["fields"]["visits"] == 3
    assert shown["contact"]["groups"] == ["patients"]


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (
            ["contacts", "import", "missing.csv"],
            "missing.csv is not a file: pass the CSV to import",
        ),
        (["contacts", "erase", "12"], "'12' is not a phone number (too short)"),
        (["contacts", "show", "call me"], "'call me' is not a phone number"),
    ],
)
def test_a_contacts_command_refuses_bad_input_in_one_line(
    project: Path, capsys: pytest.CaptureFixture[str], argv: list[str], said: str
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"smsbot: {said}")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_bad_header_is_one_line(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (project / "bad.csv").write_text("name\nAnn\n")
    assert main(["contacts", "import", "bad.csv"]) == 2
    assert capsys.readouterr().err.endswith(
        "smsbot: bad.csv has no 'phone' column: name the columns in its first line\n"
    )


# --- flows and erasure, through the real pipeline ------------------------------------------------

REMIND = '''
from smsbot import Conversation, Flow, State


class Remind(Flow):
    """Tell the contact their appointment; count the visits; move them between groups."""

    name = "remind"
    done = State(initial=True, final=True)

    async def start(self, convo: Conversation) -> State | None:
        if convo.message and convo.message.text == "late":
            convo.contact.fields["vip"] = "yes"  # a boolean field, known from an import
        if convo.message and convo.message.text == "bad":
            convo.contact.fields["last_text"] = "bad"
            convo.contact.fields["visits"] = "many"  # a number field: the step fails
        at = convo.contact.fields.get("appointment_at")
        await convo.say(f"See you {at:%d %b %H:%M}" if at else "No appointment")
        convo.contact.fields["visits"] = convo.contact.fields.get("visits", 0) + 1
        convo.contact.fields["last_text"] = convo.message.text if convo.message else ""
        convo.contact.groups.add("texted")
        convo.contact.groups.remove("patients")
        return None
'''


@pytest.fixture
async def kit(db_url: str, tmp_path: Path) -> AsyncIterator[BotDriver]:
    """A bot whose catch-all flow uses the contact, on each test database."""
    root = tmp_path / "project"
    (root / "flows").mkdir(parents=True)
    (root / "templates").mkdir()
    (root / "flows" / "remind.py").write_text(REMIND, encoding="utf-8")
    (root / "smsbot.toml").write_text(
        '[numbers."+447700900100"]\ncatch_all = "remind"\n'
        '[contacts.fields]\nappointment_at = "datetime"\nvisits = "number"\n'
    )
    async with BotDriver(driver_settings(root, db_url), now=NOW) as driver:
        yield driver


def _sync(kit: BotDriver) -> Engine:
    return create_engine(kit.settings.sync_database_url, poolclass=pool.NullPool)


async def test_a_flow_reads_and_writes_the_contact_in_its_step(
    kit: BotDriver, tmp_path: Path
) -> None:
    engine = _sync(kit)
    try:
        path = tmp_path / "people.csv"
        path.write_text("phone,name,appointment_at\n+447700900123,Ann,2026-03-01 09:30\n")
        import_csv(engine, path, region="GB", config_fields=TYPES, now=NOW, group="patients")
        await kit.send("hello")
        kit.expect_reply(equals="See you 01 Mar 09:30")
        await kit.send("again")
        kit.expect_reply(equals="See you 01 Mar 09:30")
        await kit.send("hi", from_=BOB)  # a first inbound creates the contact
        kit.expect_reply(equals="No appointment", to=BOB)
        people = _contacts(engine)
        assert people[ANN] == {
            "name": "Ann",
            "appointment_at": "2026-03-01T09:30:00+00:00",
            "visits": 2,
            "last_text": "again",
        }
        assert people[BOB] == {"name": None, "visits": 1, "last_text": "hi"}
        assert _groups(engine, "texted") == {ANN, BOB}
        assert _groups(engine, "patients") == set()
    finally:
        engine.dispose()


async def test_an_erased_phone_stays_opted_out(kit: BotDriver) -> None:
    await kit.send("hello")
    kit.expect_reply(equals="No appointment")
    await kit.send("STOP")
    kit.expect_reply(contains="unsubscribed")
    engine = _sync(kit)
    try:
        done = erase(engine, ANN)
        assert done == {
            "contact": 1,
            "campaign_fires": 0,
            "conversations": 1,
            "messages": 4,
            "opt_outs": 1,
        }
        with engine.connect() as conn:
            assert conn.execute(select(opt_outs_t)).all() == []
            hashes = conn.execute(select(suppressions_t.c.phone_hash)).scalars().all()
            assert hashes == [suppression_hash(ANN)]  # a hash, never the number
            assert conn.execute(select(contacts_t)).all() == []
            assert conn.execute(select(conversations_t)).all() == []
            kept = conn.execute(select(messages_t.c.body, messages_t.c.phone)).all()
            assert len(kept) == 4 and set(kept) == {("", "")}  # metadata kept, blanked
        data = subject_data(engine, ANN)
        assert (data["contact"], data["messages"], data["conversations"]) == (None, [], [])
        assert data["suppressions"] == [{"virtual_number": "+447700900100", "keyword": "STOP"}]

        with pytest.raises(OperatorError, match=r"has opted out of messages from"):
            await send_now(kit.settings, to=ANN, text="Hello again", sender=None)
        # a start through the operator API is refused up front, as for any opted-out phone
        with pytest.raises(StartRefusedError, match=r"\(409\).*has opted out of messages from"):
            await kit.start("remind")
        await kit.send("hello")  # the number comes back: its opt-out is restored, no answer
        kit.expect_no_reply()
        with engine.connect() as conn:
            assert conn.execute(select(opt_outs_t.c.phone)).scalars().all() == [ANN]
            assert conn.execute(select(suppressions_t)).all() == []
    finally:
        engine.dispose()


async def test_a_value_of_the_wrong_type_fails_the_step_and_changes_no_contact(
    kit: BotDriver,
) -> None:
    await kit.send("hello")
    kit.expect_reply(equals="No appointment")
    with pytest.raises(StepFailedError, match=r"contact field 'visits' is a number; got str"):
        await kit.send("bad")
    kit.expect_no_reply()
    engine = _sync(kit)
    try:
        assert _contacts(engine)[ANN] == {"name": None, "visits": 1, "last_text": "hello"}
    finally:
        engine.dispose()


async def test_a_new_contacts_first_value_must_fit_the_fields_type(kit: BotDriver) -> None:
    engine = _sync(kit)
    try:
        path = kit.settings.flows_dir.parent / "one.csv"
        path.write_text("phone,vip\n+447700900199,true\n")
        import_csv(engine, path, region="GB", config_fields={"vip": "boolean"}, now=NOW)
        with pytest.raises(StepFailedError, match=r"'vip' is a boolean; got str"):
            await kit.send("late", from_=BOB)  # BOB has no contact yet
        assert BOB not in _contacts(engine)
    finally:
        engine.dispose()


async def test_the_in_memory_harness_keeps_the_contact_between_steps() -> None:
    class Count(Flow):
        name = "count"
        done = State(initial=True, final=True)

        async def start(self, convo: Conversation) -> State | None:
            visits = convo.contact.fields.get("visits", 0) + 1
            convo.contact.fields["visits"] = visits
            if visits > 1:
                convo.contact.groups.add("regulars")
            await convo.say(f"visit {visits}, groups {list(convo.contact.groups)}")
            return None

    numbers = {"+447700900100": {"catch_all": "count"}}
    chat = Chat(make_runtime([Count], numbers=numbers))
    assert await chat.send("hi") == ["visit 1, groups []"]
    assert await chat.send("hi") == ["visit 2, groups ['regulars']"]
