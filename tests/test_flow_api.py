"""The flow API through FlowRuntime.handle: states, transitions, hooks, timers, data, purity.

They run on smsbot.testing's in-memory harness (`Chat`), which drives the runtime the way the
dispatcher does, so they need no database; the other flow tests import it from here.
"""

from __future__ import annotations

import copy
import datetime as dt
import zoneinfo
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from smsbot.engine.contract import (
    ConversationKey,
    DispatchEvent,
    EventKind,
    Origin,
)
from smsbot.engine.conversation import Conversation
from smsbot.engine.flow import Flow, FlowError, Message, State
from smsbot.engine.runtime import FlowLoopError, FlowRuntime
from smsbot.sms.keywords import match_keyword, normalize_text
from smsbot.sms.templates import TemplateError
from smsbot.testing import harness
from smsbot.testing.harness import DEFAULT_NOW, DEFAULT_NUMBER, DEFAULT_PHONE, Chat

REPO = Path(__file__).resolve().parents[1]
VN = DEFAULT_NUMBER
PHONE = DEFAULT_PHONE
NOW = DEFAULT_NOW  # Thursday 15 January 2026, 09:00 UTC; London is on UTC in winter


def make_runtime(flows: Iterable[type[Flow]] | None = None, **settings: Any) -> FlowRuntime:
    """The harness's runtime over this repository's flows and templates, or the given flows."""
    return harness.make_runtime(flows, project=REPO, **settings)


# --- keywords -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (" Yes, PLEASE! ", "yes please"),
        ("Y.", "y"),
        ("STOP\tALL", "stop all"),
        ("don't", "dont"),
        ("yes👍", "yes"),
        ("ＹＥＳ", "yes"),  # full-width letters
        ("...", ""),
    ],
)
def test_normalize_text(text: str, expected: str) -> None:
    assert normalize_text(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("yes please!", "yes"),
        ("Y.", "y"),
        ("yesterday", None),
        ("maybe yes", None),
        ("stop all now", "stop all"),  # the longest keyword wins
        ("stop", "stop"),
        ("", None),
    ],
)
def test_match_keyword(text: str, expected: str | None) -> None:
    assert match_keyword(normalize_text(text), ["yes", "y", "stop", "stop all"]) == expected


def test_message_keyword_returns_the_word_as_written() -> None:
    msg = Message("Parking?", normalize_text("Parking?"))
    assert msg.keyword("HOURS", "PARKING") == "PARKING"
    assert msg.keyword("HOURS") is None


# --- a flow that exercises every decorator --------------------------------------------------


class Survey(Flow):
    """Test flow: every kind of transition, hook and timer."""

    name = "survey"
    asking = State(initial=True, timeout=dt.timedelta(hours=1))
    thanked = State()
    looping = State()
    done = State(final=True)

    async def start(self, convo: Conversation) -> State | None:
        await convo.say("Rate us 1-5, or say HELP ME")
        return None

    @asking.on("YES", "STAR RATING")
    async def yes(self, convo: Conversation, msg: Message) -> State | None:
        await convo.say("yes handler")
        return self.thanked

    @asking.matches(r"^([1-5])\b")
    async def rated(self, convo: Conversation, msg: Message) -> State | None:
        assert msg.match is not None
        convo.data["rating"] = int(msg.match[1])
        await convo.say(f"You gave {msg.match[1]}")
        return self.thanked

    @asking.when(lambda msg: "?" in msg.text)
    async def question(self, convo: Conversation, msg: Message) -> State | None:
        await convo.say("A question!")
        return None

    @asking.on("AGAIN")
    async def again(self, convo: Conversation, msg: Message) -> State | None:
        return self.asking  # returning the current state re-enters it

    @asking.on("LOOP")
    async def loop(self, convo: Conversation, msg: Message) -> State | None:
        return self.looping

    @asking.on("STRING")
    async def string(self, convo: Conversation, msg: Message) -> Any:
        return "thanked"

    @asking.on("LATER")
    async def later(self, convo: Conversation, msg: Message) -> State | None:
        convo.schedule(self.follow_up, at=convo.now + dt.timedelta(minutes=5), name="follow")
        convo.remind("survey/remind.txt", at=convo.now + dt.timedelta(days=1), who="Sam")
        return None

    @asking.on("FORGET")
    async def forget(self, convo: Conversation, msg: Message) -> State | None:
        convo.cancel("follow")
        return None

    @asking.on("BADDATA")
    async def bad_data(self, convo: Conversation, msg: Message) -> State | None:
        convo.data["when"] = convo.now
        return None

    @asking.on("ZONE")
    async def zone(self, convo: Conversation, msg: Message) -> State | None:
        convo.timezone = "America/New_York"
        await convo.reply("survey/context.txt")
        return None

    @asking.otherwise
    async def unclear(self, convo: Conversation, msg: Message) -> State | None:
        await convo.say(f"unclear: {msg.normalized}")
        return None

    @asking.on_timeout
    async def timed_out(self, convo: Conversation) -> State | None:
        await convo.say("Still there?")
        return self.done

    @thanked.on_enter
    async def thank(self, convo: Conversation) -> State | None:
        await convo.say("Thanks!")
        return None

    @looping.on_enter
    async def bounce(self, convo: Conversation) -> State | None:
        return self.asking

    @asking.on_enter
    async def bounce_back(self, convo: Conversation) -> State | None:
        return self.looping if convo.data.get("loop") else None

    async def follow_up(self, convo: Conversation) -> State | None:
        await convo.say("Following up")
        return self.done

    async def on_expire(self, convo: Conversation) -> None:
        await convo.say("Bye for now")

    async def on_send_failed(self, convo: Conversation, error: str) -> State | None:
        convo.data["failed"] = error
        return self.done


