"""Campaigns: fires timed from a contact's own date, kept right as contacts change."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import zoneinfo
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, delete, pool, select

from smsbot import Campaign
from smsbot.app.cli import main
from smsbot.app.contacts_erase import erase
from smsbot.app.contacts_io import import_csv
from smsbot.channels.sandbox import Sandbox
from smsbot.clock import SystemClock
from smsbot.config import Secret, Settings
from smsbot.engine.loader import FlowLoadError
from smsbot.engine.runtime import FlowRuntime
from smsbot.pipeline import campaigns as campaigns_sync
from smsbot.pipeline.campaigns import Plan, campaign_sender, no_sender
from smsbot.sms.templates import SmsTemplates
from smsbot.store.engine import Database
from smsbot.store.models import TimerState, contact_groups_t, contacts_t, timers_t
from smsbot.testing import BotDriver, driver_settings
from tests.support import make_bot

NOW = dt.datetime(2026, 3, 20, 12, 0, tzinfo=dt.UTC)
ANN, BOB, CY, DI = "+447700900123", "+447700900124", "+447700900125", "+447700900126"
LONDON = zoneinfo.ZoneInfo("Europe/London")

CAMPAIGNS = """
from datetime import timedelta

from smsbot import Campaign, Conversation, Flow, State

REMINDER = Campaign(
    name="reminder",
    group="patients",
    field="appointment_at",
    offset=timedelta(hours=-24),
    send="reminder.txt",
)
MORNING = Campaign(
    name="morning",
    group="early",
    field="appointment_at",
    offset=timedelta(days=-1),
    at_hour=9,
    send="morning.txt",
    data={"who": "name", "at": "appointment_at"},
)
SURVEY = Campaign(
    name="survey",
    group="surveyed",
    field="appointment_at",
    offset=timedelta(hours=2),
    start="survey",
    data={"who": "name"},
)


class Survey(Flow):
    name = "survey"
    asked = State(initial=True, free_text=True)
    done = State(final=True)

    async def start(self, convo: Conversation) -> State | None:
        await convo.say(f"How did it go, {convo.data['who']}?")
        return None

    @asked.otherwise
    async def answer(self, convo: Conversation, msg: object) -> State | None:
        return self.done


class Desk(Flow):
    \"\"\"What a patient can text: LEAVE (the group), CLEAR (the date), anything else.\"\"\"

    name = "desk"
    done = State(initial=True, final=True)

    async def start(self, convo: Conversation) -> State | None:
        text = convo.message.text if convo.message else ""
        if text == "LEAVE":
            convo.contact.groups.remove("patients")
        elif text == "CLEAR":
            del convo.contact.fields["appointment_at"]
        await convo.say("Noted")
        return None
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "flows").mkdir(parents=True)
    (root / "templates").mkdir()
    (root / "flows" / "clinic.py").write_text(CAMPAIGNS, encoding="utf-8")
    (root / "templates" / "reminder.txt").write_text(
        "Hi {{ name }}, see you {{ appointment_at|datetime }} at {{ clinic }}"
    )
    (root / "templates" / "morning.txt").write_text("Morning {{ who }}: {{ at|time }} tomorrow")
    (root / "smsbot.toml").write_text(
        '[numbers."+447700900100"]\ncatch_all = "desk"\n'
        '[contacts.fields]\nappointment_at = "datetime"\n'
    )
    return root


@pytest.fixture
async def kit(db_url: str, project: Path) -> AsyncIterator[BotDriver]:
    async with BotDriver(driver_settings(project, db_url), now=NOW) as driver:
        yield driver


@pytest.fixture
def engine(kit: BotDriver) -> Iterator[Engine]:
    engine = create_engine(kit.settings.sync_database_url, poolclass=pool.NullPool)
    yield engine
    engine.dispose()


def _import(kit: BotDriver, engine: Engine, path: Path, rows: str, group: str) -> None:
    path.write_text("phone,name,appointment_at,clinic\n" + rows, encoding="utf-8")
    report = import_csv(
        engine,
        path,
        region="GB",
        config_fields={"appointment_at": "datetime"},
        now=kit.clock.now(),
        group=group,
    )
    assert report.bad == []


def _fires(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(timers_t.c.name, timers_t.c.state).where(timers_t.c.contact_id.is_not(None))
        ).all()
    return {name: state for name, state in rows}


