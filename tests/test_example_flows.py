"""Transcripts of the example flows (flows/appointment.py, flows/keywords.py), branch by branch."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from smsbot.engine.contract import EventKind, Origin
from smsbot.engine.flow import FlowError
from tests.test_flow_api import NOW, Chat, make_runtime

STARTS_AT = dt.datetime(2026, 1, 20, 10, 30, tzinfo=dt.UTC)  # Tuesday, five days after NOW
DATA = {"name": "Sam", "starts_at": STARTS_AT.isoformat(), "location": "Riverside Clinic"}

ASK = (
    "Hi Sam, your appointment at Riverside Clinic is on Tue 20 Jan at 10:30. Reply YES to"
    " confirm, NO to cancel or RESCHEDULE to change it."
)
UNCLEAR = (
    "Sorry, we did not understand. Please reply YES to confirm your appointment on Tue 20 Jan"
    " at 10:30, NO to cancel, or RESCHEDULE to change it."
)
CONFIRMED = (
    "Thanks Sam, you're booked for Tue 20 Jan at 10:30 at Riverside Clinic. Reply CANCEL if you"
    " can't make it."
)
CANCELLED = "Your appointment on Tue 20 Jan at 10:30 is cancelled. Reply STOP to stop all messages."
HANDOVER = "Thanks Sam. Someone from our team will call you shortly to sort out your appointment."
REMINDER = (
    "Reminder: Sam, your appointment is on Tue 20 Jan at 10:30 at Riverside Clinic. See you then!"
)
NUDGE = (
    "Sam, we haven't heard back about your appointment on Tue 20 Jan at 10:30. Please reply YES"
    " to confirm or NO to cancel."
)
HOURS = "We're open Monday to Friday 08:00-18:00 and Saturday 09:00-13:00."
MENU = "Sorry, I didn't understand. Reply HOURS, ADDRESS, PARKING or PHONE."


async def started(**data: Any) -> Chat:
    chat = Chat(make_runtime())
    result = await chat.start("appointment", {**DATA, **data})
    expected = ASK if not data else ASK.split(" is on ")[0]
    assert [r.origin for r in result.replies] == [Origin.FLOW]
    assert result.replies[0].text.startswith(expected)
    assert result.state == "waiting"
    assert chat.timers["timeout:waiting"].due_at == NOW + dt.timedelta(hours=48)
    return chat


# --- appointment ----------------------------------------------------------------------------


@pytest.mark.parametrize("answer", ["YES", "y.", "Yes please!", "confirm"])
async def test_confirm_schedules_the_reminder_the_day_before(answer: str) -> None:
    chat = await started()
    assert await chat.send(answer) == [CONFIRMED]
    assert chat.snap.state == "confirmed"
    assert chat.timers["reminder"].due_at == STARTS_AT - dt.timedelta(days=1)
    assert "timeout:waiting" not in chat.timers
    result = await chat.fire("reminder")
    assert [(r.text, r.origin) for r in result.replies] == [(REMINDER, Origin.REMINDER)]


async def test_reminder_lead_time_comes_from_the_data() -> None:
    chat = await started(remind_before_minutes=90)
    await chat.send("yes")
    assert chat.timers["reminder"].due_at == STARTS_AT - dt.timedelta(minutes=90)


async def test_no_reminder_when_it_would_already_be_past() -> None:
    chat = await started(starts_at=(NOW + dt.timedelta(hours=12)).isoformat())
    await chat.send("yes")
    assert "reminder" not in chat.timers and chat.snap.state == "confirmed"


async def test_the_reminder_outlives_the_conversation() -> None:
    chat = await started()
    await chat.send("yes")
    result = await chat.fire("expiry")  # a week of silence ends the conversation
    assert result.flow is None and result.end_reason == "expired"
    assert "reminder" in chat.timers


async def test_the_reminder_waits_for_quiet_hours_to_end() -> None:
    chat = Chat(make_runtime(quiet_hours="21:00-10:00"))
    await chat.start("appointment", DATA)
    await chat.send("yes")
    result = await chat.fire("reminder")  # due at 10:30 the day before: outside quiet hours
    assert result.replies[0].send_after is None
    chat = Chat(make_runtime(quiet_hours="21:00-11:00"))
    await chat.start("appointment", DATA)
    await chat.send("yes")
    result = await chat.fire("reminder")
    assert result.replies[0].send_after == dt.datetime(2026, 1, 19, 11, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize("answer", ["NO", "n", "Cancel"])
async def test_no_cancels(answer: str) -> None:
    chat = await started()
    result = await chat.step(EventKind.INBOUND, {"body": answer})
    assert [r.text for r in result.replies] == [CANCELLED]
    assert result.flow is None and result.end_reason == "completed" and result.opt_out is None
    assert chat.timers == {}


async def test_cancel_after_confirming_cancels_the_reminder() -> None:
    chat = await started()
    await chat.send("yes")
    result = await chat.step(EventKind.INBOUND, {"body": "cancel"})
    assert [r.text for r in result.replies] == [CANCELLED]
    assert "reminder" in result.cancel_timers and "reminder" not in chat.timers


@pytest.mark.parametrize("answer", ["RESCHEDULE", "Re-book please", "Change the time?"])
async def test_reschedule_hands_over(answer: str) -> None:
    chat = await started()
    assert await chat.send(answer) == [HANDOVER]
    assert chat.snap.flow is None and chat.user_data["handover"] == "reschedule"


async def test_unclear_answers_are_re_asked_twice_then_handed_over() -> None:
    chat = await started()
    assert await chat.send("what?") == [UNCLEAR]
    assert await chat.send("who is this") == [UNCLEAR]
    assert chat.snap.state == "waiting"
    assert await chat.send("hmm") == [HANDOVER]
    assert chat.user_data["handover"] == "unclear" and chat.snap.flow is None


async def test_no_answer_gets_one_nudge_then_staff() -> None:
    chat = await started(starts_at=(NOW + dt.timedelta(days=10)).isoformat())
    result = await chat.fire("timeout:waiting")
    assert [r.origin for r in result.replies] == [Origin.FLOW]
    assert "we haven't heard back" in result.replies[0].text
    assert result.state == "waiting" and result.state_entered
    assert chat.timers["timeout:waiting"].due_at == chat.now + dt.timedelta(hours=48)
    result = await chat.fire("timeout:waiting")
    assert result.replies == [] and result.flow is None
    assert chat.user_data["handover"] == "no answer"


async def test_no_nudge_close_to_the_appointment() -> None:
    chat = await started(starts_at=(NOW + dt.timedelta(hours=49)).isoformat())
    result = await chat.fire("timeout:waiting")
    assert result.replies == [] and chat.user_data["handover"] == "no answer"


async def test_nudge_text() -> None:
    chat = await started()
    result = await chat.fire("timeout:waiting")
    assert [r.text for r in result.replies] == [NUDGE]


@pytest.mark.parametrize(
    ("starts_at", "message"),
    [
        ("next tuesday", "ISO 8601 with a UTC offset"),
        ("2026-01-20T10:30:00", "ISO 8601 with a UTC offset"),  # no offset: whose 10:30?
        ("2026-01-01T10:30:00+00:00", "has passed"),
    ],
)
async def test_bad_start_data(starts_at: str, message: str) -> None:
    chat = Chat(make_runtime())
    with pytest.raises(FlowError, match=message):
        await chat.start("appointment", {**DATA, "starts_at": starts_at})


async def test_keywords_still_answered_while_waiting() -> None:
    chat = await started()
    assert await chat.send("hours") == [HOURS]
    assert chat.snap.state == "waiting"
    assert await chat.send("yes") == [CONFIRMED]


# --- keywords -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reply"),
    [
        ("HOURS", HOURS),
        ("hours?", HOURS),
        ("Address please", "Riverside Clinic, 12 Mill Lane, Bristol BS1 4QA."),
        ("parking!", "Free parking behind the clinic, entrance on Mill Lane."),
        ("phone", "Call us on 0117 496 0000, Monday to Friday 08:00-18:00."),
        ("what are your hours", MENU),  # keywords match the whole message or its first word
        ("hello", MENU),
        ("stop texting me", MENU + "\nReply STOP to opt out."),
    ],
)
async def test_keyword_replies(body: str, reply: str) -> None:
    chat = Chat(make_runtime())
    result = await chat.step(EventKind.INBOUND, {"body": body})
    assert [(r.text, r.origin) for r in result.replies] == [(reply, Origin.REPLY)]
    # an answer, not a conversation: nothing is stored and nothing scheduled
    assert result.flow is None and result.timers == [] and result.data == {}


async def test_keywords_started_from_outside_send_the_menu() -> None:
    chat = Chat(make_runtime())
    result = await chat.start("keywords")
    assert [(r.text, r.origin) for r in result.replies] == [(MENU, Origin.FLOW)]


def test_start_data_is_checked_before_queueing() -> None:
    flow = make_runtime().flows["appointment"]
    assert flow.parse_start_data(DATA, now=NOW) == DATA
    with pytest.raises(ValueError, match=r"data\.location is required"):
        flow.parse_start_data({"name": "Sam", "starts_at": DATA["starts_at"]}, now=NOW)
    with pytest.raises(ValueError, match="UTC offset"):
        flow.parse_start_data({**DATA, "starts_at": "2026-01-20 10:30"}, now=NOW)
