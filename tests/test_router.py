"""Routing: bindings per number, precedence, keyword triggers, catch-all and the start policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from smsbot.config import ConfigError, Settings
from smsbot.engine.contract import EventKind
from smsbot.engine.conversation import Conversation
from smsbot.engine.flow import Flow, FlowError, Message, State
from smsbot.engine.loader import load_flows
from smsbot.engine.router import RouteKind
from smsbot.engine.runtime import FlowRuntime, FlowStartRejectedError
from smsbot.sms.templates import SmsTemplates
from tests.fresh import EXAMPLE_FLOWS, copy_example_flows
from tests.test_flow_api import REPO, VN, Chat, make_runtime

OTHER_VN = "+447700900200"
HOURS = "We're open Monday to Friday 08:00-18:00 and Saturday 09:00-13:00."
APPOINTMENT = {"name": "Sam", "starts_at": "2026-01-20T10:30:00+00:00", "location": "Clinic"}


class Booking(Flow):
    """Test flow: a multi-step conversation started by a keyword."""

    name = "booking"
    triggers = ("BOOK",)
    day = State(initial=True)
    booked = State(final=True)

    async def start(self, convo: Conversation) -> State | None:
        await convo.say("Which day?")
        return None

    @day.on("MONDAY", "HOURS")
    async def monday(self, convo: Conversation, msg: Message) -> State | None:
        await convo.say(f"Booked: {msg.normalized}")
        return self.booked


def runtime(**settings: Any) -> FlowRuntime:
    """The example flows plus Booking; flows a user added to flows/ are left out."""
    sms = SmsTemplates(REPO / "templates")
    loaded = load_flows(REPO / "flows", sms)
    flows = [*(loaded[name] for name in sorted(EXAMPLE_FLOWS)), Booking]
    return FlowRuntime(Settings(**settings), sms, flows)


async def test_default_bindings() -> None:
    rt = runtime()
    binding = rt.router.binding(VN)
    assert binding.catch_all == "keywords"
    assert dict(binding.keywords) == {
        "hours": "keywords",
        "address": "keywords",
        "parking": "keywords",
        "phone": "keywords",
        "book": "booking",
    }
    assert binding.flows == {"appointment", "keywords", "booking"}


async def test_precedence() -> None:
    rt = runtime()
    binding = rt.router.binding(VN)
    day = Booking.states["day"]

    def route(text: str, state: State | None = None, opted_out: bool = False) -> RouteKind:
        return rt.router.route(binding, text, opted_out=opted_out, state=state).kind

    assert route("stop") is RouteKind.COMPLIANCE
    assert route("hours") is RouteKind.TRIGGER
    assert route("hours", state=day) is RouteKind.ACTIVE  # the state asked for it
    assert route("book", state=day) is RouteKind.TRIGGER
    assert route("tuesday", state=day) is RouteKind.ACTIVE
    assert route("tuesday") is RouteKind.CATCH_ALL
    assert route("hours", opted_out=True) is RouteKind.IGNORE
    assert route("help", opted_out=True) is RouteKind.COMPLIANCE


async def test_precedence_for_free_text_and_a_flows_own_trigger() -> None:
    rt = runtime()
    binding = rt.router.binding(VN)
    free = State(free_text=True)

    def route(text: str, state: State, flow: str = "booking") -> RouteKind:
        return rt.router.route(binding, text, opted_out=False, state=state, flow=flow).kind

    assert route("hours are too short", free) is RouteKind.ACTIVE
    assert route("book", free) is RouteKind.ACTIVE
    assert route("stop", free) is RouteKind.COMPLIANCE
    assert route("help", free) is RouteKind.COMPLIANCE
    assert route("cancel", free) is RouteKind.COMPLIANCE  # free text does not ask for CANCEL
    day = Booking.states["day"]
    assert route("book again", day) is RouteKind.ACTIVE  # booking's own trigger
    assert route("book again", day, flow="appointment") is RouteKind.TRIGGER
    Booking.restart_on_trigger = True
    try:
        assert route("book again", day) is RouteKind.TRIGGER
    finally:
        Booking.restart_on_trigger = False


async def test_a_keyword_answer_does_not_disturb_a_running_conversation() -> None:
    chat = Chat(runtime())
    await chat.start("appointment", APPOINTMENT)
    data_before = chat.snap.data
    result = await chat.step(EventKind.INBOUND, {"body": "Hours?"})
    assert [r.text for r in result.replies] == [HOURS]
    assert result.flow == "appointment" and result.state == "waiting"
    assert not result.state_entered and result.data == data_before
    assert [t.name for t in result.timers] == ["expiry"]  # activity keeps it alive


async def test_a_keyword_starting_a_conversation_interrupts_the_running_one() -> None:
    chat = Chat(runtime())
    await chat.start("appointment", APPOINTMENT)
    result = await chat.step(EventKind.INBOUND, {"body": "book"})
    assert result.flow == "booking" and result.state == "day"
    assert result.cancel_all_timers and result.end_reason == "interrupted"
    assert await chat.send("Monday!") == ["Booked: monday"]
    assert chat.snap.flow is None


async def test_unmatched_message_in_a_state_goes_to_the_catch_all() -> None:
    chat = Chat(runtime())
    await chat.send("book")
    result = await chat.step(EventKind.INBOUND, {"body": "tuesday"})
    assert result.replies[0].text.startswith("Sorry, I didn't understand.")
    assert result.flow == "booking" and result.state == "day"


async def test_per_number_bindings() -> None:
    numbers = {
        "07700 900100": {  # national form: normalised to the E.164 key
            "flows": ["booking", "keywords"],
            "keywords": {"APPOINTMENT": "booking"},
            "catch_all": "",
            "quiet_hours": "",
        }
    }
    rt = runtime(numbers=numbers, quiet_hours="21:00-08:00")
    binding = rt.router.binding(VN)
    assert binding.catch_all is None and binding.quiet_window is None
    assert binding.keywords["appointment"] == "booking"
    assert "book" in binding.keywords and "hours" in binding.keywords  # flows' own triggers
    assert rt.router.binding(OTHER_VN) is rt.router.default  # unlisted numbers: defaults
    assert rt.router.default.quiet_window is not None
    chat = Chat(rt)
    assert await chat.send("something else") == []  # no catch-all on this number
    with pytest.raises(FlowError, match="not bound"):
        await chat.start("appointment", APPOINTMENT)


@pytest.mark.parametrize(
    ("numbers", "message"),
    [
        ({VN: {"keyword": {}}}, "unknown key 'keyword' \\(did you mean keywords\\?\\)"),
        ({VN: {"keywords": {"X": "bookng"}}}, "did you mean 'booking'"),
        ({VN: {"catch_all": "nope"}}, "names flow 'nope'"),
        ({VN: {"flows": ["booking"], "catch_all": "keywords"}}, "not in"),
        ({VN: {"flows": ["booking"], "keywords": {"X": "keywords"}}}, "leaves out"),
        ({VN: {"keywords": {"STOP": "booking"}}}, "compliance word"),
        ({VN: {"keywords": ["HOURS"]}}, "must be a table"),
        ({VN: {"quiet_hours": "late"}}, "quiet_hours"),
        ({"not a number": {}}, "not a phone number"),
    ],
)
def test_bad_bindings(numbers: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        runtime(numbers=numbers)


def test_two_flows_with_one_trigger() -> None:
    class Other(Booking):
        name = "other"

    with pytest.raises(ConfigError, match="BOOK is a trigger of both flow 'booking' and flow"):
        make_runtime([Booking, Other])


async def test_start_policy_reject_changes_nothing() -> None:
    chat = Chat(runtime())
    await chat.start("appointment", APPOINTMENT)
    before = chat.snap
    with pytest.raises(FlowStartRejectedError, match='policy is "reject"'):
        await chat.start("booking", policy="reject")
    assert chat.snap == before
    # a flow that only answers does not need the slot, so it is never rejected
    result = await chat.start("keywords", policy="reject")
    assert result.flow == "appointment" and len(result.replies) == 1


async def test_start_policy_interrupt() -> None:
    chat = Chat(runtime())
    await chat.send("book")
    result = await chat.start("appointment", APPOINTMENT)
    assert result.flow == "appointment" and result.end_reason == "interrupted"
    assert result.cancel_all_timers and result.state_entered


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"flow": "nope", "data": {}}, "cannot start flow 'nope'"),
        ({"flow": "appointment", "data": {"name": "Sam"}}, "data.starts_at is required"),
        ({"flow": "booking", "data": {}, "policy": "maybe"}, "policy must be"),
        ({"flow": "booking", "data": []}, "JSON object"),
    ],
)
async def test_bad_starts(payload: dict[str, Any], message: str) -> None:
    chat = Chat(runtime())
    with pytest.raises(FlowError, match=message):
        await chat.step(EventKind.START, payload)


def test_flows_dir_is_loaded_from_settings(tmp_path: Path) -> None:
    settings = Settings(flows_dir=copy_example_flows(tmp_path), templates_dir=REPO / "templates")
    assert set(FlowRuntime.from_settings(settings).flows) == EXAMPLE_FLOWS
