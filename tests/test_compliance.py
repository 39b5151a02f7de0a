"""Opt-out, opt-in and help: the word matrix, which wins over flows, and what STOP suppresses."""

from __future__ import annotations

import datetime as dt

import pytest

from smsbot.config import ConfigError
from smsbot.engine.compliance import ComplianceAction, ComplianceConfigError, ComplianceRules
from smsbot.engine.contract import (
    ConversationKey,
    ConversationSnapshot,
    DispatchEvent,
    EchoHandler,
    EventKind,
    Origin,
)
from smsbot.sms.keywords import normalize_text
from tests.test_flow_api import VN, Chat, make_runtime

APPOINTMENT = {
    "name": "Sam",
    "starts_at": "2026-01-20T10:30:00+00:00",
    "location": "Riverside Clinic",
}
T0 = dt.datetime(2026, 1, 15, 9, 0, tzinfo=dt.UTC)
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
     "revoke", "END", "quit", "cancel", "OPT OUT", "opt-out", "Opt out!", "opt_out"],
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
    assert rules.looks_like_opt_out("opt out please")
    assert not rules.looks_like_opt_out("stop") and not rules.looks_like_opt_out("hello")
    assert not rules.looks_like_opt_out("opt in")  # "opt" alone is no opt-out word


# Every reply the FCC names as revoking consent to texts (47 CFR 64.1200(a)(10)).
FCC_REVOCATION_WORDS = ("stop", "quit", "end", "revoke", "opt out", "cancel", "unsubscribe")


@pytest.mark.parametrize("word", FCC_REVOCATION_WORDS)
def test_every_fcc_revocation_word_opts_out_by_default(word: str) -> None:
    action = ComplianceRules().classify(normalize_text(word))
    assert action in (ComplianceAction.OPT_OUT, ComplianceAction.SOFT_OPT_OUT)


# --- `smsbot serve --echo`: compliance holds in every mode -------------------------------------


def _echo_event(body: str, n: int) -> DispatchEvent:
    return DispatchEvent(n, EventKind.INBOUND, {"body": body}, T0)


def _convo(opted_out: bool) -> ConversationSnapshot:
    key = ConversationKey(VN, "+447700900123")
    return ConversationSnapshot(1, key, None, None, {}, 0, None, opted_out, None, None)


async def test_echo_mode_honours_stop_start_and_help() -> None:
    echo = EchoHandler()
    result = await echo.handle(_echo_event("Stop!", 1), _convo(False), T0)
    assert (result.opt_out, result.opt_keyword, result.cancel_all_timers) == (True, "STOP", True)
    assert [(r.text, r.origin) for r in result.replies] == [(OPT_OUT_TEXT, Origin.COMPLIANCE)]
    for body in ("hello", "STOP", "cancel"):  # opted out: silence, and STOP is confirmed once
        result = await echo.handle(_echo_event(body, 2), _convo(True), T0)
        assert result.replies == []
    result = await echo.handle(_echo_event("HELP", 3), _convo(True), T0)
    assert [r.origin for r in result.replies] == [Origin.COMPLIANCE]
    result = await echo.handle(_echo_event("start", 4), _convo(True), T0)
    assert result.opt_out is False and "subscribed" in result.replies[0].text
    result = await echo.handle(_echo_event("hello", 5), _convo(False), T0)
    assert [r.text for r in result.replies] == ["You said: hello"]


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
