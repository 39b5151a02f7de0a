"""Workspaces, the data plane: routing defaults, fair dispatching, campaigns, an old database.

A workspace's numbers run its flows, keywords, quiet hours and HELP text; one workspace's bulk
backlog does not hold back another's events; a campaign reaches the contacts of the workspace
its number belongs to; and a database from before workspaces upgrades with every row kept, in
the `default` workspace. Runs on SQLite and PostgreSQL where a database is involved.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import bindparam, create_engine, func, select, text

from smsbot.clock import VirtualClock
from smsbot.config import ConfigError, Settings
from smsbot.engine.campaign import Campaign
from smsbot.engine.checks import check_project
from smsbot.engine.compliance import ComplianceAction
from smsbot.engine.contract import ConversationKey, EventKind
from smsbot.engine.quiet_hours import parse_window
from smsbot.engine.runtime import FlowRuntime
from smsbot.pipeline import claims
from smsbot.pipeline.campaigns import Plan, sync_page
from smsbot.pipeline.due_timers import firing
from smsbot.pipeline.inbox import Inbox, InboxEntry
from smsbot.sms.templates import SmsTemplates
from smsbot.store.engine import Database
from smsbot.store.migrate import HEAD, upgrade
from smsbot.store.models import contact_groups_t, contacts_t, timers_t
from smsbot.store.types import UTCDateTime
from tests.test_workspaces_inbound import A_VN, B_VN, UNOWNED_VN, Alpha, Beta

T0 = dt.datetime(2026, 1, 15, 14, 0, tzinfo=dt.UTC)
REPO = Path(__file__).resolve().parents[1]
B_OWN_TABLE = "+447700900222"  # b's, with a [numbers] table of its own


def sandbox_workspaces(**extra: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        "a": {
            "provider": "sandbox",
            "numbers": [A_VN],
            "flows": ["alpha"],
            "catch_all": "alpha",
            "quiet_hours": "20:00-09:00",
            "compliance": {"help_text": "Client A: reply STOP to opt out."},
        },
        "b": {
            "provider": "sandbox",
            "numbers": [B_VN, B_OWN_TABLE],
            "sender_ids": ["ClinicB"],
            "flows": ["beta"],
            "keywords": {"BOOK": "beta"},
            "compliance": {"help_text": "Client B: reply STOP to opt out."},
        },
        **extra,
    }


def runtime(settings: Settings) -> FlowRuntime:
    return FlowRuntime(settings, SmsTemplates(REPO / "templates"), [Alpha, Beta])


def help_text(rt: FlowRuntime, number: str) -> str | None:
    rules = rt.router.binding(number).compliance
    return rules.answer(ComplianceAction.HELP, "help", opted_out=False).reply


def test_a_workspaces_numbers_run_its_flows_keywords_quiet_hours_and_help_text() -> None:
    settings = Settings(
        workspace_tables=sandbox_workspaces(),
        numbers={B_OWN_TABLE: {"flows": ["alpha"], "send_rate": 2}},
    )
    rt = runtime(settings)
    a, b = rt.router.binding(A_VN), rt.router.binding(B_VN)
    assert (a.flows, a.catch_all, dict(a.keywords)) == ({"alpha"}, "alpha", {"hello": "alpha"})
    assert a.quiet_window == parse_window("20:00-09:00")
    assert (b.flows, b.catch_all, dict(b.keywords)) == (
        {"beta"},
        None,
        {"howdy": "beta", "book": "beta"},
    )
    assert b.quiet_window == settings.quiet_window
    assert help_text(rt, A_VN) == "Client A: reply STOP to opt out."
    assert help_text(rt, B_VN) == "Client B: reply STOP to opt out."
    assert rt.router.binding("ClinicB") is b  # a sender ID of b's: b's defaults
    # A number's own table wins where it speaks (its flows, so none of b's keywords) and
    # takes its workspace's defaults for the rest: b's HELP text.
    own = rt.router.binding(B_OWN_TABLE)
    assert (own.flows, own.send_rate, dict(own.keywords)) == ({"alpha"}, 2.0, {"hello": "alpha"})
    assert help_text(rt, B_OWN_TABLE) == "Client B: reply STOP to opt out."
    # A number no workspace owns runs the defaults (it gets no message: see the webhooks).
    assert rt.router.binding(UNOWNED_VN).flows == {"alpha", "beta"}


def test_the_default_workspaces_routing_is_every_numbers_when_it_owns_them_all() -> None:
    tables = {"default": {"flows": ["beta"], "compliance": {"help_text": "Ours."}}}
    rt = runtime(Settings(workspace_tables=tables))
    assert rt.router.binding(UNOWNED_VN).flows == {"beta"}
    assert help_text(rt, A_VN) == "Ours."


def test_routing_errors_name_the_workspace_and_the_key() -> None:
    for table, says in (
        ({"flows": ["gamma"]}, "workspaces.a.flows names flow 'gamma'"),
        ({"flows": ["alpha"], "catch_all": "beta"}, "workspaces.a.catch_all names 'beta'"),
        ({"keywords": {"STOP": "alpha"}}, "STOP is a compliance word on workspaces.a"),
    ):
        tables = {"a": {"provider": "sandbox", "numbers": [A_VN], **table}}
        with pytest.raises(ConfigError, match=says):
            runtime(Settings(workspace_tables=tables))


@pytest.mark.parametrize("rate", [0, -1, "fast", True, float("nan"), float("inf")])
def test_a_number_tables_send_rate_must_be_a_positive_number(rate: object) -> None:
    settings = Settings(numbers={A_VN: {"send_rate": rate}})
    with pytest.raises(ConfigError, match=r"send_rate must be a positive number") as caught:
        runtime(settings)
    assert f'[numbers."{A_VN}"].send_rate' in str(caught.value)


def test_smsbot_check_passes_with_workspaces_and_send_rates() -> None:
    tables = {
        "clinic": {"provider": "sandbox", "numbers": [A_VN], "flows": ["appointment", "keywords"]},
        "gym": {"provider": "sandbox", "numbers": [B_VN], "flows": ["keywords"]},
    }
    settings = Settings(workspace_tables=tables, numbers={A_VN: {"send_rate": 0.5}})
    report = check_project(REPO / "flows", REPO / "templates", settings)
    assert [f for f in report.findings if f.severity == "error"] == []


# --- fair dispatching ------------------------------------------------------------------------


def start(workspace: str, vn: str, n: int) -> InboxEntry:
    return InboxEntry(
        "api",
        f"{workspace}:{n}",
        EventKind.START,
        {"flow": "x"},
        vn,
        f"+4477009{n:05d}",
        workspace=workspace,
    )


async def due(db: Database, limit: int) -> list[tuple[str, str]]:
    keys = await db.read(lambda conn: claims.due_keys(conn, T0, limit))
    return [(k.virtual_number, k.phone) for k in keys]


async def test_one_workspaces_backlog_does_not_starve_anothers_events(db: Database) -> None:
    inbox = Inbox(db, VirtualClock(T0))
    await inbox.accept_many([start("a", A_VN, n) for n in range(300)])
    assert await due(db, 10) == [(A_VN, f"+4477009{n:05d}") for n in range(10)]  # one: as before
    await inbox.accept_many([start("b", B_VN, n) for n in range(3)])
    assert await db.read(claims.waiting_workspaces) == ["a", "b"]
    keys = await due(db, 10)
    # b's three, queued after a's 300, are taken in turn with a's oldest in the first batch.
    assert keys[:6] == [
        (A_VN, "+447700900000"),
        (B_VN, "+447700900000"),
        (A_VN, "+447700900001"),
        (B_VN, "+447700900001"),
        (A_VN, "+447700900002"),
        (B_VN, "+447700900002"),
    ]
    assert keys[6:] == [(A_VN, f"+4477009{n:05d}") for n in range(3, 7)]
    # A person who texts still comes first, whichever workspace.
    text = InboxEntry(
        "divergent", "in", EventKind.INBOUND, {"body": "hi"}, B_VN, "+447700999999", workspace="b"
    )
    await inbox.accept_many([text])
    assert (await due(db, 10))[0] == (B_VN, "+447700999999")


# --- campaigns -------------------------------------------------------------------------------

PHONE = "+447700900555"
CAMPAIGN = {"group": "patients", "field": "appointment_at", "send": "reminder.txt"}


async def add_contact(db: Database, workspace: str) -> int:
    at = (T0 + dt.timedelta(days=3)).isoformat()
    async with db.session() as s, s.begin():
        found = await s.execute(
            contacts_t.insert()
            .values(
                workspace=workspace,
                phone=PHONE,
                fields={"appointment_at": at},
                created_at=T0,
                updated_at=T0,
            )
            .returning(contacts_t.c.id)
        )
        contact_id = int(found.scalar_one())
        await s.execute(
            contact_groups_t.insert().values(contact_id=contact_id, name="patients", created_at=T0)
        )
    return contact_id


async def test_a_campaign_reaches_only_the_contacts_of_its_numbers_workspace(
    db: Database,
) -> None:
    of_a, of_b, of_default = [await add_contact(db, w) for w in ("a", "b", "default")]
    tables = {**sandbox_workspaces(), "default": {"numbers": ["+447700900100"]}}
    settings = Settings(workspace_tables=tables, default_sender="+447700900100")
    campaigns = {
        "for-b": Campaign(name="for-b", number=B_VN, **CAMPAIGN),
        "no-number": Campaign(name="no-number", **CAMPAIGN),  # SMSBOT_DEFAULT_SENDER's owner
        "nobodys": Campaign(name="nobodys", number=UNOWNED_VN, **CAMPAIGN),
    }
    plan = Plan.of(settings, campaigns)
    assert {name: plan.workspace(c) for name, c in campaigns.items()} == {
        "for-b": "b",
        "no-number": "default",
        "nobodys": None,
    }
    await db.write(lambda conn: sync_page(conn, plan, T0, None))
    async with db.session() as s:
        fires = (
            await s.execute(select(timers_t).order_by(timers_t.c.contact_id, timers_t.c.name))
        ).all()
    assert [(f.contact_id, f.workspace, f.name.split("@")[0]) for f in fires] == [
        (of_b, "b", "campaign:for-b"),
        (of_default, "default", "campaign:no-number"),
    ]
    assert of_a not in {f.contact_id for f in fires}
    # Its fire comes into the inbox as its workspace's event.
    entry = firing(fires[0], ConversationKey(B_VN, PHONE))
    assert entry.workspace == "b"


# --- an old database -------------------------------------------------------------------------

ROWS_AT_0009 = [
    "INSERT INTO contacts (phone, fields, created_at) VALUES (:phone, '{}', :at)",
    "INSERT INTO conversations (id, virtual_number, phone, data, version)"
    " VALUES (1, :vn, :phone, '{}', 3)",
    "INSERT INTO messages (id, direction, virtual_number, phone, body, segments, encoding,"
    " attempts, created_at) VALUES ('m1', 'in', :vn, :phone, 'hi', 1, 'GSM-7', 0, :at)",
    "INSERT INTO webhook_events (source, event_id, kind, payload, state, attempts, received_at)"
    " VALUES ('divergent', 'e1', 'inbound', '{}', 'done', 0, :at)",
    "INSERT INTO opt_outs (virtual_number, phone, keyword, created_at)"
    " VALUES (:vn, :phone, 'STOP', :at)",
    "INSERT INTO suppressions (virtual_number, phone_hash, keyword, created_at)"
    " VALUES (:vn, 'abc', 'STOP', :at)",
    "INSERT INTO timers (conversation_id, name, kind, token, due_at, payload, state, created_at)"
    " VALUES (1, 't', 'remind', 'tok', :at, '{}', 'scheduled', :at)",
    "INSERT INTO state_changes (conversation_id, at, flow, event_kind)"
    " VALUES (1, :at, 'appointment', 'inbound')",
]
TABLES = (
    "contacts",
    "conversations",
    "messages",
    "webhook_events",
    "opt_outs",
    "suppressions",
    "timers",
    "state_changes",
)


async def test_a_database_from_before_workspaces_upgrades_into_default(db_url: str) -> None:
    sync_url = db_url.replace("+aiosqlite", "").replace("+asyncpg", "+psycopg")
    await asyncio.to_thread(upgrade, sync_url, "0009")
    engine = create_engine(sync_url)
    params = {"vn": A_VN, "phone": PHONE, "at": T0}
    at = bindparam("at", type_=UTCDateTime())  # SQLAlchemy's own datetime binding: Python
    try:  # 3.12+ deprecates sqlite3's default adapter (a warning is an error in the tests)
        with engine.begin() as conn:
            for statement in ROWS_AT_0009:
                query = text(statement)
                conn.execute(query.bindparams(at) if ":at" in statement else query, params)
        await asyncio.to_thread(upgrade, sync_url)
        with engine.begin() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == HEAD
            for table in TABLES:
                found = conn.execute(text(f"SELECT workspace, count(*) FROM {table} GROUP BY 1"))
                assert found.all() == [("default", 1)], table  # every row kept, in default
            # Contacts are per workspace now: the same phone may be another client's contact.
            conn.execute(
                text(
                    "INSERT INTO contacts (workspace, phone, fields, created_at)"
                    " VALUES ('a', :phone, '{}', :at)"
                ).bindparams(at),
                params,
            )
            assert conn.execute(select(func.count()).select_from(contacts_t)).scalar() == 2
    finally:
        engine.dispose()