@pytest.fixture
def survey_templates(tmp_path: Path) -> Path:
    (tmp_path / "survey").mkdir()
    (tmp_path / "survey/remind.txt").write_text("Reminder for {{ who }} at {{ now|time }}\n")
    (tmp_path / "survey/context.txt").write_text(
        "{{ phone }} {{ virtual_number }} {{ now|time }}\n"
    )
    return tmp_path


@pytest.fixture
async def chat(survey_templates: Path) -> Chat:
    chat = Chat(make_runtime([Survey], templates=survey_templates))
    result = await chat.start("survey")
    assert result.state == "asking" and result.state_entered
    assert [r.text for r in result.replies] == ["Rate us 1-5, or say HELP ME"]
    return chat


async def test_keyword_transition_runs_enter_hook_and_moves_on(chat: Chat) -> None:
    assert await chat.send("yes!") == ["yes handler", "Thanks!"]
    assert chat.snap.state == "thanked"
    assert "timeout:asking" not in chat.timers  # leaving a state cancels its timeout


async def test_multi_word_keyword(chat: Chat) -> None:
    assert await chat.send("Star rating: 5") == ["yes handler", "Thanks!"]


async def test_regex_sees_normalised_text_and_the_match(chat: Chat) -> None:
    assert await chat.send("4 stars!!") == ["You gave 4", "Thanks!"]
    assert chat.user_data["rating"] == 4


async def test_predicate_and_staying_put(chat: Chat) -> None:
    result = await chat.step(EventKind.INBOUND, {"body": "why?"})
    assert [r.text for r in result.replies] == ["A question!"]
    assert result.state == "asking" and not result.state_entered
    assert [r.origin for r in result.replies] == [Origin.REPLY]


async def test_otherwise_catches_the_rest(chat: Chat) -> None:
    assert await chat.send("Hmm, no idea") == ["unclear: hmm no idea"]


async def test_returning_the_current_state_re_enters_it(chat: Chat) -> None:
    chat.now += dt.timedelta(minutes=30)
    result = await chat.step(EventKind.INBOUND, {"body": "again"})
    assert result.state_entered
    assert chat.timers["timeout:asking"].due_at == chat.now + dt.timedelta(hours=1)


async def test_enter_hooks_that_loop_hit_the_step_cap(chat: Chat) -> None:
    chat.snap.data["loop"] = True
    with pytest.raises(FlowLoopError, match=r"'survey'.*more than 10 states.*looping -> asking"):
        await chat.send("loop")


async def test_returning_a_string_is_an_error_with_the_fix(chat: Chat) -> None:
    with pytest.raises(FlowError, match=r"return self.thanked \(a State\)"):
        await chat.send("string")


async def test_timeout_fires_its_handler(chat: Chat) -> None:
    result = await chat.fire("timeout:asking")
    assert [r.text for r in result.replies] == ["Still there?"]
    assert [r.origin for r in result.replies] == [Origin.FLOW]
    assert result.flow is None and result.end_reason == "completed"


async def test_stale_timeout_is_ignored(chat: Chat) -> None:
    stale = chat.timers["timeout:asking"]
    await chat.send("yes")
    chat.timers["timeout:asking"] = stale  # as if the cancel lost a race with the firing
    result = await chat.fire("timeout:asking")
    assert result.replies == [] and result.state == "thanked"


async def test_timeout_with_another_state_token_is_ignored(chat: Chat) -> None:
    result = await chat.fire("timeout:asking", token="not-the-current-token")
    assert result.replies == [] and result.state == "asking"


async def test_scheduled_call_reminder_and_cancel(chat: Chat) -> None:
    await chat.send("later")
    assert {"follow", "reminder"} <= set(chat.timers)
    remind = chat.timers["reminder"]
    assert remind.kind == "remind" and remind.payload["vars"] == {"who": "Sam"}
    assert remind.payload["template"] == "survey/remind.txt"
    result = await chat.fire("follow")
    assert [r.text for r in result.replies] == ["Following up"]
    assert result.flow is None  # `done` is final
    # the conversation ended, but its reminder still goes out, rendered when it fires
    assert "reminder" in chat.timers and "expiry" not in chat.timers
    result = await chat.fire("reminder")
    assert [(r.text, r.origin) for r in result.replies] == [
        ("Reminder for Sam at 09:00", Origin.REMINDER)
    ]


