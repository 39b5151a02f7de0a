"""What flow authors rely on, through the real pipeline (the kit's BotDriver): issue 12.

A survey written as a new user would write it, next to the example keywords flow (HOURS,
PARKING, ...): free-text answers are not taken by keyword triggers, a flow's own trigger does
not restart it, a wait timeout counts from when its question goes out (quiet hours, DST), the
state a conversation ended in is kept, and a step that cannot succeed is parked at once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import shutil
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest
from sqlalchemy import select

from smsbot.store.models import conversations_t, events_t
from smsbot.testing import BotDriver, StepFailedError, driver_settings

REPO = Path(__file__).resolve().parents[1]
UTC = dt.UTC
NOW = dt.datetime(2026, 1, 15, 9, 0, tzinfo=UTC)
QUIET = {"SMSBOT_QUIET_HOURS": "21:00-08:00"}
HOURS = "We're open Monday to Friday 08:00-18:00 and Saturday 09:00-13:00."

SURVEY = '''\
"""A short survey: a rating, then anything else the patient wants to say."""

from datetime import timedelta

from smsbot import Conversation, Flow, Message, State


class Survey(Flow):
    """Ask for a rating from 1 to 5, then for a comment in the patient's own words."""

    name = "survey"
    triggers = ("SURVEY",)
    restart_on_trigger = RESTART

    rating = State(initial=True, timeout=timedelta(hours=1))
    anything_else = State(free_text=True, timeout=timedelta(hours=1))
    done = State(final=True)
    abandoned = State(final=True)

    async def start(self, convo: Conversation) -> State | None:
        await convo.say("How was your visit, from 1 to 5?")
        return None

    @rating.matches(r"^[1-5]$")
    async def rated(self, convo: Conversation, msg: Message) -> State | None:
        convo.data["rating"] = int(msg.normalized)
        await convo.say("Anything else you'd like to tell us?")
        return self.anything_else

    @rating.on("LATER")
    async def later(self, convo: Conversation, msg: Message) -> State | None:
        await convo.say("No problem, I'll wait another hour.")
        return convo.current_state  # re-enter: the hour starts again

    @rating.otherwise
    async def not_a_rating(self, convo: Conversation, msg: Message) -> State | None:
        await convo.say("Please answer with a number from 1 to 5.")
        return None

    @anything_else.otherwise
    async def comment(self, convo: Conversation, msg: Message) -> State | None:
        convo.data["comment"] = msg.text
        await convo.say("Thank you!")
        return self.done

    @rating.on_timeout
    @anything_else.on_timeout
    async def gave_up(self, convo: Conversation) -> State | None:
        return self.abandoned
'''

BROKEN = '''\
"""A flow that fails in the ways a step can: data["case"] says which."""

from smsbot import Conversation, Flow, FlowError, State

FLAKY = [ConnectionError("the booking system did not answer")]  # fails once, then works


class Broken(Flow):
    name = "broken"
    waiting = State(initial=True)  # not final: the conversation, and its data, are kept

    async def start(self, convo: Conversation) -> State | None:
        case = convo.data["case"]
        if case == "template":
            await convo.reply("broken/undefined.txt")
        elif case == "flow_error":
            raise FlowError("broken: the clinic has no slots left; offer another clinic")
        elif case == "datetime":
            convo.data["when"] = convo.now
        elif case == "nan":
            convo.data["score"] = float("nan")
        elif case == "transient" and FLAKY:
            raise FLAKY.pop()
        await convo.say("done")
        return None
