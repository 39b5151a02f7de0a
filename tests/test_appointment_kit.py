"""Tests for flows/appointment.py, written with smsbot's pytest kit (docs/testing-flows.md)."""

from __future__ import annotations

import datetime as dt

import pytest

from smsbot.testing import BotDriver, StartRefusedError

# The kit's clock starts on Thursday 15 January 2026 at 09:00 UTC.
STARTS_AT = dt.datetime(2026, 1, 20, 10, 30, tzinfo=dt.UTC)  # the next Tuesday
SAM = {"name": "Sam", "starts_at": STARTS_AT.isoformat(), "location": "Riverside Clinic"}


async def test_confirming_brings_a_reminder_the_day_before(bot: BotDriver) -> None:
    await bot.start("appointment", to="07700 900123", data=SAM)
    bot.expect_reply(contains="Reply YES to confirm")

    await bot.send("yes please")  # from the same phone
    bot.expect_reply(
        equals="Thanks Sam, you're booked for Tue 20 Jan at 10:30 at Riverside Clinic."
        " Reply CANCEL if you can't make it."
    )
    assert bot.conversation().state == "confirmed"

    await bot.advance(until=STARTS_AT - dt.timedelta(days=1, minutes=1))
    bot.expect_no_reply()
    await bot.advance(minutes=1)
    reminder = bot.expect_reply(contains="Reminder: Sam")
    assert reminder.at == STARTS_AT - dt.timedelta(days=1)


@pytest.mark.parametrize("answer", ["NO", "n", "Cancel"])
async def test_no_cancels_and_nothing_more_is_sent(bot: BotDriver, answer: str) -> None:
    await bot.start("appointment", data=SAM)
    bot.expect_reply(contains="Reply YES to confirm")
    await bot.send(answer)
    bot.expect_reply(contains="is cancelled")
    assert not bot.conversation().active
    await bot.advance(days=7)
    bot.expect_no_reply()


async def test_a_start_without_a_location_is_refused(bot: BotDriver) -> None:
    with pytest.raises(StartRefusedError, match="location"):
        await bot.start("appointment", data={"name": "Sam", "starts_at": SAM["starts_at"]})


# --- every other branch of flows/appointment.py, then flows/keywords.py ------------------------
# The example above (copied into docs/testing-flows.md) covers confirming and NO; these cover the
# rest. Texts are checked in full where the wording is the point, by a phrase elsewhere.

NOW = dt.datetime(2026, 1, 15, 9, 0, tzinfo=dt.UTC)
REMINDER_AT = STARTS_AT - dt.timedelta(days=1)
CANCELLED = "Your appointment on Tue 20 Jan at 10:30 is cancelled. Reply STOP to stop all messages."
HANDOVER = "Thanks Sam. Someone from our team will call you shortly to sort out your appointment."
UNCLEAR = (
    "Sorry, we did not understand. Please reply YES to confirm your appointment on Tue 20 Jan"
    " at 10:30, NO to cancel, or RESCHEDULE to change it."
)
NUDGE = (
    "Sam, we haven't heard back about your appointment on Tue 20 Jan at 10:30. Please reply YES"
    " to confirm or NO to cancel."
)
HOURS = "We're open Monday to Friday 08:00-18:00 and Saturday 09:00-13:00."
MENU = "Sorry, I didn't understand. Reply HOURS, ADDRESS, PARKING or PHONE."
STOPPED = (
    "You have been unsubscribed from this service and will receive no more messages."
    " Reply START to resubscribe."
)


async def asked(bot: BotDriver, **data: object) -> None:
    """Start the appointment flow for Sam (with `data` changed) and check the question."""
    await bot.start("appointment", data={**SAM, **data})
    bot.expect_reply(contains="Reply YES to confirm")
    assert bot.conversation().state == "waiting"


async def confirmed(bot: BotDriver, **data: object) -> None:
    """Start, answer YES, check the confirmation."""
    await asked(bot, **data)
    await bot.send("YES")
    bot.expect_reply(contains="you're booked")


async def test_the_reminder_lead_time_comes_from_the_data(bot: BotDriver) -> None:
    await confirmed(bot, remind_before_minutes=90)
    assert bot.conversation().timers["reminder"] == STARTS_AT - dt.timedelta(minutes=90)
    await bot.advance(until=STARTS_AT - dt.timedelta(minutes=91))
    bot.expect_no_reply()
    await bot.advance(minutes=1)
    reminder = bot.expect_reply(
        equals="Reminder: Sam, your appointment is on Tue 20 Jan at 10:30 at Riverside Clinic."
        " See you then!"
    )
    assert reminder.at == STARTS_AT - dt.timedelta(minutes=90)


async def test_no_reminder_when_it_would_already_be_past(bot: BotDriver) -> None:
    await confirmed(bot, starts_at=(NOW + dt.timedelta(hours=12)).isoformat())
    assert "reminder" not in bot.conversation().timers
    await bot.advance(hours=12)
    bot.expect_no_reply()


async def test_cancelling_after_confirming_cancels_the_reminder(bot: BotDriver) -> None:
    await confirmed(bot)
    assert bot.conversation().timers["reminder"] == REMINDER_AT
    await bot.send("cancel")
    bot.expect_reply(equals=CANCELLED)
    convo = bot.conversation()
    assert (convo.active, convo.end_reason, convo.opted_out) == (False, "completed", False)
    assert "reminder" not in convo.timers
    await bot.advance(days=6)
    bot.expect_no_reply()


async def test_cancel_while_waiting_cancels_the_appointment_not_the_messages(
    bot: BotDriver,
) -> None:
    await asked(bot)
    await bot.send("CANCEL")  # an opt-out word elsewhere; this state listens for it
    bot.expect_reply(equals=CANCELLED)
    assert not bot.conversation().opted_out
    await bot.send("HOURS")
    bot.expect_reply(equals=HOURS)


