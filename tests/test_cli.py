"""The `smsbot` command: help, one-line errors, send, start, check, chat, events."""

from __future__ import annotations

import ast
import contextlib
import json
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from smsbot.channels.sandbox import Sandbox
from tests.fresh import LocalServer, clean_env, copy_example_flows, fresh_project
from tests.processes import free_port

REPO = Path(__file__).resolve().parents[1]


def smsbot(
    *args: str,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    cwd: Path | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run `python -m smsbot ARGS` with a clean SMSBOT_ environment."""
    return subprocess.run(
        [sys.executable, "-m", "smsbot", *args],
        env=clean_env(**(env or {})),
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        timeout=timeout,
        check=False,
    )


def test_help_lists_every_command() -> None:
    out = smsbot("--help")
    assert out.returncode == 0
    for command in ("serve", "sandbox", "send", "chat", "start", "check", "db", "events"):
        assert command in out.stdout


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SMSBOT_PORT": "abc"}, "SMSBOT_PORT"),
        ({"SMSBOT_PROT": "8080"}, "SMSBOT_PORT"),
        ({"SMSBOT_PROVIDER": "divergent"}, "SMSBOT_DIVERGENT_API_KEY"),
        ({"SMSBOT_DATABASE_URL": "mysql://x"}, "SMSBOT_DATABASE_URL"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it_not_a_traceback(
    env: dict[str, str], named: str, tmp_path: Path
) -> None:
    out = smsbot("check", env=env, cwd=tmp_path)
    assert out.returncode == 2
    assert named in out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_serve_refuses_a_real_provider_without_a_webhook_secret(tmp_path: Path) -> None:
    out = smsbot("serve", env={"SMSBOT_DIVERGENT_API_KEY": "k"}, cwd=tmp_path)
    assert out.returncode == 2
    assert "SMSBOT_WEBHOOK_SECRET is not set" in out.stderr
    assert "--insecure-no-signature" in out.stderr


def test_check_accepts_the_example_flows() -> None:
    out = smsbot("check")
    assert out.returncode == 0, out.stderr
    assert "appointment" in out.stdout and "keywords" in out.stdout


def _project(tmp_path: Path, flow_source: str, templates: dict[str, str]) -> Path:
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "booking.py").write_text(flow_source)
    for name, text in templates.items():
        path = tmp_path / "templates" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


TYPO_STATE = """
from smsbot import Flow, State

class Booking(Flow):
    name = "booking"
    asking = State(initial=True)
    done = State(final=True)

    @asking.on("YES")
    async def yes(self, convo, msg):
        await convo.reply("booking/ok.txt")
        return self.doen
"""

TYPO_TEMPLATE = TYPO_STATE.replace("self.doen", "self.done").replace("ok.txt", "okk.txt")


@pytest.mark.parametrize(("source", "needle"), [(TYPO_STATE, "doen"), (TYPO_TEMPLATE, "okk.txt")])
@pytest.mark.parametrize("command", ["check", "serve"])
def test_a_typo_in_a_flow_fails_at_start_up_naming_the_file(
    tmp_path: Path, source: str, needle: str, command: str
) -> None:
    project = _project(tmp_path, source, {"booking/ok.txt": "Booked."})
    out = smsbot(command, cwd=project, env={"SMSBOT_PORT": "1"})
    # serve refuses to start (2); check reports it among its findings and fails (1)
    said = out.stdout if command == "check" else out.stderr
    assert out.returncode == (1 if command == "check" else 2), out.stdout + out.stderr
    assert "booking.py" in said
    assert needle in said
    assert "Traceback" not in out.stderr


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    sb = Sandbox(api_key="cli-key")
    await sb.start()
    yield sb
    await sb.stop()


async def test_send_goes_through_the_configured_provider(sandbox: Sandbox, tmp_path: Path) -> None:
    import asyncio

    assert sandbox.url is not None
    env = {
        "SMSBOT_DIVERGENT_API_KEY": "cli-key",
        "SMSBOT_DIVERGENT_URL": sandbox.url,
        "SMSBOT_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
        "SMSBOT_DEFAULT_SENDER": "Clinic",  # `--from` must be one of the deployment's senders
    }
    await asyncio.to_thread(smsbot, "db", "upgrade", env=env, cwd=tmp_path)
    out = await asyncio.to_thread(
        smsbot,
        "send",
        "--to",
        "07700 900123",
        "--text",
        "Hi €",
        "--from",
        "Clinic",
        env=env,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "GSM-7" in out.stdout and "+447700900123" in out.stdout
    [sent] = sandbox.messages
    assert (sent.sender, sent.recipient, sent.content) == ("Clinic", "+447700900123", "Hi €")

    bad = await asyncio.to_thread(
        smsbot, "send", "--to", "nope", "--text", "x", "--from", "Clinic", env=env, cwd=tmp_path
    )
    assert bad.returncode == 2
    assert "recipient" in bad.stderr and "Traceback" not in bad.stderr
    wrong_key = {**env, "SMSBOT_DIVERGENT_API_KEY": "wrong"}
    refused = await asyncio.to_thread(
        smsbot,
        "send",
        "--to",
        "07700900123",
        "--text",
        "x",
        "--from",
        "Clinic",
        env=wrong_key,
        cwd=tmp_path,
    )
    assert refused.returncode == 2
    assert "not sent" in refused.stderr and "wrong" not in refused.stderr  # no key in errors


def test_start_from_csv_validates_every_row_first(tmp_path: Path) -> None:
    env = {
        "SMSBOT_DATABASE_URL": f"sqlite:///{tmp_path / 'bulk.db'}",
        "SMSBOT_DEFAULT_SENDER": "+447700900100",
        "SMSBOT_FLOWS_DIR": str(REPO / "flows"),
        "SMSBOT_TEMPLATES_DIR": str(REPO / "templates"),
    }
    csv = tmp_path / "patients.csv"
    csv.write_text(
        "to,name,starts_at,location\n"
        "07700 900001,Ann,2030-01-20T10:30:00+00:00,Riverside\n"
        "garbage,Bob,2030-01-20T10:30:00+00:00,Riverside\n"
        "07700 900003,Cy,not a date,Riverside\n"
    )
    out = smsbot("start", "appointment", "--csv", str(csv), env=env, cwd=tmp_path)
    assert out.returncode == 2
    assert "nothing was started" in out.stderr
    assert "patients.csv:line 3: to" in out.stderr and "line 4: data" in out.stderr
    out = smsbot("start", "appointment", "--csv", str(csv), "--skip-invalid", env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "started 1 conversation(s)" in out.stdout and "2 invalid" in out.stdout
    out = smsbot("start", "nope", "--csv", str(csv), env=env, cwd=tmp_path)
    assert out.returncode == 2 and "known flows" in out.stderr


def test_events_failed_on_an_empty_database(tmp_path: Path) -> None:
    env = {"SMSBOT_DATABASE_URL": f"sqlite:///{tmp_path / 'e.db'}"}
    assert smsbot("db", "upgrade", env=env, cwd=tmp_path).returncode == 0
    out = smsbot("events", "failed", env=env, cwd=tmp_path)
    assert out.returncode == 0 and "no failed events" in out.stdout
    out = smsbot("events", "retry", "42", env=env, cwd=tmp_path)
    assert out.returncode == 2 and "not a failed event" in out.stderr


def test_chat_talks_to_the_example_flows_through_the_sandbox() -> None:
    data = '{"name": "Sam", "starts_at": "2099-01-20T10:30:00+00:00", "location": "Riverside"}'
    out = smsbot(
        "chat",
        "--flow",
        "appointment",
        "--data",
        data,
        stdin="YES\n/wait 1h\nHOURS\n/quit\n",
    )
    assert out.returncode == 0, out.stderr
    replies = [line for line in out.stdout.splitlines() if line.startswith("bot> ")]
    assert "Sam" in replies[0]  # the appointment question
    assert "you> YES" in out.stdout
    assert len(replies) == 3  # question, confirmation, opening hours
    assert "confirm" in replies[0] and "Sam" in replies[1]
    assert "[GSM-7, 1 segment]" in out.stdout


def test_chat_shows_the_state_a_conversation_ended_in() -> None:
    data = '{"name": "Sam", "starts_at": "2099-01-20T10:30:00+00:00", "location": "Riverside"}'
    lines = "NO\nHours are too short on Saturdays\n/data\n/quit\n"
    out = smsbot("chat", "--flow", "appointment", "--data", data, stdin=lines)
    assert out.returncode == 0, out.stderr
    assert "(the conversation ended in cancelled: completed)" in out.stdout
    assert '"end_state": "cancelled"' in out.stdout
    assert '"cancel_reason": "Hours are too short on Saturdays"' in out.stdout


def test_chat_refuses_an_unknown_flow_before_greeting() -> None:
    out = smsbot("chat", "--flow", "apointment", stdin="/quit\n")
    assert out.returncode == 2
    assert "You are" not in out.stdout  # no chat was opened for a typo
    assert "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines()[-1] == (  # after the sandbox secret's warning
        "smsbot: --flow: no flow named 'apointment' (did you mean 'appointment'?);"
        " known flows: appointment, keywords"
    )


# --- a first run: fresh databases, unreachable ones, busy ports, the development key ----------


def closed_port_url(password: str = "hunter2") -> str:
    """A PostgreSQL URL nobody answers on."""
    return f"postgresql://smsbot:{password}@127.0.0.1:{free_port()}/smsbot"


def one_line(out: subprocess.CompletedProcess[str]) -> str:
    """The single line a failing command printed; fails the test on a traceback or more lines."""
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


DATABASE_COMMANDS = [
    ("send", "--to", "07700900123", "--text", "Hi"),
    ("events", "failed"),
    ("events", "retry", "42"),
    ("start", "appointment", "--csv", "patients.csv"),
    ("db", "upgrade"),
]
PATIENTS = "to,name,starts_at,location\n07700 900001,Ann,2030-01-20T10:30:00+00:00,Riverside\n"


@pytest.mark.parametrize("command", DATABASE_COMMANDS, ids=" ".join)
async def test_every_database_command_migrates_a_fresh_database(
    command: tuple[str, ...], sandbox: Sandbox, tmp_path: Path
) -> None:
    import asyncio

    assert sandbox.url is not None
    fresh_project(tmp_path)
    (tmp_path / "patients.csv").write_text(PATIENTS)
    env = {
        "SMSBOT_DIVERGENT_API_KEY": "cli-key",
        "SMSBOT_DIVERGENT_URL": sandbox.url,
        "SMSBOT_DEFAULT_SENDER": "Clinic",
    }
    out = await asyncio.to_thread(smsbot, *command, env=env, cwd=tmp_path)
    assert "Traceback" not in out.stderr and "no such table" not in out.stderr, out.stderr
    said = out.stdout + out.stderr
    assert "created the database schema (revision " in said
    assert "sqlite:///./smsbot.db" in said
    expected = 2 if command[:2] == ("events", "retry") else 0  # event 42 does not exist
    assert out.returncode == expected, out.stderr
    again = await asyncio.to_thread(smsbot, *command, env=env, cwd=tmp_path)
    assert "created" not in again.stdout + again.stderr  # said once, when it happened


def test_bad_send_input_creates_no_database(tmp_path: Path) -> None:
    out = smsbot("send", "--to", "x", "--text", "Hi", cwd=tmp_path)
    assert out.returncode == 2
    assert "recipient" in one_line(out)
    assert not (tmp_path / "smsbot.db").exists()


@pytest.mark.parametrize(
    ("command", "choices"), [("db", "{upgrade}"), ("events", "{failed,retry}")]
)
def test_a_command_group_alone_names_its_commands(command: str, choices: str) -> None:
    out = smsbot(command)
    assert out.returncode == 2
    assert out.stderr.strip().endswith(f"the following arguments are required: {choices}")


def test_db_upgrade_says_what_it_did(tmp_path: Path) -> None:
    first = smsbot("db", "upgrade", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("created the database schema (revision 0")
    assert "up to date" not in first.stdout
    second = smsbot("db", "upgrade", cwd=tmp_path)
    assert second.stdout.startswith("nothing to do: the database is at the newest revision")


def test_a_database_migrated_by_a_newer_smsbot_is_named(tmp_path: Path) -> None:
    assert smsbot("db", "upgrade", cwd=tmp_path).returncode == 0
    with contextlib.closing(sqlite3.connect(tmp_path / "smsbot.db")) as conn, conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    line = one_line(smsbot("events", "failed", cwd=tmp_path))
    assert "revision '9999'" in line and "newer smsbot" in line


@pytest.mark.parametrize(
    "command",
    [("serve",), *DATABASE_COMMANDS[:2], ("db", "upgrade")],
    ids=" ".join,
)
def test_an_unreachable_database_is_one_line_with_the_password_masked(
    command: tuple[str, ...], tmp_path: Path
) -> None:
    fresh_project(tmp_path)
    url = closed_port_url("hunter2")
    out = smsbot(*command, env={"SMSBOT_DATABASE_URL": url}, cwd=tmp_path)
    assert out.returncode == 1
    line = one_line(out)
    assert "hunter2" not in line
    assert url.replace("hunter2", "***") in line
    assert "Connection refused" in line and "SMSBOT_DATABASE_URL" in line


def test_a_sqlite_file_that_cannot_be_opened_is_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'smsbot.db'}"
    out = smsbot("events", "failed", env={"SMSBOT_DATABASE_URL": url})
    assert out.returncode == 1
    line = one_line(out)
    assert "unable to open database file" in line and "directory exists" in line


def test_events_failed_shows_the_exceptions_own_message(tmp_path: Path) -> None:
    assert smsbot("db", "upgrade", cwd=tmp_path).returncode == 0
    try:
        try:
            int("abc")
        except ValueError as exc:
            raise RuntimeError("starts_at is not a date") from exc
    except RuntimeError as exc:
        stored = "".join(traceback.format_exception(exc, limit=-4))
    with contextlib.closing(sqlite3.connect(tmp_path / "smsbot.db")) as conn, conn:
        conn.execute(
            "INSERT INTO webhook_events (source, event_id, kind, virtual_number, phone, payload,"
            " state, attempts, last_error, received_at, processed_at)"
            " VALUES ('api', 'e1', 'start', '+447700900100', '+447700900123', '{}', 'failed', 5,"
            " ?, '2030-01-01 10:00:00', '2030-01-01 10:05:00')",
            (stored,),
        )
    out = smsbot("events", "failed", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "error=RuntimeError: starts_at is not a date" in out.stdout
    assert "Traceback" not in out.stdout


def test_an_http_error_never_names_a_cli_flag() -> None:
    from smsbot.app.operations import OperatorError, resolve_sender
    from smsbot.config import Secret, Settings

    real = Settings(provider="divergent", divergent_api_key=Secret("k"))
    with pytest.raises(OperatorError) as api:
        resolve_sender(real, None)  # what the operator API calls for a missing "from"
    assert "--" not in str(api.value) and '"from"' in str(api.value)
    with pytest.raises(OperatorError, match="--from"):
        resolve_sender(real, None, given_as="--from")


def http_error_texts() -> list[tuple[str, str]]:
    """(file:line, text) of every string in a raise or a problem(…) of the HTTP layer."""
    smsbot_dir = REPO / "smsbot"
    files = [
        *sorted((smsbot_dir / "app" / "server").glob("*.py")),
        *sorted((smsbot_dir / "channels").glob("*/routes.py")),
        smsbot_dir / "channels" / "intake.py",
        smsbot_dir / "app" / "bulk.py",
    ]
    found = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            is_answer = isinstance(node, ast.Raise) or (
                isinstance(node, ast.Call) and ast.unparse(node.func).endswith("problem")
            )
            if is_answer:
                for part in ast.walk(node):
                    if isinstance(part, ast.Constant) and isinstance(part.value, str):
                        found.append((f"{path.name}:{part.lineno}", part.value))
    return found


def test_no_http_error_text_names_a_cli_flag() -> None:
    texts = http_error_texts()
    assert len(texts) > 20  # the scan finds the API's answers
    flags = [(where, text) for where, text in texts if re.search(r"(^|\s|\()--[a-z]", text)]
    assert flags == []


def test_the_sandbox_sends_from_its_number_by_default() -> None:
    from smsbot.config import SANDBOX_NUMBER, Settings

    assert Settings.from_env({}).sender == SANDBOX_NUMBER == "+447700900100"
    assert Settings.from_env({"SMSBOT_DEFAULT_SENDER": "Clinic"}).sender == "Clinic"
    real = Settings.from_env({"SMSBOT_DIVERGENT_API_KEY": "k"})
    assert real.default_sender is None and real.sender is None  # never a made-up sender


def test_sandbox_fail_takes_national_numbers_and_refuses_garbage(tmp_path: Path) -> None:
    from smsbot.app.cli import _fail_number

    # the sandbox compares E.164 recipients: a national number used to be a silent no-op
    assert _fail_number("07700 900123", "GB") == "+447700900123"
    out = smsbot("sandbox", "--fail", "garbage", cwd=tmp_path)
    assert out.returncode == 2
    assert one_line(out).startswith("smsbot: --fail: 'garbage' is not a phone number")


def test_sandbox_listens_on_SMSBOT_SANDBOX_PORT(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "smsbot", "sandbox"],
        env=clean_env(SMSBOT_SANDBOX_PORT=str(port)),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:  # poll the child coming up
            assert proc.poll() is None, proc.communicate()[0]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/sandbox/messages") as resp:
                    assert json.load(resp) == {"messages": []}
                    break
            except urllib.error.URLError:
                assert time.monotonic() < deadline, "smsbot sandbox did not listen on the port"
                time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=15)


@pytest.mark.parametrize(
    ("command", "busy", "named"),
    [
        (("sandbox",), "SMSBOT_SANDBOX_PORT", "SMSBOT_SANDBOX_PORT"),
        (("serve",), "SMSBOT_SANDBOX_PORT", "SMSBOT_SANDBOX_PORT"),
        (("serve",), "SMSBOT_PORT", "SMSBOT_PORT"),
    ],
)
def test_a_busy_port_is_named_in_one_line(
    command: tuple[str, ...], busy: str, named: str, tmp_path: Path
) -> None:
    fresh_project(tmp_path)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        ports = {"SMSBOT_PORT": str(free_port()), "SMSBOT_SANDBOX_PORT": str(free_port())}
        out = smsbot(*command, env={**ports, busy: str(port)}, cwd=tmp_path)
    assert out.returncode == 2
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith(f"smsbot: port {port} is in use: stop what uses it or set {named}")
    assert "Traceback" not in out.stderr


def test_a_missing_templates_directory_is_one_line(tmp_path: Path) -> None:
    copy_example_flows(tmp_path / "flows")
    out = smsbot("serve", env={"SMSBOT_PORT": str(free_port())}, cwd=tmp_path)
    assert out.returncode == 2
    line = out.stderr.strip().splitlines()[-1]
    assert "Traceback" not in out.stderr
    assert "templates directory templates does not exist" in line
    assert "SMSBOT_TEMPLATES_DIR" in line
    # `smsbot check` reports it as one finding, not one per template the flows name
    check = smsbot("check", cwd=tmp_path)
    assert check.returncode == 1
    errors = [line for line in check.stdout.splitlines() if ": error: " in line]
    assert errors == [
        "templates: error: the templates directory does not exist: create it, or pass"
        " --templates DIR [load]"
    ]


def test_serve_makes_a_development_key_with_the_sandbox_and_keeps_it(tmp_path: Path) -> None:
    fresh_project(tmp_path)
    with LocalServer(tmp_path) as first:
        key = first.api_key
        assert key is not None and len(key) >= 32
        request = urllib.request.Request(
            f"http://127.0.0.1:{first.port}/api/conversations?phone=07700900123",
            headers={"Authorization": f"Bearer {key}"},
        )
        with urllib.request.urlopen(request) as resp:
            assert resp.status == 200
    assert (tmp_path / ".smsbot-api-key").stat().st_mode & 0o077 == 0  # the owner's alone
    with LocalServer(tmp_path) as second:
        assert second.api_key == key  # stable across restarts: a pasted export keeps working
    assert "Traceback" not in first.output + second.output


def test_a_real_provider_never_gets_a_development_key(tmp_path: Path) -> None:
    fresh_project(tmp_path)
    env = {"SMSBOT_DIVERGENT_API_KEY": "k", "SMSBOT_WEBHOOK_SECRET": "s" * 32}
    with LocalServer(tmp_path, **env) as server:
        request = urllib.request.Request(f"http://127.0.0.1:{server.port}/api/conversations")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request)
        refused.value.close()
        assert refused.value.code == 401
    assert server.api_key is None and "SMSBOT_API_KEY=" not in server.output
    assert not (tmp_path / ".smsbot-api-key").exists()


def test_serve_says_which_setting_names_the_service(tmp_path: Path) -> None:
    fresh_project(tmp_path)
    (tmp_path / "smsbot.toml").write_text(
        '[numbers."+447700900100".compliance]\nservice = "Riverside Clinic"\n'
    )
    with LocalServer(tmp_path) as server:
        pass
    assert 'on +447700900100 name the service "Riverside Clinic"' in server.output
    assert 'service in [numbers."+447700900100".compliance] of smsbot.toml' in server.output
    assert 'on other numbers name the service "this service"' in server.output