async def test_cancel_removes_a_scheduled_call(chat: Chat) -> None:
    await chat.send("later")
    result = await chat.send("forget")
    assert result == [] and "follow" not in chat.timers


async def test_same_timer_name_replaces(chat: Chat) -> None:
    await chat.send("later")
    chat.now += dt.timedelta(minutes=1)
    await chat.send("later")
    assert chat.timers["follow"].due_at == chat.now + dt.timedelta(minutes=5)


async def test_a_call_from_an_earlier_conversation_is_ignored(chat: Chat) -> None:
    await chat.send("later")
    stale = chat.timers["follow"]
    await chat.start("survey")  # interrupts: every timer of the old conversation is cancelled
    assert chat.timers.keys() == {"timeout:asking", "expiry"}
    chat.timers["follow"] = stale
    result = await chat.fire("follow")
    assert result.replies == [] and result.state == "asking"


async def test_expiry_is_pushed_back_by_each_step_and_ends_the_conversation(chat: Chat) -> None:
    assert chat.timers["expiry"].due_at == NOW + dt.timedelta(days=7)
    chat.now += dt.timedelta(days=1)
    await chat.send("later")
    assert chat.timers["expiry"].due_at == chat.now + dt.timedelta(days=7)
    result = await chat.fire("expiry")
    assert [r.text for r in result.replies] == ["Bye for now"]
    assert result.flow is None and result.end_reason == "expired"
    assert "follow" in result.cancel_timers and "timeout:asking" in result.cancel_timers
    assert "reminder" in chat.timers  # reminders outlive the conversation


async def test_send_failed_calls_the_hook(chat: Chat) -> None:
    payload = {"message_id": "m1", "error": "invalid number", "text": "hi"}
    result = await chat.step(EventKind.SEND_FAILED, payload)
    assert result.data["failed"] == "invalid number" and result.flow is None


async def test_data_must_stay_json(chat: Chat) -> None:
    with pytest.raises(FlowError, match="isoformat"):
        await chat.send("baddata")


async def test_template_context_and_timezone(chat: Chat) -> None:
    result = await chat.step(EventKind.INBOUND, {"body": "zone"})
    assert [r.text for r in result.replies] == [f"{PHONE} {VN} 04:00"]  # 09:00 UTC in New York
    assert result.contact_timezone == "America/New_York"
    assert result.data["timezone"] == "America/New_York"


async def test_a_reminder_with_a_broken_template_fails_the_step(survey_templates: Path) -> None:
    (survey_templates / "survey/remind.txt").write_text("{{ nobody }}")
    chat = Chat(make_runtime([Survey], templates=survey_templates))
    await chat.start("survey")
    with pytest.raises(TemplateError, match="nobody"):
        await chat.send("later")


async def test_quiet_hours_hold_back_flow_messages_but_not_replies(
    survey_templates: Path,
) -> None:
    chat = Chat(make_runtime([Survey], templates=survey_templates, quiet_hours="21:00-10:00"))
    result = await chat.start("survey")  # 09:00 London: inside quiet hours
    assert result.replies[0].send_after == NOW.replace(hour=10)
    result = await chat.step(EventKind.INBOUND, {"body": "huh"})
    assert result.replies[0].send_after is None  # a direct answer is never held back


async def test_the_step_is_pure(chat: Chat) -> None:
    await chat.send("later")
    before = copy.deepcopy(chat.snap)
    event = DispatchEvent(99, EventKind.INBOUND, {"body": "3"}, NOW)
    first = await chat.runtime.handle(event, chat.snap, NOW)
    second = await chat.runtime.handle(event, chat.snap, NOW)
    assert first == second
    assert chat.snap == before  # the snapshot (and its data) is untouched


async def test_naive_times_are_refused(survey_templates: Path) -> None:
    rt = make_runtime([Survey], templates=survey_templates)
    convo = Conversation(
        flow=Survey,
        key=ConversationKey(VN, PHONE),
        state="asking",
        data={},
        now=NOW,
        zone=zoneinfo.ZoneInfo("UTC"),
        origin=Origin.FLOW,
        templates=rt.templates,
        defer=lambda origin, zone: None,
    )
    with pytest.raises(FlowError, match="aware datetime"):
        convo.remind("survey/remind.txt", at=dt.datetime(2026, 1, 16), who="x")
    with pytest.raises(FlowError, match="no method 'nope'"):
        convo.schedule("nope", at=NOW)
    with pytest.raises(FlowError, match="reserved"):
        convo.remind("survey/remind.txt", at=NOW, name="expiry", who="x")


async def test_unknown_flow_in_the_snapshot_is_ended(chat: Chat) -> None:
    chat.snap.flow = "gone"
    result = await chat.step(EventKind.INBOUND, {"body": "hello"})
    assert result.flow is None and result.end_reason == "flow removed"
    assert result.cancel_all_timers
