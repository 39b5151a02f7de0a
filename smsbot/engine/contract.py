"""The contract between the dispatcher and the flow runtime: one event in, one step result out.

The dispatcher locks a conversation, hands its snapshot and one event to a StepHandler, and
writes the StepResult (state, data, replies, timers, opt-out change) in ONE transaction with the
event marked done. A handler never touches the database, the network or the wall clock.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from typing import Any, Protocol

from smsbot.engine.compliance import ComplianceAnswer, ComplianceRules
from smsbot.engine.contact import ContactChange, ContactSnapshot
from smsbot.sms.keywords import normalize_text


class EventKind(enum.StrEnum):
    """What an inbox event asks the dispatcher to do."""

    INBOUND = "inbound"
    RECEIPT = "receipt"
    START = "start"  # start a flow from outside (operator API, CLI, Python)
    TIMER = "timer"
    SEND_FAILED = "send_failed"  # tell the flow a reply could not be sent
    SEND = "send"  # an operator's message (operator API), serialised with the conversation


class Origin(enum.StrEnum):
    """Why an outbound message exists; decides quiet-hours and opt-out treatment."""

    REPLY = "reply"  # a direct answer to an inbound message: exempt from quiet hours
    FLOW = "flow"  # a flow started from outside, or a timer handler
    REMINDER = "reminder"
    OPERATOR = "operator"
    COMPLIANCE = "compliance"  # STOP / START / HELP answers: the only thing sent after STOP


@dataclasses.dataclass(frozen=True, slots=True)
class ConversationKey:
    """Who is talking to whom: our virtual number and the other side's phone, both E.164."""

    virtual_number: str
    phone: str

    def __str__(self) -> str:
        return f"{self.virtual_number}<->{self.phone}"


@dataclasses.dataclass(frozen=True, slots=True)
class DispatchEvent:
    """One inbox event for a conversation: an inbound SMS, an outside start, a timer firing."""

    # The inbox row's id; 0 during the step of a bulk start or of a timer stepped as it fires,
    # whose row is written with the step's effects (pipeline/starts.py, pipeline/firings.py).
    id: int
    kind: EventKind
    payload: dict[str, Any]
    received_at: dt.datetime
    # A START whose payload["data"] is already its flow's parse_start_data answer (a bulk
    # start checks each row before it is stepped): the step does not parse it a second time.
    # In memory only: an event read back from the inbox is always parsed.
    data_checked: bool = False


@dataclasses.dataclass(slots=True)
class ConversationSnapshot:
    """The locked conversation as the handler sees it; `data` is a private copy."""

    id: int
    key: ConversationKey
    flow: str | None
    state: str | None
    data: dict[str, Any]
    version: int
    state_token: str | None
    opted_out: bool
    started_at: dt.datetime | None
    last_activity_at: dt.datetime | None
    contact: ContactSnapshot | None = None  # None: a handler that needs no contact (tests)


@dataclasses.dataclass(frozen=True, slots=True)
class OutgoingSms:
    """A reply or notification to queue in the outbox with the step's commit."""

    text: str
    origin: Origin
    send_after: dt.datetime | None = None  # quiet hours defer a message, never drop it


@dataclasses.dataclass(frozen=True, slots=True)
class TimerRequest:
    """Schedule (or replace, by name) a timer for this conversation."""

    name: str
    kind: str  # remind | call | timeout | expiry
    due_at: dt.datetime
    payload: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(slots=True)
class StepResult:
    """What a step changes; the dispatcher applies all of it atomically."""

    flow: str | None
    state: str | None
    data: dict[str, Any]
    replies: list[OutgoingSms] = dataclasses.field(default_factory=list)
    timers: list[TimerRequest] = dataclasses.field(default_factory=list)
    cancel_timers: list[str] = dataclasses.field(default_factory=list)
    cancel_all_timers: bool = False  # the conversation ended or was replaced
    opt_out: bool | None = None  # True: record an opt-out; False: remove it; None: unchanged
    opt_keyword: str | None = None
    state_entered: bool = False  # a new state was entered: issue a new state token
    end_reason: str | None = None  # set when the conversation ended
    end_state: str | None = None  # the state it ended in (the final state, when completed)
    contact_timezone: str | None = None  # remember the contact's zone (quiet hours)
    contact: ContactChange | None = None  # the contact's fields, groups, name after the step

    @classmethod
    def unchanged(cls, convo: ConversationSnapshot) -> StepResult:
        """A result that changes nothing."""
        return cls(flow=convo.flow, state=convo.state, data=convo.data)

    def comply(self, answer: ComplianceAnswer) -> None:
        """Apply a compliance word: record the opt-out change, stop every timer on STOP, reply."""
        if answer.opt_out is not None:
            self.opt_out, self.opt_keyword = answer.opt_out, answer.keyword
        if answer.opt_out:
            self.cancel_all_timers = True  # reminders of ended conversations too
        if answer.reply is not None:
            # Plain text, never a template: a STOP must be confirmed even if templates break.
            self.replies.append(OutgoingSms(answer.reply, Origin.COMPLIANCE))


def retryable(exc: BaseException) -> bool:
    """Whether a step that raised `exc` may succeed if run again: not if it says `retryable=False`.

    Flow errors and template errors say so (the same event fails the same way); anything else,
    such as a database or network error or a timeout, is retried with backoff.
    """
    return getattr(exc, "retryable", True) is not False


class StepHandler(Protocol):
    """Turns one event on one locked conversation into a StepResult."""

    async def handle(
        self, event: DispatchEvent, convo: ConversationSnapshot, now: dt.datetime
    ) -> StepResult:
        """Decide what this event does to this conversation; must not do I/O."""
        ...


class EchoHandler:
    """The built-in minimal handler: STOP, START and HELP first, "You said: …" to the rest."""

    def __init__(self, compliance: ComplianceRules | None = None) -> None:
        self.compliance = compliance or ComplianceRules()

    async def handle(
        self, event: DispatchEvent, convo: ConversationSnapshot, now: dt.datetime
    ) -> StepResult:
        """Echo inbound text back; send a timer's payload "text" as a reminder; ignore the rest."""
        result = StepResult.unchanged(convo)
        if event.kind is EventKind.TIMER:
            # lets `serve --echo` prove in process tests that a timer fired once; for a phone
            # that opted out the dispatcher suppresses it (a test relies on that)
            text = (event.payload.get("payload") or {}).get("text")
            if text:
                result.replies.append(OutgoingSms(str(text), Origin.REMINDER))
        if event.kind is EventKind.INBOUND:
            body = str(event.payload["body"])
            # `seen` and `recent` let a test prove steps ran once each, in arrival order
            recent = [*convo.data.get("recent", []), body][-50:]
            result.data = {
                **convo.data,
                "seen": int(convo.data.get("seen", 0)) + 1,
                "recent": recent,
            }
            normalized = normalize_text(body)
            # Compliance holds in every mode; no state here listens for CANCEL, so it opts out.
            if (action := self.compliance.classify(normalized)) is not None:
                result.comply(self.compliance.answer(action, normalized, opted_out=convo.opted_out))
            elif not convo.opted_out:
                result.replies.append(OutgoingSms(f"You said: {body}", Origin.REPLY))
        return result
