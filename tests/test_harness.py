"""smsbot.testing's in-memory harness: the real engine, no database, timers on a virtual clock."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from smsbot import Conversation, Flow, Message, State
from smsbot.engine.contract import Origin
from smsbot.testing import DEFAULT_NOW, Chat, make_runtime

REPO = Path(__file__).resolve().parents[1]
STARTS_AT = dt.datetime(2026, 1, 20, 10, 30, tzinfo=dt.UTC)
SAM = {"name": "Sam", "starts_at": STARTS_AT.isoformat(), "location": "Riverside Clinic"}


class Ping(Flow):
    """Asks once, nudges after an hour, and follows up by a scheduled call."""

    name = "ping"
    asking = State(initial=True, timeout=dt.timedelta(hours=1))
    waiting = State()
    done = State(final=True)

    async def start(self, convo: Conversation) -> State | None:
        await convo.say("Ping?")
        return None

    @asking.on("PONG")
    async def pong(self, convo: Conversation, msg: Message) -> State | None:
        convo.schedule(self.follow_up, at=convo.now + dt.timedelta(minutes=30))
        return self.waiting

    @asking.on_timeout
    async def nudge(self, convo: Conversation) -> State | None:
        await convo.say("Still there?")
        return None

    async def follow_up(self, convo: Conversation) -> State | None:
        await convo.say("Thanks!")
        return self.done


async def test_advancing_the_clock_fires_each_timer_at_its_time() -> None:
    chat = Chat(make_runtime([Ping], project=REPO))
    await chat.start("ping")
    assert [r.text for r in chat.replies] == ["Ping?"]
    assert await chat.advance(minutes=59) == []
    assert await chat.advance(minutes=2) == ["Still there?"]  # the timeout, at 10:00
    assert chat.state == "asking" and chat.now == DEFAULT_NOW + dt.timedelta(minutes=61)
    assert await chat.send("pong") == []
    assert chat.state == "waiting" and set(chat.timers) == {"call:follow_up", "expiry"}
    assert await chat.advance(hours=1) == ["Thanks!"]
    assert chat.flow is None and chat.timers == {}
    with pytest.raises(ValueError, match="never moves back"):
        await chat.advance(until=DEFAULT_NOW)


async def test_the_example_appointment_branch_by_branch() -> None:
    chat = Chat(make_runtime(project=REPO))
    await chat.start("appointment", SAM)
    assert chat.state == "waiting"
    assert chat.replies[-1].origin is Origin.FLOW
    assert await chat.advance(hours=48) == [
        "Sam, we haven't heard back about your appointment on Tue 20 Jan at 10:30. Please reply"
        " YES to confirm or NO to cancel."
    ]
    [confirmed] = await chat.send("yes")
    assert confirmed.startswith("Thanks Sam, you're booked")
    assert chat.user_data == {**SAM, "nudged": True}
    [reminder] = await chat.advance(until=STARTS_AT)
    assert reminder.startswith("Reminder: Sam")
    assert chat.replies[-1].origin is Origin.REMINDER


async def test_stop_is_remembered_and_fire_names_what_is_pending() -> None:
    chat = Chat(make_runtime(project=REPO), phone="+447700900456")
    await chat.start("appointment", SAM)
    await chat.send("STOP")
    assert chat.opted_out and chat.flow is None
    assert await chat.send("HOURS") == []
    with pytest.raises(KeyError, match="no pending timer 'reminder'; pending: none"):
        await chat.fire("reminder")
    assert "no conversation" in repr(chat)


def test_the_harness_loads_no_database_or_server() -> None:
    code = "import sys, smsbot.testing.harness; print(sorted(sys.modules))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "sqlalchemy" not in loaded and "aiohttp" not in loaded


def test_the_docs_example_runs(tmp_path: Path) -> None:
    """docs/testing-flows.md's harness example, run as written against the example flows."""
    docs = (REPO / "docs" / "testing-flows.md").read_text(encoding="utf-8")
    marker = "<!-- the harness example, run by tests/test_harness.py -->"
    block = re.search(re.escape(marker) + r"\n```python\n(.*?)```", docs, re.DOTALL)
    assert block is not None, f"docs/testing-flows.md lost the marker {marker!r}"
    test_file = tmp_path / "test_example.py"
    test_file.write_text(textwrap.dedent(block[1]))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "asyncio_mode=auto",
            "--rootdir",
            str(REPO),
            str(test_file),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"\b\d+ passed\b", out.stdout), out.stdout