async def test_stop_opts_out_and_suppresses_the_reminder(bot: BotDriver) -> None:
    await confirmed(bot)
    await bot.send("STOP")
    bot.expect_reply(equals=STOPPED)
    convo = bot.conversation()
    assert convo.opted_out and not convo.active and convo.end_reason == "opted out"
    assert convo.timers == {}
    await bot.advance(until=STARTS_AT)
    bot.expect_no_reply()
    await bot.send("HOURS")  # after STOP, nothing but the one confirmation
    bot.expect_no_reply()
    later = {**SAM, "starts_at": (STARTS_AT + dt.timedelta(days=7)).isoformat()}
    with pytest.raises(StartRefusedError, match="opted out") as refused:
        await bot.start("appointment", data=later)
    assert refused.value.status == 409
    await bot.send("START")
    bot.expect_reply(contains="subscribed to this service again")
    assert not bot.conversation().opted_out


@pytest.mark.parametrize("answer", ["RESCHEDULE", "Re-book please", "Change the time?"])
async def test_reschedule_hands_over_to_staff(bot: BotDriver, answer: str) -> None:
    await asked(bot)
    await bot.send(answer)
    bot.expect_reply(equals=HANDOVER)
    convo = bot.conversation()
    assert not convo.active and convo.data["handover"] == "reschedule"


async def test_reschedule_after_confirming_drops_the_reminder(bot: BotDriver) -> None:
    await confirmed(bot)
    await bot.send("reschedule")
    bot.expect_reply(equals=HANDOVER)
    await bot.advance(until=STARTS_AT)
    bot.expect_no_reply()


async def test_unclear_answers_are_asked_again_twice_then_handed_over(bot: BotDriver) -> None:
    await asked(bot)
    await bot.send("what?")
    bot.expect_reply(equals=UNCLEAR)
    await bot.send("who is this")
    bot.expect_reply(equals=UNCLEAR)
    assert bot.conversation().state == "waiting"
    await bot.send("hmm")
    bot.expect_reply(equals=HANDOVER)
    convo = bot.conversation()
    assert not convo.active and convo.data["handover"] == "unclear"


async def test_no_answer_gets_one_nudge_then_staff_take_over(bot: BotDriver) -> None:
    await asked(bot)
    await bot.advance(hours=47, minutes=59)
    bot.expect_no_reply()
    await bot.advance(minutes=1)
    nudge = bot.expect_reply(equals=NUDGE)
    assert nudge.at == NOW + dt.timedelta(hours=48)
    assert bot.conversation().timers["timeout:waiting"] == NOW + dt.timedelta(hours=96)
    await bot.advance(hours=48)
    bot.expect_no_reply()  # staff call; the patient gets no more texts
    convo = bot.conversation()
    assert not convo.active and convo.data["handover"] == "no answer"


async def test_no_nudge_close_to_the_appointment(bot: BotDriver) -> None:
    await asked(bot, starts_at=(NOW + dt.timedelta(hours=49)).isoformat())
    await bot.advance(hours=48)
    bot.expect_no_reply()
    assert bot.conversation().data["handover"] == "no answer"


async def test_an_answer_after_the_nudge_still_counts(bot: BotDriver) -> None:
    await asked(bot)
    await bot.advance(hours=48)
    bot.expect_reply(equals=NUDGE)
    await bot.send("y")
    bot.expect_reply(contains="you're booked")
    await bot.advance(until=REMINDER_AT)
    bot.expect_reply(contains="Reminder: Sam")


async def test_keywords_are_answered_while_the_question_is_open(bot: BotDriver) -> None:
    await asked(bot)
    await bot.send("hours")
    bot.expect_reply(equals=HOURS)
    assert bot.conversation().state == "waiting"
    await bot.send("yes")
    bot.expect_reply(contains="you're booked")


async def test_help_is_answered_and_the_conversation_carries_on(bot: BotDriver) -> None:
    await asked(bot)
    await bot.send("HELP")
    bot.expect_reply(
        equals="this service: automated messages. Reply STOP to unsubscribe, START to resubscribe."
    )
    assert bot.conversation().state == "waiting"


# --- flows/keywords.py --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reply"),
    [
        ("HOURS", HOURS),
        ("hours?", HOURS),
        ("Address please", "Riverside Clinic, 12 Mill Lane, Bristol BS1 4QA."),
        ("what are your hours", MENU),  # a keyword is the whole message or its first word(s)
        ("hello", MENU),
        ("stop texting me", f"{MENU}\nReply STOP to opt out."),  # not an opt-out: a hint
    ],
)
async def test_keywords_and_the_menu(bot: BotDriver, text: str, reply: str) -> None:
    await bot.send(text)
    bot.expect_reply(equals=reply)
    assert not bot.conversation().active  # an answer, not a conversation


def keywords_toml() -> list[tuple[str, str]]:
    """The entries of flows/keywords.toml."""
    # Imported here: the imports at the top are the docs' example, word for word.
    import tomllib
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "flows" / "keywords.toml"
    return list(tomllib.loads(path.read_text(encoding="utf-8"))["keywords"].items())


@pytest.mark.parametrize(("word", "text"), keywords_toml())
async def test_every_keywords_toml_entry_is_answered_as_written(
    bot: BotDriver, word: str, text: str
) -> None:
    await bot.send(f"{word.lower()} please")
    bot.expect_reply(equals=text)


async def test_keywords_started_from_outside_send_the_menu(bot: BotDriver) -> None:
    await bot.start("keywords")
    bot.expect_reply(equals=MENU)
