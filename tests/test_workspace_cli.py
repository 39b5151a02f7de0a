"""The data commands act in one workspace: `--workspace NAME`, `default` when left out."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from smsbot.app.cli import main
from smsbot.channels.sandbox import Sandbox
from smsbot.store.models import events_t
from tests.support import API_KEY, EXAMPLE_FLOWS

DEFAULT_VN = "+447700900100"
CLINIC_VN = "+447700900200"
PHONE = "+447700900123"


def _toml(sandbox_url: str) -> str:
    return f"""
[workspaces.default]
numbers = ["{DEFAULT_VN}"]

[workspaces.clinic]
provider = "divergent"
api_key = "{API_KEY}"
url = "{sandbox_url}"
webhook_secret = "whsec_clinic_0123456789"
numbers = ["{CLINIC_VN}"]
"""


@pytest.fixture
def project(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sandbox: Sandbox) -> str:
    """A project with the workspaces default and clinic (sending to the sandbox); its sync URL."""
    assert sandbox.url is not None
    (tmp_path / "smsbot.toml").write_text(_toml(sandbox.url))
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("SMSBOT_")]:
        if not name.startswith("SMSBOT_TEST_"):
            monkeypatch.delenv(name)
    for name, value in {"SMSBOT_DATABASE_URL": db_url, **EXAMPLE_FLOWS}.items():
        monkeypatch.setenv(name, value)
    return db_url.replace("+aiosqlite", "").replace("+asyncpg", "+psycopg")


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_contacts_commands_act_in_one_workspace(
    project: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "people.csv").write_text(f"phone,name,groups\n{PHONE},Ann,patients\n")
    code, out, _ = run(capsys, "contacts", "import", "people.csv", "--workspace", "clinic")
    assert code == 0 and "imported 1 contact(s)" in out
    assert run(capsys, "contacts", "export")[1].splitlines()[1:] == []  # default has none
    code, out, _ = run(capsys, "contacts", "export", "--workspace", "clinic")
    assert out.splitlines()[1] == f"{PHONE},Ann,,,patients"
    assert "no contact" in run(capsys, "contacts", "show", PHONE)[1]
    code, out, _ = run(capsys, "contacts", "show", PHONE, "--workspace", "clinic", "--json")
    assert json.loads(out)["contact"]["name"] == "Ann"
    assert "erased +447700900123: 0 contact" in run(capsys, "contacts", "erase", PHONE)[1]
    code, out, _ = run(capsys, "contacts", "show", PHONE, "--workspace", "clinic")
    assert "a contact" in out  # erasing in default left clinic's alone
    code, out, _ = run(capsys, "contacts", "erase", PHONE, "--workspace", "clinic")
    assert "erased +447700900123: 1 contact" in out
    code, _, err = run(capsys, "contacts", "export", "--workspace", "clinc")
    assert code == 2 and "did you mean 'clinic'?" in err


def test_events_commands_act_in_one_workspace(
    project: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "db", "upgrade")[0] == 0
    engine = create_engine(project)
    with engine.begin() as conn:
        [event_id] = conn.execute(
            events_t.insert()
            .values(
                source="divergent",
                event_id="evt_parked",
                kind="inbound",
                workspace="clinic",
                virtual_number=CLINIC_VN,
                phone=PHONE,
                payload={},
                state="failed",
                attempts=5,
                last_error="ValueError: bad date",
                received_at=dt.datetime.now(dt.UTC),
                processed_at=dt.datetime.now(dt.UTC),
            )
            .returning(events_t.c.id)
        ).one()
    code, out, _ = run(capsys, "events", "failed")
    assert code == 0 and "no failed events in workspace default" in out
    code, out, _ = run(capsys, "events", "failed", "--workspace", "clinic")
    assert f"#{event_id} inbound" in out and "ValueError: bad date" in out
    code, _, err = run(capsys, "events", "retry", str(event_id))
    assert code == 2 and "not a failed event of workspace default" in err
    code, out, _ = run(capsys, "events", "retry", str(event_id), "--workspace", "clinic")
    assert code == 0 and "queued again" in out
    with engine.connect() as conn:
        assert conn.execute(select(events_t.c.state)).scalar_one() == "pending"
    engine.dispose()


def test_start_from_csv_starts_from_the_workspaces_numbers(
    project: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "starts.csv").write_text(
        "to,from,name,starts_at,location\n"
        "07700 900001,,Ann,2030-01-20T10:30:00+00:00,Riverside\n"
        f"07700 900002,{DEFAULT_VN},Bob,2030-01-20T10:30:00+00:00,Riverside\n"
    )
    args = ("start", "appointment", "--csv", "starts.csv", "--workspace", "clinic")
    code, _, err = run(capsys, *args)
    assert code == 2 and f"{DEFAULT_VN} is not one of workspace clinic's senders" in err
    code, out, _ = run(capsys, *args, "--skip-invalid")
    assert code == 0 and "started 1 conversation(s)" in out
    engine = create_engine(project)
    with engine.connect() as conn:
        [(number, phone)] = conn.execute(select(events_t.c.virtual_number, events_t.c.phone))
    engine.dispose()
    assert (number, phone) == (CLINIC_VN, "+447700900001")
    code, _, err = run(capsys, "start", "appointment", "--csv", "starts.csv", "--from", CLINIC_VN)
    assert code == 2 and "not one of workspace default's senders" in err


async def test_send_goes_through_the_workspaces_own_account(
    project: str, sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = await asyncio.to_thread(
        run, capsys, "send", "--to", PHONE, "--text", "Hi", "--workspace", "clinic"
    )
    assert code == 0, out
    [sent] = sandbox.messages
    assert (sent.sender, sent.recipient, sent.content) == (CLINIC_VN, PHONE, "Hi")
    code, _, err = await asyncio.to_thread(
        run,
        capsys,
        "send",
        "--to",
        PHONE,
        "--text",
        "Hi",
        "--from",
        DEFAULT_VN,
        "--workspace",
        "clinic",
    )
    assert code == 2 and "not one of workspace clinic's senders" in err