async def test_a_campaign_fires_each_contact_once_in_order(
    kit: BotDriver, engine: Engine, tmp_path: Path
) -> None:
    _import(
        kit,
        engine,
        tmp_path / "c.csv",
        f"{CY},Cy,2026-03-25T10:00:00+00:00,Hillside\n"
        f"{ANN},Ann,2026-03-23T09:30:00+00:00,Riverside\n"
        f"{BOB},Bob,2026-03-24T15:00:00+00:00,Riverside\n",
        "patients",
    )
    await kit.advance(minutes=1)  # the sync runs, nothing is due yet
    assert kit.replies == []
    assert set(_fires(engine).values()) == {TimerState.SCHEDULED.value}
    await kit.advance(days=10)
    assert [r.to for r in kit.replies] == [ANN, BOB, CY]
    assert [r.at for r in kit.replies] == [
        dt.datetime(2026, 3, 22, 9, 30, tzinfo=dt.UTC),
        dt.datetime(2026, 3, 23, 15, 0, tzinfo=dt.UTC),
        dt.datetime(2026, 3, 24, 10, 0, tzinfo=dt.UTC),
    ]
    kit.expect_reply(equals="Hi Ann, see you Mon 23 Mar at 09:30 at Riverside", to=ANN)
    assert set(_fires(engine).values()) == {TimerState.FIRED.value}
    # imported again with the same dates: at most once per contact and value
    _import(
        kit, engine, tmp_path / "again.csv", f"{ANN},Ann,2026-03-23T09:30:00+00:00,X\n", "patients"
    )
    await kit.advance(days=1)
    assert len(kit.replies) == 3


async def test_a_changed_date_moves_the_reminder_and_the_old_one_never_fires(
    kit: BotDriver, engine: Engine, tmp_path: Path
) -> None:
    _import(kit, engine, tmp_path / "a.csv", f"{ANN},Ann,2026-03-22T10:00:00+00:00,R\n", "patients")
    await kit.advance(minutes=1)
    _import(kit, engine, tmp_path / "b.csv", f"{ANN},Ann,2026-03-26T10:00:00+00:00,R\n", "patients")
    await kit.advance(minutes=1)
    assert _fires(engine) == {
        "campaign:reminder@2026-03-22T10:00:00+00:00": TimerState.CANCELLED.value,
        "campaign:reminder@2026-03-26T10:00:00+00:00": TimerState.SCHEDULED.value,
    }
    with engine.connect() as conn:  # each fire its own token: 128 random bits as hex
        tokens = conn.execute(select(timers_t.c.token)).scalars().all()
    assert len(tokens) == len(set(tokens)) == 2
    assert all(re.fullmatch(r"[0-9a-f]{32}", token) for token in tokens)
    await kit.advance(until=dt.datetime(2026, 3, 25, 9, 59, tzinfo=dt.UTC))
    assert kit.replies == []  # the old reminder (due 21 Mar 10:00) did not fire
    await kit.advance(minutes=2)
    reply = kit.expect_reply(contains="Thu 26 Mar at 10:00", to=ANN)
    assert reply.at == dt.datetime(2026, 3, 25, 10, 0, tzinfo=dt.UTC)
    kit.expect_no_reply()


async def test_delivery_hour_in_the_contacts_zone_through_dst_changes(
    kit: BotDriver, engine: Engine, tmp_path: Path
) -> None:
    # UK clocks go forward on 29 March 2026 and back on 25 October 2026.
    _import(
        kit,
        engine,
        tmp_path / "e.csv",
        f"{ANN},Ann,2026-03-28T14:00:00+00:00,R\n"  # reminder 27 Mar 09:00 GMT
        f"{BOB},Bob,2026-03-31T10:00:00+01:00,R\n"  # reminder 30 Mar 09:00 BST
        f"{CY},Cy,2026-10-26T10:00:00+00:00,R\n"  # reminder 25 Oct 09:00 GMT (the change day)
        f"{DI},Di,2026-10-25T12:00:00+00:00,R\n",  # reminder 24 Oct 09:00 BST
        "early",
    )
    await kit.advance(days=220)
    sent = {r.to: r for r in kit.replies}
    assert sent[ANN].at == dt.datetime(2026, 3, 27, 9, 0, tzinfo=dt.UTC)
    assert sent[BOB].at == dt.datetime(2026, 3, 30, 8, 0, tzinfo=dt.UTC)
    assert sent[DI].at == dt.datetime(2026, 10, 24, 8, 0, tzinfo=dt.UTC)
    assert sent[CY].at == dt.datetime(2026, 10, 25, 9, 0, tzinfo=dt.UTC)
    assert {r.at.astimezone(LONDON).hour for r in kit.replies} == {9}
    assert sent[BOB].text == "Morning Bob: 10:00 tomorrow"  # in the contact's zone


