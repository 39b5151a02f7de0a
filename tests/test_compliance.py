"""Opt-out, opt-in and help: the word matrix, which wins over flows, and what STOP suppresses."""

from __future__ import annotations

import pytest

from smsbot.config import ConfigError
from smsbot.engine.compliance import ComplianceAction, ComplianceConfigError, ComplianceRules
from smsbot.engine.contract import EventKind, Origin
from smsbot.sms.keywords import normalize_text
from tests.test_flow_api import VN, Chat, make_runtime

APPOINTMENT = {
    "name": "Sam",
    "starts_at": "2026-01-20T10:30:00+00:00",
    "location": "Riverside Clinic",
}
OPT_OUT_TEXT = (
    "You have been unsubscribed from this service and will receive no more messages."
    " Reply START to resubscribe."
)


@pytest.fixture
def chat() -> Chat:
    return Chat(make_runtime())


@pytest.mark.parametrize(
    "body",
    ["STOP", " stop ", "Stop!", "STOP ALL", "stop all.", "stopall", "OPTOUT", "Unsubscribe",
     "revoke", "END", "quit", "cancel"],
)  # fmt: skip
async def test_opt_out_words(chat: Chat, body: str) -> None:
    result = await chat.step(EventKind.INBOUND, {"body": body})
    assert result.opt_out is True
    assert result.opt_keyword == normalize_text(body).upper()
    assert [(r.text, r.origin) for r in result.replies] == [(OPT_OUT_TEXT, Origin.COMPLIANCE)]
    assert result.cancel_all_timers


async def test_stop_ends_the_active_conversation_and_its_timers(chat: Chat) -> None:
    await chat.start("appointment", APPOINTMENT)
    await chat.send("yes")
    assert "reminder" in chat.timers
    result = await chat.step(EventKind.INBOUND, {"body": "STOP"})
    assert result.flow is None and result.end_reason == "opted out"
    assert result.cancel_all_timers and chat.timers == {}
    assert len(result.replies) == 1


async def test_stop_please_is_not_an_opt_out_but_says_how(chat: Chat) -> None:
    result = await chat.step(EventKind.INBOUND, {"body": "STOP PLEASE"})
    assert result.opt_out is None
    assert [r.text for r in result.replies] == [
        "Sorry, I didn't understand. Reply HOURS, ADDRESS, PARKING or PHONE.\n"
        "Reply STOP to opt out."
    ]


async def test_cancel_in_the_appointment_cancels_it_instead(chat: Chat) -> None:
    await chat.start("appointment", APPOINTMENT)
    result = await chat.step(EventKind.INBOUND, {"body": "Cancel"})
    assert result.opt_out is None and result.state == "asking_why"
    assert "is cancelled" in result.replies[0].text
    # asking why listens for no CANCEL (free text lets compliance words by): an opt-out again
    result = await chat.step(EventKind.INBOUND, {"body": "CANCEL"})
    assert result.opt_out is True


async def test_soft_words_opt_out_where_the_state_does_not_listen(chat: Chat) -> None:
    await chat.start("appointment", APPOINTMENT)
    result = await chat.step(EventKind.INBOUND, {"body": "quit"})  # waiting listens for CANCEL only
    assert result.opt_out is True and result.end_reason == "opted out"


async def test_hard_words_win_even_in_a_listening_state(chat: Chat) -> None:
    await chat.start("appointment", APPOINTMENT)
    result = await chat.step(EventKind.INBOUND, {"body": "stop"})
    assert result.opt_out is True and result.flow is None


async def test_an_opted_out_phone_gets_nothing(chat: Chat) -> None:
    await chat.start("appointment", APPOINTMENT)
    reminder_template = {"template": "appointment/reminder.txt", "data": APPOINTMENT, "vars": {}}
    await chat.send("STOP")
    for body in ("hello", "HOURS", "yes", "STOP PLEASE"):
        result = await chat.step(EventKind.INBOUND, {"body": body})
        assert result.replies == [] and result.flow is None and result.timers == []
    result = await chat.start("appointment", APPOINTMENT)
    assert result.replies == [] and result.flow is None and result.timers == []
    timer = {"name": "reminder", "kind": "remind", "payload": reminder_template, "due_at": ""}
    result = await chat.step(EventKind.TIMER, timer)
    assert result.replies == []
    # a second STOP is recorded but not confirmed again: one confirmation, then silence
    result = await chat.step(EventKind.INBOUND, {"body": "STOP"})
    assert result.opt_out is True and result.replies == []


async def test_start_restores(chat: Chat) -> None:
    await chat.send("STOP")
    result = await chat.step(EventKind.INBOUND, {"body": "Start"})
    assert result.opt_out is False and result.opt_keyword == "START"
    assert [r.origin for r in result.replies] == [Origin.COMPLIANCE]
    assert "subscribed" in result.replies[0].text
    assert await chat.send("hours") == [
        "We're open Monday to Friday 08:00-18:00 and Saturday 09:00-13:00."
    ]
    result = await chat.step(EventKind.INBOUND, {"body": "unstop"})
    assert result.opt_out is False


async def test_help_answers_and_changes_nothing(chat: Chat) -> None:
    await chat.start("appointment", APPOINTMENT)
    for body in ("HELP", "info?"):
        result = await chat.step(EventKind.INBOUND, {"body": body})
        assert result.opt_out is None and result.state == "waiting" and not result.state_entered
        assert [r.origin for r in result.replies] == [Origin.COMPLIANCE]
        assert "Reply STOP to unsubscribe" in result.replies[0].text
    await chat.send("STOP")
    result = await chat.step(EventKind.INBOUND, {"body": "help"})  # still answered after STOP
    assert [r.origin for r in result.replies] == [Origin.COMPLIANCE]


async def test_per_number_words_and_texts() -> None:
    compliance = {
        "opt_out_words": ["STOP", "ARRET"],
        "soft_opt_out_words": [],
        "opt_out_text": "{service}: you will get no more texts. Text START to undo.",
        "service": "Riverside Clinic",
    }
    chat = Chat(make_runtime(numbers={VN: {"compliance": compliance}}))
    result = await chat.step(EventKind.INBOUND, {"body": "arret"})
    assert result.opt_out is True
    assert result.replies[0].text == (
        "Riverside Clinic: you will get no more texts. Text START to undo."
    )
    await chat.send("start")
    result = await chat.step(EventKind.INBOUND, {"body": "quit"})  # no soft words on this number
    assert result.opt_out is None


def test_rules_classify() -> None:
    rules = ComplianceRules()
    assert rules.classify("stop all") is ComplianceAction.OPT_OUT
    assert rules.classify("cancel") is ComplianceAction.SOFT_OPT_OUT
    assert rules.classify("stop please") is None
    assert rules.looks_like_opt_out("stop please")
    assert rules.looks_like_opt_out("cancel my appointment")
    assert not rules.looks_like_opt_out("stop") and not rules.looks_like_opt_out("hello")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"opt_out_words": "STOP"}, "must be a list"),
        ({"opt_out_words": ["!!"]}, "is not a keyword"),
        ({"help_words": ["STOP"]}, "STOP is in both opt_out_words and help_words"),
        ({"opt_out_txt": "x"}, "unknown key"),
        ({"help_text": " "}, "non-empty string"),
    ],
)
def test_bad_compliance_config(table: dict[str, object], message: str) -> None:
    with pytest.raises(ComplianceConfigError, match=message):
        ComplianceRules.from_config(table, where="compliance")
    with pytest.raises(ConfigError, match=message):  # through the router, naming the number
        make_runtime(numbers={VN: {"compliance": table}})
