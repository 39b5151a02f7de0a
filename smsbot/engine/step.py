"""What one step gathers as it runs: the conversation's copy, its flow runs, replies and timers.

FlowRuntime (runtime.py) decides what happens to an event; a Step carries it out on a copy of
the conversation and turns it into the StepResult the dispatcher writes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import zoneinfo
from collections.abc import Mapping
from typing import Any

from smsbot.engine.contact import Contact, ContactSnapshot
from smsbot.engine.contract import (
    ConversationSnapshot,
    DispatchEvent,
    Origin,
    StepResult,
    TimerRequest,
)
from smsbot.engine.conversation import Conversation
from smsbot.engine.flow import Flow, Message, State, require_json
from smsbot.engine.jsondata import copy_json
from smsbot.engine.quiet_hours import defer_until, recipient_zone
from smsbot.engine.router import NumberBinding, Router
from smsbot.sms.phone import PhoneNumberError
from smsbot.sms.templates import SmsTemplates

log = logging.getLogger(__name__)

RESERVED = "_smsbot"  # the runtime's own bookkeeping inside the conversation data
_DEFERRED = (Origin.FLOW, Origin.REMINDER)  # what quiet hours hold back
_FLOW_ORIGINS = {Origin.REPLY.value, Origin.FLOW.value, Origin.REMINDER.value}


@dataclasses.dataclass(frozen=True, slots=True)
class StepDeps:
    """What a step reads from the runtime that runs it: flows, templates, routing, settings."""

    flows: Mapping[str, type[Flow]]
    instances: Mapping[str, Flow]  # one instance per flow serves every step
    templates: SmsTemplates
    router: Router
    default_timezone: str
    conversation_expiry: dt.timedelta
    contact_fields: Mapping[str, str] = dataclasses.field(default_factory=dict)  # smsbot.toml


@dataclasses.dataclass(slots=True)
class Run:
    """One flow running inside a step: its Conversation and where it got to."""

    flow: Flow
    convo: Conversation
    state: State
    entered: bool = False
    fresh: bool = False  # begun in this step: its first state was never entered before
    ended: str | None = None  # the end reason once it has ended


class Step:
    """The StepResult under construction for one event."""

    def __init__(
        self,
        deps: StepDeps,
        event: DispatchEvent,
        snap: ConversationSnapshot,
        now: dt.datetime,
    ) -> None:
        self.deps, self.event, self.snap, self.now = deps, event, snap, now
        self.binding: NumberBinding = deps.router.binding(snap.key.virtual_number)
        data = copy_json(snap.data)  # the snapshot stays untouched: a step may be retried
        self.owned: dict[str, str] = dict(data.pop(RESERVED, {}).get("timers", {}))
        self.data, self.flow, self.state = data, snap.flow, snap.state
        self.result = StepResult(flow=snap.flow, state=snap.state, data=snap.data)
        self.timers: dict[str, TimerRequest] = {}
        self.touched = False  # the active conversation took part: push its expiry back
        # one Contact for every run of the step: what one run writes, the next one reads
        contact = snap.contact or ContactSnapshot(snap.key.phone)
        self.contact = Contact(contact, declared=deps.contact_fields)

    def active(self) -> tuple[type[Flow], State] | None:
        """The running flow and state, or None (a flow or state since removed ends it)."""
        if self.flow is None:
            return None
        cls = self.deps.flows.get(self.flow)
        state = cls.states.get(self.state or "") if cls is not None else None
        if cls is None or state is None:
            where = f"{self.flow}:{self.state}"
            log.warning("conversation %s is in unknown %s; ending it", self.snap.id, where)
            self.end("flow removed", cancel_all=True)
            return None
        return cls, state

    def zone(self, data: Mapping[str, Any]) -> zoneinfo.ZoneInfo:
        """The contact's zone for this step."""
        given = data.get("timezone") or self.data.get("timezone")
        default = self.deps.default_timezone
        try:
            return recipient_zone(self.snap.key.phone, given, default)
        except PhoneNumberError:  # not an E.164 phone (a test or sandbox oddity)
            return zoneinfo.ZoneInfo(default)

    def conversation(
        self,
        cls: type[Flow],
        state: State,
        data: dict[str, Any],
        origin: Origin,
        message: Message | None = None,
    ) -> Run:
        """A Run of `cls` in `state` over `data`."""
        window, now = self.binding.quiet_window, self.now

        def defer(why: Origin, zone: zoneinfo.ZoneInfo) -> dt.datetime | None:
            return defer_until(now, window, zone) if why in _DEFERRED else None

        convo = Conversation(
            flow=cls,
            key=self.snap.key,
            state=state.name,
            data=data,
            now=now,
            zone=self.zone(data),
            origin=origin,
            templates=self.deps.templates,
            defer=defer,
            message=message,
            contact=self.contact,
        )
        return Run(self.deps.instances[cls.name], convo, state)

    def end(self, reason: str, *, cancel_all: bool = False) -> None:
        """End the active conversation; its reminders survive unless `cancel_all`."""
        if cancel_all:
            self.result.cancel_all_timers = True
            self.timers.clear()
        else:
            doomed = [n for n, kind in self.owned.items() if kind != "remind"]
            self.result.cancel_timers += [*doomed, "expiry"]
            self.timers = {n: t for n, t in self.timers.items() if t.kind == "remind"}
        self.owned.clear()
        self.result.end_reason, self.result.end_state = reason, self.state
        self.flow = self.state = None

    def absorb(self, run: Run, *, side: bool = False) -> None:
        """Take a run's replies and timers; unless `side`, it becomes the conversation."""
        convo = run.convo
        self.result.replies += convo.outbox
        if convo.timezone_changed:
            self.result.contact_timezone = convo.timezone
        self.result.cancel_timers += convo.cancelled
        for name in convo.cancelled:
            self.owned.pop(name, None)
        if side:  # finished in this step beside the conversation: only reminders outlive it
            self.timers.update({n: t for n, t in convo.timers.items() if t.kind == "remind"})
            return
        self.touched = True
        self.timers.update(convo.timers)
        self.owned.update({n: t.kind for n, t in convo.timers.items()})
        self.data, self.flow, self.state = convo.data, run.flow.name, run.state.name
        self.result.state_entered = self.result.state_entered or run.entered
        if run.ended:
            self.end(run.ended)

    def finish(self) -> StepResult:
        """The finished StepResult."""
        result = self.result
        data = dict(self.data)
        if self.owned:
            data[RESERVED] = {"timers": self.owned}
        require_json(data, f"convo.data left by flow {self.flow or self.snap.flow!r}")
        result.flow, result.state, result.data = self.flow, self.state, data
        if self.flow is not None and self.touched:
            expiry = self.now + self.deps.conversation_expiry
            self.timers["expiry"] = TimerRequest("expiry", "expiry", expiry)
        result.timers = list(self.timers.values())
        result.cancel_timers = list(dict.fromkeys(result.cancel_timers))
        result.contact = self.contact.change()
        return result


def sent_by_this_run(payload: dict[str, Any], started_at: dt.datetime | None) -> bool:
    """Whether a failed message is the running flow's: not an operator's, nor an earlier run's."""
    origin = payload.get("origin")
    if origin is not None and origin not in _FLOW_ORIGINS:
        return False
    created = payload.get("created_at")
    if not created or started_at is None:
        return True
    return _utc(dt.datetime.fromisoformat(created)) >= _utc(started_at)


def _utc(when: dt.datetime) -> dt.datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)
