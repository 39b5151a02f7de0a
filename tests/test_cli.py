"""The `smsbot` command: help, one-line errors, send, start, check, chat, events."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from smsbot.channels.sandbox import Sandbox

REPO = Path(__file__).resolve().parents[1]


def smsbot(
    *args: str,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    cwd: Path | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run `python -m smsbot ARGS` with a clean SMSBOT_ environment."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SMSBOT_")}
    return subprocess.run(
        [sys.executable, "-m", "smsbot", *args],
        env={**base, **(env or {})},
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
    assert out.returncode == 2, out.stdout + out.stderr
    assert "booking.py" in out.stderr
    assert needle in out.stderr
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
    assert "refused" in refused.stderr and "wrong" not in refused.stderr  # no key in errors


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
    assert "queued 1 start(s)" in out.stdout and "2 invalid" in out.stdout
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