def test_a_delivery_hour_in_a_spring_gap_is_the_first_instant_after_it() -> None:
    camp = Campaign(
        name="c", group="g", field="f", offset=dt.timedelta(days=-1), at_hour=1, send="t.txt"
    )
    value = dt.datetime(2026, 3, 30, 12, 0, tzinfo=dt.UTC)  # a day later: 01:00 does not exist
    assert camp.due_at(value, LONDON) == dt.datetime(2026, 3, 29, 1, 0, tzinfo=dt.UTC)
    autumn = dt.datetime(2026, 10, 26, 12, 0, tzinfo=dt.UTC)  # 01:00 happens twice: the first
    assert camp.due_at(autumn, LONDON) == dt.datetime(2026, 10, 25, 0, 0, tzinfo=dt.UTC)


async def test_a_contact_erased_mid_campaign_gets_nothing(
    kit: BotDriver, engine: Engine, tmp_path: Path
) -> None:
    _import(
        kit,
        engine,
        tmp_path / "c.csv",
        f"{ANN},Ann,2026-03-23T09:30:00+00:00,R\n{BOB},Bob,2026-03-25T09:30:00+00:00,R\n",
        "patients",
    )
    await kit.advance(days=2, hours=22)  # Ann's reminder (22 Mar 09:30) went out
    kit.expect_reply(contains="Hi Ann", to=ANN)
    done = erase(engine, BOB)
    assert done["campaign_fires"] == 1
    assert list(_fires(engine)) == ["campaign:reminder@2026-03-23T09:30:00+00:00"]
    await kit.advance(days=10)
    kit.expect_no_reply()


async def test_leaving_the_group_or_clearing_the_field_cancels(
    kit: BotDriver, engine: Engine, tmp_path: Path
) -> None:
    _import(
        kit,
        engine,
        tmp_path / "c.csv",
        f"{ANN},Ann,2026-03-23T09:30:00+00:00,R\n"
        f"{BOB},Bob,2026-03-23T09:30:00+00:00,R\n"
        f"{CY},Cy,2026-03-23T09:30:00+00:00,R\n",
        "patients",
    )
    await kit.advance(minutes=1)
    await kit.send("LEAVE", from_=ANN)  # a flow removes Ann from the group
    await kit.send("CLEAR", from_=BOB)  # and clears Bob's date
    kit.expect_reply(equals="Noted", to=ANN)
    kit.expect_reply(equals="Noted", to=BOB)
    await kit.advance(days=5)
    kit.expect_reply(contains="Hi Cy", to=CY)
    kit.expect_no_reply()
    with engine.connect() as conn:
        states = conn.execute(
            select(timers_t.c.state).where(timers_t.c.contact_id.is_not(None))
        ).scalars()
        assert sorted(states) == ["cancelled", "cancelled", "fired"]
    # back in the group with a new date: scheduled again
    _import(kit, engine, tmp_path / "d.csv", f"{ANN},Ann,2026-04-01T09:30:00+00:00,R\n", "patients")
    await kit.advance(days=10)
    kit.expect_reply(contains="Hi Ann", to=ANN)


async def test_a_fire_already_past_due_is_skipped_not_sent(
    kit: BotDriver, engine: Engine, tmp_path: Path
) -> None:
    _import(
        kit,
        engine,
        tmp_path / "c.csv",
        f"{ANN},Ann,2026-03-20T20:00:00+00:00,R\n"  # reminder due 19 Mar 20:00: past
        f"{BOB},Bob,2026-03-21T20:00:00+00:00,R\n",  # due 20 Mar 20:00: to come
        "patients",
    )
    await kit.advance(days=2)
    kit.expect_reply(contains="Hi Bob", to=BOB)
    kit.expect_no_reply()
    assert _fires(engine)["campaign:reminder@2026-03-20T20:00:00+00:00"] == "skipped"


async def test_opt_outs_hold_even_after_erasure(
    kit: BotDriver, engine: Engine, tmp_path: Path
) -> None:
    _import(
        kit,
        engine,
        tmp_path / "c.csv",
        f"{ANN},Ann,2026-03-23T09:30:00+00:00,R\n{BOB},Bob,2026-03-23T09:30:00+00:00,R\n",
        "patients",
    )
    await kit.send("STOP", from_=ANN)
    kit.expect_reply(contains="unsubscribed", to=ANN)
    await kit.send("STOP", from_=BOB)
    kit.expect_reply(contains="unsubscribed", to=BOB)
    erase(engine, BOB)  # the STOP is kept as a hashed suppression
    _import(kit, engine, tmp_path / "d.csv", f"{BOB},Bob,2026-03-23T09:30:00+00:00,R\n", "patients")
    await kit.advance(days=5)
    kit.expect_no_reply()
    assert set(_fires(engine).values()) == {"fired"}  # fired, and suppressed


