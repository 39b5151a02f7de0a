"""Appointment confirmation: ask, confirm or cancel, remind before, hand over the rest to staff.

Started from outside (operator API, CLI or Python) with data (AppointmentData below):
    {"name": "Sam", "starts_at": "2026-01-20T10:30:00+00:00", "location": "Riverside Clinic"}
and optionally "remind_before_minutes" (default 1440: the day before).

No answer: after 48 hours the patient gets one last nudge and another 48 hours; after that (or
once the appointment is under 2 hours away) staff take over: data["handover"] says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

from smsbot import Conversation, Flow, FlowError, Future, Length, Message, Range, State

MAX_UNCLEAR = 2  # re-ask this many times, then a person takes over
TOO_LATE = timedelta(hours=2)  # closer than this to the appointment, texting is pointless


def parse_starts_at(text: object) -> datetime:
    """Read starts_at: ISO 8601 with a UTC offset, or ValueError saying so."""
    try:
        moment = datetime.fromisoformat(text) if isinstance(text, str) else None
    except ValueError:
        moment = None
    if moment is None or moment.utcoffset() is None:  # without an offset: whose 10:30?
        raise ValueError(
            f"starts_at must be ISO 8601 with a UTC offset, such as 2026-01-20T10:30:00+00:00;"
            f" got {text!r}"
        )
    return moment


@dataclass
class AppointmentData:
    """The data a START of this flow brings; anything else is refused before it is queued."""

    name: Annotated[str, Length(max=40)]
    starts_at: Annotated[datetime, Future()]  # ISO 8601 with a UTC offset; the data keeps the text
    location: Annotated[str, Length(max=60)]
    remind_before_minutes: Annotated[int, Range(0, 4 * 7 * 24 * 60)] = 24 * 60  # up to 4 weeks


def starts_at(convo: Conversation) -> datetime:
    """The appointment time from the conversation data."""
    return parse_starts_at(convo.data["starts_at"])


class AppointmentConfirmation(Flow):
    """Ask a patient to confirm an appointment; remind them before it."""

    name = "appointment"
    start_data = AppointmentData  # the operator API, CSV starts and `smsbot check` all use it
    # A message the patient expects about their own appointment, not marketing: its first text
    # need not say how to opt out (`smsbot check` would warn). STOP works all the same.
    opt_out_notice = False

    waiting = State(initial=True, timeout=timedelta(hours=48))
    confirmed = State()  # not final: the patient can still cancel
    cancelled = State(final=True)  # final states end the conversation
    handed_over = State(final=True)

    async def start(self, convo: Conversation) -> State | None:
        if starts_at(convo) <= convo.now:
            raise FlowError(f"appointment: starts_at {convo.data['starts_at']} has passed")
        await convo.reply("appointment/ask.txt")  # name, location, starts_at come from data
        return None  # None: go to the initial state, `waiting`

    # Keywords match whole words, any case, punctuation ignored: "yes please!" is YES.
    @waiting.on("YES", "Y", "CONFIRM")
    async def confirm(self, convo: Conversation, msg: Message) -> State | None:
        await convo.reply("appointment/confirmed.txt")
        return self.confirmed

    @confirmed.on_enter
    async def schedule_reminder(self, convo: Conversation) -> State | None:
        minutes = int(convo.data.get("remind_before_minutes", 24 * 60))
        at = starts_at(convo) - timedelta(minutes=minutes)
        if at > convo.now:  # too late for a reminder: the confirmation was enough
            convo.remind("appointment/reminder.txt", at=at, name="reminder")
        return None

    # CANCEL is also an opt-out word; because these states listen for it, here it cancels
    # the appointment instead (docs/compliance.md). Anywhere else it would opt out.
    @waiting.on("NO", "N", "CANCEL")
    @confirmed.on("NO", "CANCEL")
    async def cancel(self, convo: Conversation, msg: Message) -> State | None:
        convo.cancel("reminder")
        await convo.reply("appointment/cancelled.txt")
        return self.cancelled

    # A regular expression on the normalised text: "Reschedule", "re-book", "change time".
    @waiting.matches(r"^(re ?schedul|re ?book|change)")
    @confirmed.matches(r"^(re ?schedul|re ?book|change)")
    async def reschedule(self, convo: Conversation, msg: Message) -> State | None:
        convo.cancel("reminder")
        return await self.hand_over(convo, "reschedule")

    @waiting.otherwise
    async def unclear(self, convo: Conversation, msg: Message) -> State | None:
        convo.data["unclear"] = convo.data.get("unclear", 0) + 1
        if convo.data["unclear"] > MAX_UNCLEAR:
            return await self.hand_over(convo, "unclear")
        await convo.reply("appointment/unclear.txt")
        return None  # None: stay in `waiting` (its timeout keeps running)

    @waiting.on_timeout
    async def no_answer(self, convo: Conversation) -> State | None:
        if convo.data.get("nudged") or starts_at(convo) - convo.now < TOO_LATE:
            convo.data["handover"] = "no answer"  # staff see it; the patient gets no text
            return self.handed_over
        convo.data["nudged"] = True
        await convo.reply("appointment/nudge.txt")  # held back during quiet hours
        return self.waiting  # entering `waiting` again restarts its 48-hour timeout

    async def hand_over(self, convo: Conversation, why: str) -> State:
        """Tell the patient a person will call, and leave the reason for staff."""
        convo.data["handover"] = why
        await convo.reply("appointment/handover.txt")
        return self.handed_over