'''


def survey_project(root: Path, *, restart: bool = False) -> Path:
    """The example keywords flow and its templates, the survey and the broken flow."""
    (root / "flows").mkdir(parents=True)
    for name in ("keywords.py", "keywords.toml"):
        shutil.copy(REPO / "flows" / name, root / "flows" / name)
    shutil.copytree(REPO / "templates" / "keywords", root / "templates" / "keywords")
    survey = SURVEY.replace("RESTART", str(restart))
    (root / "flows" / "survey.py").write_text(survey, encoding="utf-8")
    (root / "flows" / "broken.py").write_text(BROKEN, encoding="utf-8")
    (root / "templates" / "broken").mkdir()
    (root / "templates" / "broken" / "undefined.txt").write_text("Hi {{ nme }}\n")
    return root


@contextlib.asynccontextmanager
async def survey_bot(
    tmp_path: Path,
    *,
    now: dt.datetime = NOW,
    settings: Mapping[str, str] | None = None,
    restart: bool = False,
) -> AsyncIterator[BotDriver]:
    """A BotDriver over the survey project on a fresh SQLite database."""
    project = survey_project(tmp_path / "project", restart=restart)
    database = f"sqlite+aiosqlite:///{tmp_path / 'survey.db'}"
    async with BotDriver(driver_settings(project, database, settings), now=now) as bot:
        yield bot


async def rated(bot: BotDriver) -> None:
    """Text SURVEY, answer 4, check the second question."""
    await bot.send("SURVEY")
    bot.expect_reply(equals="How was your visit, from 1 to 5?")
    await bot.send("4")
    bot.expect_reply(equals="Anything else you'd like to tell us?")


# --- 1. free text, and a flow's own trigger ------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        "Hours are too short on Saturdays",  # HOURS is a keyword of the keywords flow
        "Parking was a nightmare",  # PARKING too (flows/keywords.toml)
        "Survey was fine",  # SURVEY is this flow's own trigger
    ],
)
async def test_a_free_text_answer_is_the_states_whatever_it_starts_with(
    tmp_path: Path, answer: str
) -> None:
    async with survey_bot(tmp_path) as bot:
        await rated(bot)
        await bot.send(answer)
        bot.expect_reply(equals="Thank you!")
        bot.expect_no_reply()
        convo = bot.conversation()
        assert convo.data == {"rating": 4, "comment": answer}
        assert (convo.active, convo.end_state) == (False, "done")


async def test_compliance_words_still_get_past_a_free_text_question(tmp_path: Path) -> None:
    async with survey_bot(tmp_path) as bot:
        await rated(bot)
        await bot.send("help")
        bot.expect_reply(contains="Reply STOP to unsubscribe")
        assert bot.conversation().state == "anything_else"
        await bot.send("Stop")
        bot.expect_reply(contains="unsubscribed")
        convo = bot.conversation()
        assert convo.opted_out and "comment" not in convo.data


async def test_outside_free_text_a_keyword_is_still_answered_beside_the_question(
    tmp_path: Path,
) -> None:
    async with survey_bot(tmp_path) as bot:
        await bot.send("SURVEY")
        bot.expect_reply(equals="How was your visit, from 1 to 5?")
        await bot.send("hours?")
        bot.expect_reply(equals=HOURS)
        assert bot.conversation().state == "rating"


async def test_the_flows_own_trigger_is_an_answer_not_a_restart(tmp_path: Path) -> None:
    async with survey_bot(tmp_path) as bot:
        await bot.send("SURVEY")
        bot.expect_reply(equals="How was your visit, from 1 to 5?")
        await bot.advance(minutes=30)
        await bot.send("survey?")
        bot.expect_reply(equals="Please answer with a number from 1 to 5.")
        bot.expect_no_reply()
        # not restarted: the hour still counts from the question
        assert bot.conversation().timers["timeout:rating"] == NOW + dt.timedelta(hours=1)


async def test_a_flow_may_ask_for_its_trigger_to_restart_it(tmp_path: Path) -> None:
    async with survey_bot(tmp_path, restart=True) as bot:
        await bot.send("SURVEY")
        bot.expect_reply(equals="How was your visit, from 1 to 5?")
        await bot.advance(minutes=30)
        await bot.send("survey")
        bot.expect_reply(equals="How was your visit, from 1 to 5?")
        convo = bot.conversation()
        assert convo.timers["timeout:rating"] == NOW + dt.timedelta(hours=1, minutes=30)
        assert convo.end_reason is None and convo.end_state is None  # a new run
        async with bot.bot.db.session() as s:
            started = (await s.execute(select(conversations_t.c.started_at))).scalar_one()
        assert started == NOW + dt.timedelta(minutes=30)


# --- 2. a wait timeout counts from when its question goes out ------------------------------


def _night(started: dt.datetime, sent: dt.datetime, name: str) -> object:
    return pytest.param(started, sent, id=name)


NIGHTS = [
    # 22:30 GMT; the question goes at 08:00 GMT
    _night(
        dt.datetime(2026, 1, 15, 22, 30, tzinfo=UTC),
        dt.datetime(2026, 1, 16, 8, 0, tzinfo=UTC),
        "winter",
    ),
    # 22:30 GMT on Sat 28 Mar 2026; clocks go forward at 01:00 UTC; 08:00 BST is 07:00 UTC
    _night(
        dt.datetime(2026, 3, 28, 22, 30, tzinfo=UTC),
        dt.datetime(2026, 3, 29, 7, 0, tzinfo=UTC),
        "spring-forward",
    ),
    # 22:30 BST on Sat 24 Oct 2026 is 21:30 UTC; clocks go back; 08:00 GMT is 08:00 UTC
    _night(
        dt.datetime(2026, 10, 24, 21, 30, tzinfo=UTC),
        dt.datetime(2026, 10, 25, 8, 0, tzinfo=UTC),
        "fall-back",
    ),
]


@pytest.mark.parametrize(("started", "sent"), NIGHTS)
async def test_a_question_held_by_quiet_hours_gets_its_full_hour(
    tmp_path: Path, started: dt.datetime, sent: dt.datetime
) -> None:
    async with survey_bot(tmp_path, now=started, settings=QUIET) as bot:
        await bot.start("survey")  # from outside at 22:30 local: held until 08:00 local
        bot.expect_no_reply()
        assert bot.conversation().timers["timeout:rating"] == sent + dt.timedelta(hours=1)
        await bot.advance(until=sent)
        assert bot.expect_reply(equals="How was your visit, from 1 to 5?").at == sent
        await bot.advance(minutes=5)
        await bot.send("5")  # 08:05 local: still the question's hour
        bot.expect_reply(equals="Anything else you'd like to tell us?")
        assert bot.conversation().data == {"rating": 5}


@pytest.mark.parametrize(("started", "sent"), NIGHTS)
async def test_unanswered_it_times_out_an_hour_after_it_went_out(
    tmp_path: Path, started: dt.datetime, sent: dt.datetime
) -> None:
    async with survey_bot(tmp_path, now=started, settings=QUIET) as bot:
        await bot.start("survey")
        await bot.advance(until=sent + dt.timedelta(minutes=59))
        bot.expect_reply(equals="How was your visit, from 1 to 5?")
        assert bot.conversation().active
        await bot.advance(minutes=1)
        convo = bot.conversation()
        assert not convo.active
        assert (convo.end_state, convo.end_reason) == ("abandoned", "completed")


async def test_a_question_sent_at_once_counts_from_now(tmp_path: Path) -> None:
    async with survey_bot(tmp_path, settings=QUIET) as bot:  # 09:00: outside quiet hours
        await bot.start("survey")
        assert bot.expect_reply().at == NOW
        assert bot.conversation().timers["timeout:rating"] == NOW + dt.timedelta(hours=1)


# --- 3. the outcome survives the end -------------------------------------------------------


async def test_the_state_a_conversation_ended_in_is_kept(tmp_path: Path) -> None:
    async with survey_bot(tmp_path) as bot:
        await rated(bot)
        await bot.advance(hours=1)
        abandoned = bot.conversation()
        await rated(bot)
        assert bot.conversation().end_state is None  # running again
        await bot.send("All good")
        bot.expect_reply(equals="Thank you!")
        done = bot.conversation()
    assert (abandoned.end_state, abandoned.end_reason) == ("abandoned", "completed")
    assert (done.end_state, done.end_reason) == ("done", "completed")
    assert (abandoned.state, done.state) == (None, None)


# --- 4. a step that cannot succeed is parked at once ---------------------------------------


async def _starts(bot: BotDriver) -> list[tuple[str, int]]:
    """(state, attempts) of every START event in the inbox."""
    query = select(events_t.c.state, events_t.c.attempts).where(events_t.c.kind == "start")
    async with bot.bot.db.session() as s:
        return [(state, attempts) for state, attempts in (await s.execute(query)).all()]


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("template", "TemplateError: template 'broken/undefined.txt'"),
        ("flow_error", "FlowError: broken: the clinic has no slots left"),
        ("datetime", "FlowError: convo.data left by flow 'broken' must be JSON"),
        ("nan", "FlowError: convo.data left by flow 'broken' must be JSON"),
    ],
)
async def test_an_error_a_retry_cannot_fix_is_parked_at_once_with_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str, error: str
) -> None:
    async with survey_bot(tmp_path) as bot:
        with caplog.at_level(logging.INFO, logger="smsbot"), pytest.raises(StepFailedError):
            await bot.start("broken", data={"case": case})
        await bot.advance(minutes=1)  # past every backoff: nothing runs it again
        assert await _starts(bot) == [("failed", 1)]
        bot.expect_no_reply()
    [line] = [r for r in caplog.records if "parked" in r.getMessage()]
    assert error in line.getMessage() and "a retry cannot help" in line.getMessage()
    assert line.levelno == logging.ERROR and line.exc_info is None  # no traceback
    assert [r for r in caplog.records if r.exc_info] == []


async def test_a_transient_error_is_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with survey_bot(tmp_path) as bot:
        with caplog.at_level(logging.INFO, logger="smsbot"), pytest.raises(StepFailedError):
            await bot.start("broken", data={"case": "transient"})
        assert await _starts(bot) == [("pending", 1)]
        await bot.advance(dt.timedelta(seconds=1))  # the first backoff
        bot.expect_reply(equals="done")
        assert await _starts(bot) == [("done", 1)]
    [line] = [r for r in caplog.records if "ConnectionError" in r.getMessage()]
    assert "attempt 1/5, retrying in 0:00:01" in line.getMessage()
    assert line.levelno == logging.WARNING and line.exc_info is None


# --- 5. convo.current_state ----------------------------------------------------------------


async def test_returning_the_current_state_re_enters_it_and_restarts_its_timeout(
    tmp_path: Path,
) -> None:
    async with survey_bot(tmp_path) as bot:
        await bot.send("SURVEY")
        bot.expect_reply()
        await bot.advance(minutes=50)
        await bot.send("later")
        bot.expect_reply(equals="No problem, I'll wait another hour.")
        later = NOW + dt.timedelta(minutes=50)
        assert bot.conversation().timers["timeout:rating"] == later + dt.timedelta(hours=1)
        await bot.advance(minutes=59)
        assert bot.conversation().state == "rating"
        await bot.send("3")
        bot.expect_reply(equals="Anything else you'd like to tell us?")