async def test_quiet_hours_defer_a_campaign_message(
    db_url: str, project: Path, tmp_path: Path
) -> None:
    settings = driver_settings(project, db_url, {"SMSBOT_QUIET_HOURS": "21:00-08:00"})
    async with BotDriver(settings, now=NOW) as kit:
        engine = create_engine(kit.settings.sync_database_url, poolclass=pool.NullPool)
        try:
            _import(
                kit, engine, tmp_path / "c.csv", f"{ANN},Ann,2026-03-23T03:00:00+00:00,R\n",
                "patients",
            )  # fmt: skip
            await kit.advance(days=5)
        finally:
            engine.dispose()
    reply = kit.expect_reply(contains="Hi Ann", to=ANN)
    assert reply.at == dt.datetime(2026, 3, 22, 8, 0, tzinfo=dt.UTC)  # not 03:00


async def test_a_campaign_can_start_a_flow(kit: BotDriver, engine: Engine, tmp_path: Path) -> None:
    _import(kit, engine, tmp_path / "c.csv", f"{ANN},Ann,2026-03-21T10:00:00+00:00,R\n", "surveyed")
    await kit.advance(days=2)
    reply = kit.expect_reply(equals="How did it go, Ann?", to=ANN)
    assert reply.at == dt.datetime(2026, 3, 21, 12, 0, tzinfo=dt.UTC)
    assert kit.conversation(ANN).flow == "survey"


# --- declaring and listing ----------------------------------------------------------------------


def test_a_bad_declaration_names_the_campaign_and_the_fix() -> None:
    with pytest.raises(ValueError, match=r"campaign 'x': give exactly one of send="):
        Campaign(name="x", group="g", field="at", send="a.txt", start="flow")
    with pytest.raises(ValueError, match=r"campaign 'x': at_hour must be an hour from 0 to 23"):
        Campaign(name="x", group="g", field="at", send="a.txt", at_hour=24)
    with pytest.raises(ValueError, match=r"campaign name 'Bad Name' must be"):
        Campaign(name="Bad Name", group="g", field="at", send="a.txt")


def test_an_unknown_template_or_flow_stops_start_up_naming_the_campaign(
    project: Path, db_url: str
) -> None:
    flows = project / "flows" / "clinic.py"
    flows.write_text(
        CAMPAIGNS.replace('send="reminder.txt"', 'send="remider.txt"').replace(
            'start="survey"', 'start="surveys"'
        )
    )
    with pytest.raises(FlowLoadError) as bad:
        FlowRuntime.from_settings(driver_settings(project, db_url))
    text = str(bad.value)
    assert "campaign 'reminder' sends template 'remider.txt', which does not exist" in text
    assert "did you mean 'reminder.txt'?" in text
    assert "campaign 'survey' starts flow 'surveys', which does not exist" in text


