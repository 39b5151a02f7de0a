"""The test kit itself (smsbot.testing): expectations, transcripts, time, settings, the plugin."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from smsbot.testing import (
    DEFAULT_NOW,
    BotDriver,
    StartRefusedError,
    StepFailedError,
    driver_settings,
)

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]
STARTS_AT = dt.datetime(2026, 1, 20, 10, 30, tzinfo=dt.UTC)
SAM = {"name": "Sam", "starts_at": STARTS_AT.isoformat(), "location": "Riverside Clinic"}
ASK = (
    "Hi Sam, your appointment at Riverside Clinic is on Tue 20 Jan at 10:30. Reply YES to"
    " confirm, NO to cancel or RESCHEDULE to change it."
)
HOURS = "We're open Monday to Friday 08:00-18:00 and Saturday 09:00-13:00."
OTHER = "+447700900456"


# --- expectations ------------------------------------------------------------------------------


async def test_replies_are_checked_off_in_order_with_what_the_provider_got(
    bot: BotDriver,
) -> None:
    await bot.start("appointment", data=SAM)
    await bot.send("hours")
    ask = bot.expect_reply(equals=ASK)
    assert (ask.to, ask.sender, ask.at) == ("+447700900123", "+447700900100", DEFAULT_NOW)
    assert (ask.encoding, ask.segments) == ("GSM-7", 1)
    bot.expect_reply(matches=r"^We're open .* 09:00-13:00\.$")
    bot.expect_no_reply()
    assert [r.text for r in bot.replies] == [ASK, HOURS]  # checked or not


async def test_a_failed_expectation_shows_the_conversation_so_far(bot: BotDriver) -> None:
    await bot.start("appointment", data=SAM)
    bot.expect_reply(contains="Hi Sam")
    await bot.advance(minutes=2)
    await bot.send("yes please")
    with pytest.raises(AssertionError) as failed:
        bot.expect_reply(contains="cancelled")
    message = str(failed.value)
    assert message.startswith("expected a reply containing 'cancelled'\n")
    assert (
        "Thu 15 Jan 2026 (UTC)\n"
        f"09:00  ▶ appointment started for +447700900123  {json.dumps(SAM)}\n"
        f"09:00  → +447700900123  {ASK}  [GSM-7, 1 seg]\n"
        "09:00  ⋯ advance 2m, to Thu 15 Jan 09:02\n"
        "09:02  ← +447700900123  yes please\n"
        "09:02  → +447700900123  Thanks Sam, you're booked for Tue 20 Jan at 10:30 at Riverside"
        " Clinic. Reply CANCEL if you can't make it.  [GSM-7, 1 seg]   <-- this one\n"
        "expected a reply containing 'cancelled', got: \"Thanks Sam, you're booked"
    ) in message
    assert message.endswith("  (09:02 to +447700900123)")
    bot.expect_reply(contains="booked")  # a failed expectation checks nothing off


async def test_expect_no_reply_names_what_was_not_checked(bot: BotDriver) -> None:
    await bot.send("stop texting me")
    await bot.send("hours")
    with pytest.raises(AssertionError) as failed:
        bot.expect_no_reply()
    message = str(failed.value)
    # a multi-line SMS keeps its lines under its text
    assert "  → +447700900123  Sorry, I didn't understand." in message
    under = " " * len("09:00  → +447700900123  ")
    assert f"\n{under}Reply STOP to opt out.  [GSM-7, 1 seg]   <-- this one\n" in message
    assert message.endswith("(09:00 to +447700900123) and 1 more")
    with pytest.raises(AssertionError, match="expected a reply equal to 'nope', got: "):
        bot.expect_reply(equals="nope")


async def test_expecting_a_reply_when_there_is_none(bot: BotDriver) -> None:
    with pytest.raises(AssertionError) as failed:
        bot.expect_reply(contains="Hi")
    assert str(failed.value) == (
        "expected a reply containing 'Hi'\n"
        "(nothing sent or received yet)\n"
        "expected a reply containing 'Hi', got no reply"
    )


async def test_two_phones_each_with_their_own_replies(bot: BotDriver) -> None:
    await bot.start("appointment", to="07700 900123", data=SAM)
    await bot.send("hours", from_=OTHER)  # from now on the default phone is OTHER
    bot.expect_reply(equals=HOURS, to=OTHER)
    bot.expect_no_reply(to=OTHER)
    with pytest.raises(AssertionError, match="expected no reply to \\+447700900123"):
        bot.expect_no_reply(to="07700 900123")
    bot.expect_reply(equals=ASK, to="+447700900123")
    assert bot.conversation().flow is None  # OTHER's: a keyword answer is no conversation
    assert bot.conversation("07700900123").state == "waiting"


# --- the bot and the clock ---------------------------------------------------------------------


async def test_advance_fires_each_timer_at_its_own_time(bot: BotDriver) -> None:
    await bot.start("appointment", data=SAM)
    await bot.send("yes")
    bot.expect_reply(equals=ASK)
    bot.expect_reply(contains="booked")
    # One jump of ten days: the reminder still goes out at 10:30 the day before (not 6 hours
    # late, which SMSBOT_REMINDER_MAX_LATENESS would call missed), and the expiry runs after.
    await bot.advance(days=10)
    reminder = bot.expect_reply(contains="Reminder: Sam")
    assert reminder.at == STARTS_AT - dt.timedelta(days=1)
    assert bot.clock.now() == DEFAULT_NOW + dt.timedelta(days=10)
    convo = bot.conversation()
    assert (convo.active, convo.end_reason, convo.timers) == (False, "expired", {})


async def test_advance_takes_a_timedelta_or_a_time(bot: BotDriver) -> None:
    await bot.advance(dt.timedelta(hours=1), minutes=30)
    assert bot.clock.now() == DEFAULT_NOW + dt.timedelta(hours=1, minutes=30)
    await bot.advance(until=DEFAULT_NOW + dt.timedelta(days=1))
    assert bot.clock.now() == DEFAULT_NOW + dt.timedelta(days=1)
    with pytest.raises(ValueError, match="never moves back"):
        await bot.advance(until=DEFAULT_NOW)
    with pytest.raises(ValueError, match="aware"):
        await bot.advance(until=dt.datetime(2026, 2, 1))  # naive: the point of the test


QUIET = {"SMSBOT_QUIET_HOURS": "21:00-08:00"}
LATE = dt.datetime(2026, 1, 15, 22, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(("smsbot_settings", "smsbot_now"), [(QUIET, LATE)])
async def test_quiet_hours_hold_a_start_until_morning(bot: BotDriver) -> None:
    await bot.start("appointment", data=SAM)
    bot.expect_no_reply()  # 22:00 in London: the question waits
    await bot.send("hours")  # a direct answer is not held back
    bot.expect_reply(equals=HOURS)
    await bot.advance(hours=9, minutes=59)
    bot.expect_no_reply()
    await bot.advance(minutes=1)
    ask = bot.expect_reply(equals=ASK)
    assert ask.at == dt.datetime(2026, 1, 16, 8, 0, tzinfo=dt.UTC)


async def test_a_flow_that_raises_fails_the_test_with_the_error(bot: BotDriver) -> None:
    await bot.start("appointment", data=SAM)
    bot.expect_reply(equals=ASK)
    with pytest.raises(StepFailedError) as failed:  # a running conversation refuses it
        await bot.start("appointment", data=SAM, policy="reject")
    assert str(failed.value).startswith("start event #")  # its id: receipts are events too
    assert " for +447700900123 failed (attempt 1):" in str(failed.value)
    assert "FlowStartRejectedError: flow 'appointment' not started" in str(failed.value)


async def test_a_refused_start_says_why(bot: BotDriver) -> None:
    with pytest.raises(StartRefusedError, match="no flow named 'nope'") as refused:
        await bot.start("nope")
    assert refused.value.status == 404
    with pytest.raises(StartRefusedError, match="UTC offset") as refused:
        await bot.start("appointment", data={**SAM, "starts_at": "2026-01-20 10:30"})
    assert refused.value.status == 400
    bot.expect_no_reply()


# --- settings and projects ---------------------------------------------------------------------

ECHO = '''\
"""Answer anything with what was said."""

from smsbot import Conversation, Flow, State


class Echo(Flow):
    """Say the message back."""

    name = "echo"
    done = State(initial=True, final=True)

    async def start(self, convo: Conversation) -> State | None:
        await convo.say(convo.message.text if convo.message else "hello")
        return None
'''


def echo_project(root: Path) -> Path:
    """A project of its own: one flow, no templates, an smsbot.toml making it the catch-all."""
    (root / "flows").mkdir(parents=True)
    (root / "templates").mkdir()
    (root / "flows" / "echo.py").write_text(ECHO, encoding="utf-8")
    (root / "smsbot.toml").write_text(
        '[numbers."+447700900100"]\ncatch_all = "echo"\n', encoding="utf-8"
    )
    return root


@pytest.fixture
async def echo(tmp_path: Path) -> AsyncIterator[BotDriver]:
    """A BotDriver made by hand (no `bot` fixture) over the echo project."""
    project = echo_project(tmp_path / "project")
    settings = driver_settings(project, f"sqlite+aiosqlite:///{tmp_path / 'echo.db'}")
    async with BotDriver(settings, now=LATE, phone="07700 900456") as driver:
        yield driver


async def test_a_driver_made_by_hand_reads_the_projects_smsbot_toml(echo: BotDriver) -> None:
    await echo.send("Café ☕ at 10?")
    reply = echo.expect_reply(equals="Café ☕ at 10?", to=OTHER)
    assert (reply.encoding, reply.segments, reply.at) == ("UCS-2", 1, LATE)
    await echo.send("x" * 161)
    assert echo.expect_reply().segments == 2


def test_the_kit_ignores_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # os.environ may point at a real database or provider; the kit never reads it.
    monkeypatch.setenv("SMSBOT_DATABASE_URL", "postgresql://prod.example.com/smsbot")
    monkeypatch.setenv("SMSBOT_QUIET_HOURS", "21:00-08:00")
    settings = driver_settings(REPO, f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    assert (settings.provider, settings.quiet_hours) == ("sandbox", "")
    assert settings.database_url.startswith("sqlite")
    assert settings.flows_dir == REPO / "flows"
    with pytest.raises(Exception, match="SMSBOT_QUIET_HOUR"):
        driver_settings(REPO, "sqlite:///x.db", {"SMSBOT_QUIET_HOUR": "21:00-08:00"})


@pytest.mark.postgres
async def test_the_kit_on_postgresql(pg_database: str, tmp_path: Path) -> None:
    settings = driver_settings(REPO, pg_database)
    async with BotDriver(settings) as bot:
        await bot.start("appointment", data=SAM)
        await bot.send("yes")
        bot.expect_reply(equals=ASK)
        bot.expect_reply(contains="booked")
        await bot.advance(days=5)
        bot.expect_reply(contains="Reminder: Sam")


def test_the_docs_example_is_the_start_of_test_appointment_kit() -> None:
    docs = (REPO / "docs" / "testing-flows.md").read_text(encoding="utf-8")
    marker = "<!-- the start of tests/test_appointment_kit.py, checked by a test -->"
    after = docs.split(marker, 1)[1]
    example = re.search(r"```python\n(.*?)```", after, re.DOTALL)
    assert example is not None
    tests = (REPO / "tests" / "test_appointment_kit.py").read_text(encoding="utf-8")
    assert tests.startswith(example.group(1))


def test_loading_the_plugin_imports_nothing_heavy() -> None:
    code = (
        "import sys, smsbot.testing.plugin; "
        "print(sorted(m for m in ('aiohttp', 'smsbot.pipeline.bot', 'smsbot.testing.driver') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert out.stdout.strip() == "[]"


def test_a_project_with_no_conftest_gets_the_fixture(pytester: pytest.Pytester) -> None:
    echo_project(pytester.path / "bot")
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
        "filterwarnings = error\nsmsbot_project = bot\n"
    )
    pytester.makepyfile(
        test_echo=textwrap.dedent(
            """
            async def test_echo(bot):
                await bot.send("hello")
                bot.expect_reply(equals="hello")

            async def test_failure(bot):
                await bot.send("hello")
                bot.expect_reply(equals="goodbye")
            """
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*09:00  ← +447700900123  hello",
            "*09:00  → +447700900123  hello  [[]GSM-7, 1 seg[]]   <-- this one",
            "*expected a reply equal to 'goodbye', got: 'hello'  (09:00 to +447700900123)",
        ]
    )