def test_smsbot_campaigns_lists_them_and_their_fires(
    project: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(project)
    monkeypatch.setenv("SMSBOT_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    assert main(["campaigns"]) == 0
    out = capsys.readouterr().out
    assert "reminder: group patients, 24h before appointment_at, send reminder.txt" in out
    assert (
        "morning: group early, 24h before appointment_at, at 09:00 local, send morning.txt" in out
    )
    assert "  fires: 0 scheduled, 0 fired, 0 skipped, 0 cancelled, 0 missed" in out
    assert main(["campaigns", "--json", "--no-database"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in listed] == ["morning", "reminder", "survey"]
    assert listed[2]["start"] == "survey" and listed[2]["fires"] is None
    assert main(["check"]) == 0
    assert "campaigns: morning, reminder, survey" in capsys.readouterr().out
    (project / "flows" / "clinic.py").write_text(CAMPAIGNS.replace("reminder.txt", "nope.txt"))
    assert main(["campaigns"]) == 2
    err = capsys.readouterr().err
    assert "campaign 'reminder' sends template 'nope.txt', which does not exist" in err
    assert "Traceback" not in err


def test_a_campaign_sends_from_its_number_the_default_sender_or_the_only_number() -> None:
    camp = Campaign(name="c", group="g", field="f", send="t.txt")
    real = Settings(provider="divergent", divergent_api_key=Secret("k"))
    assert campaign_sender(real, camp) is None
    assert "campaign 'c' has no number to send from" in no_sender(camp)
    assert campaign_sender(real.replace(default_sender="+447700900100"), camp) == "+447700900100"
    one = real.replace(numbers={"+447700900200": {}})
    assert campaign_sender(one, camp) == "+447700900200"
    own = Campaign(name="c", group="g", field="f", send="t.txt", number="+447700900300")
    assert campaign_sender(one, own) == "+447700900300"
    assert Plan.of(real, {"c": camp}).sender(camp) is None  # nothing is scheduled for it


async def test_the_timer_leader_schedules_an_import_from_another_process_and_fires_it(
    db_url: str, sandbox: Sandbox, project: Path, tmp_path: Path
) -> None:
    # Real time, as `smsbot serve` runs: the import is another writer; the leader's sync finds
    # it by contacts.updated_at, and APScheduler fires the reminder a second later.
    clock = SystemClock()
    runtime = FlowRuntime.from_settings(driver_settings(project, db_url))
    bot = await make_bot(db_url, sandbox, runtime, clock, SMSBOT_DEFAULT_SENDER="+447700900100")
    bot.scheduler.sync_interval = 0.1
    await bot.start()
    engine = create_engine(bot.settings.sync_database_url, poolclass=pool.NullPool)
    try:
        async with asyncio.timeout(15):  # elected (PostgreSQL: after the lock settles)
            while bot.scheduler.last_sync is None:
                await asyncio.sleep(0.05)
        appointment = clock.now() + dt.timedelta(hours=24, seconds=1.5)
        path = tmp_path / "live.csv"
        path.write_text(
            f"phone,name,appointment_at,clinic\n{ANN},Ann,{appointment.isoformat()},R\n"
        )
        await asyncio.to_thread(
            import_csv, engine, path, region="GB", config_fields={}, now=clock.now(),
            group="patients",
        )  # fmt: skip
        async with asyncio.timeout(15):
            while not sandbox.messages:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # a second send, if there were one, would land now
        assert [m.content.split(",")[0] for m in sandbox.messages] == ["Hi Ann"]
        assert list(_fires(engine).values()) == ["fired"]
    finally:
        engine.dispose()
        await bot.stop()


async def test_a_fire_whose_contact_was_deleted_is_cancelled_when_due(
    kit: BotDriver, engine: Engine, tmp_path: Path
) -> None:
    _import(kit, engine, tmp_path / "c.csv", f"{ANN},Ann,2026-03-23T09:30:00+00:00,R\n", "patients")
    await kit.advance(minutes=1)
    with engine.begin() as conn:  # deleted by a writer that did not delete its fires
        conn.execute(delete(contact_groups_t))
        conn.execute(delete(contacts_t))
    await kit.advance(days=5)
    kit.expect_no_reply()
    assert list(_fires(engine).values()) == ["cancelled"]


def test_campaigns_given_to_a_runtime_are_checked_too(project: Path, db_url: str) -> None:
    settings = driver_settings(project, db_url)
    camp = Campaign(name="late", group="g", field="at", start="nowhere")
    with pytest.raises(FlowLoadError, match=r"campaign 'late' starts flow 'nowhere'"):
        FlowRuntime(settings, SmsTemplates(settings.templates_dir), [], {"late": camp})


async def test_new_fires_another_sync_stored_first_are_kept_once(db: Database) -> None:
    # Two leaders' syncs (a takeover) may insert the same fires: the unique (contact, name)
    # keeps the first; on PostgreSQL a page's fires go in as one statement over arrays.
    due = dt.datetime(2026, 3, 1, 9, 0, tzinfo=dt.UTC)
    now = due - dt.timedelta(days=1)
    rows = [
        {
            "contact_id": 100 + i,
            "workspace": "default",
            "name": "campaign:check-up@2026-03-01",
            "kind": "campaign",
            "token": f"{i:032x}",
            "due_at": due + dt.timedelta(minutes=i),
            "payload": {"campaign": "check-up", "n": i},
            "state": TimerState.SCHEDULED.value,
            "created_at": now,
        }
        for i in range(3)
    ]
    await db.write(lambda conn: campaigns_sync._NEW_FIRES.many(conn, rows[:2]))
    again = [{**r, "token": "f" * 32} for r in rows]  # the other sync's, with its own tokens
    await db.write(lambda conn: campaigns_sync._NEW_FIRES.many(conn, again))
    async with db.session() as s:
        t = timers_t
        found = (
            await s.execute(
                select(t.c.contact_id, t.c.token, t.c.due_at, t.c.payload, t.c.state).order_by(
                    t.c.contact_id
                )
            )
        ).all()
    assert [tuple(f) for f in found] == [
        (
            r["contact_id"],
            (r if i < 2 else again[i])["token"],
            r["due_at"],
            r["payload"],
            "scheduled",
        )
        for i, r in enumerate(rows)
    ]
