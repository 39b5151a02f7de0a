"""A fast harness: a flow's steps through the real engine, in memory, on a virtual clock.

`Chat` drives smsbot's FlowRuntime the way the dispatcher does: it hands each event and the
conversation to `FlowRuntime.handle`, then applies the StepResult (state, data, opt-out) and
keeps the timers a step asked for, as the timers table would. No database, no server, no
provider: a test of one branch takes milliseconds. Moving the clock with `advance` fires the
timers that fall due, in order.

What it leaves out is what the `bot` fixture (smsbot.testing.BotDriver) is for: sending,
delivery receipts, quiet hours holding a message back (a reply only carries its `send_after`),
retries. See docs/testing-flows.md.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from smsbot.clock import VirtualClock
from smsbot.config import SANDBOX_NUMBER, Settings
from smsbot.engine.contact import ContactChange, ContactSnapshot
from smsbot.engine.contract import (
    ConversationKey,
    ConversationSnapshot,
    DispatchEvent,
    EventKind,
    OutgoingSms,
    StepResult,
    TimerRequest,
)
from smsbot.engine.flow import Flow
from smsbot.engine.runtime import FlowRuntime
from smsbot.engine.step import RESERVED
from smsbot.sms.templates import SmsTemplates

__all__ = ["DEFAULT_NOW", "DEFAULT_NUMBER", "DEFAULT_PHONE", "Chat", "make_runtime"]

DEFAULT_NOW = dt.datetime(2026, 1, 15, 9, 0, tzinfo=dt.UTC)  # a Thursday; London is on UTC
DEFAULT_PHONE = "+447700900123"  # Ofcom's drama range: never a real phone
DEFAULT_NUMBER = SANDBOX_NUMBER  # the bot's virtual number unless SMSBOT_DEFAULT_SENDER says


def make_runtime(
    flows: Iterable[type[Flow]] | None = None,
    *,
    project: str | Path = ".",
    templates: str | Path | None = None,
    **settings: Any,
) -> FlowRuntime:
    """A FlowRuntime over `project`'s flows/ and templates/, or over the given flow classes.

    `settings` are Settings fields, e.g. quiet_hours="21:00-08:00" or numbers={...}; nothing is
    read from the environment or smsbot.toml. The flows are checked as `smsbot serve` checks them.
    """
    root = Path(project)
    settings.setdefault("flows_dir", root / "flows")
    settings.setdefault("templates_dir", Path(templates) if templates else root / "templates")
    config = Settings(**settings)
    if flows is None:
        return FlowRuntime.from_settings(config)
    sms = SmsTemplates(
        config.templates_dir,
        max_segments=config.max_segments,
        segment_policy=config.segment_policy,
        smart_characters=config.smart_characters,
    )
    return FlowRuntime(config, sms, list(flows))


class Chat:
    """One conversation between a phone and the bot, run in memory on a virtual clock."""

    def __init__(
        self,
        runtime: FlowRuntime,
        *,
        phone: str = DEFAULT_PHONE,
        number: str = DEFAULT_NUMBER,
        clock: VirtualClock | None = None,
    ) -> None:
        self.runtime = runtime
        self.clock = clock or VirtualClock(DEFAULT_NOW)
        self.timers: dict[str, TimerRequest] = {}  # pending timers by name, like the timers table
        self.replies: list[OutgoingSms] = []  # every reply queued so far, in order
        self.events = 0
        self.snap = ConversationSnapshot(
            id=1,
            key=ConversationKey(number, phone),
            flow=None,
            state=None,
            data={},
            version=0,
            state_token=None,
            opted_out=False,
            started_at=None,
            last_activity_at=None,
        )

    @property
    def now(self) -> dt.datetime:
        """The virtual time; assigning a later time moves the clock without firing timers."""
        return self.clock.now()

    @now.setter
    def now(self, when: dt.datetime) -> None:
        self.clock.set(when)

    @property
    def flow(self) -> str | None:
        """The running flow's name, or None when no conversation is running."""
        return self.snap.flow

    @property
    def state(self) -> str | None:
        """The current state's name, or None when no conversation is running."""
        return self.snap.state

    @property
    def user_data(self) -> dict[str, Any]:
        """The conversation data without the runtime's own bookkeeping."""
        return {k: v for k, v in self.snap.data.items() if k != RESERVED}

    @property
    def opted_out(self) -> bool:
        """Whether the phone has opted out (texted STOP) of this number."""
        return self.snap.opted_out

    async def send(self, body: str) -> list[str]:
        """Text the bot from the phone; return the texts of the replies."""
        result = await self.step(EventKind.INBOUND, {"body": body, "message_id": None})
        return [reply.text for reply in result.replies]

    async def start(
        self, flow: str, data: Mapping[str, Any] | None = None, policy: str = "interrupt"
    ) -> StepResult:
        """Start `flow` from outside (as the operator API does, after checking its data)."""
        payload = {"flow": flow, "data": dict(data or {}), "policy": policy}
        return await self.step(EventKind.START, payload)

    async def advance(
        self,
        delta: dt.timedelta | None = None,
        *,
        days: float = 0,
        hours: float = 0,
        minutes: float = 0,
        until: dt.datetime | None = None,
    ) -> list[str]:
        """Move the clock on, firing each timer due on the way at its time; return the replies."""
        target = until if until is not None else self.now
        target += (delta or dt.timedelta()) + dt.timedelta(days=days, hours=hours, minutes=minutes)
        if target < self.now:
            raise ValueError(f"the clock never moves back: {target} is before {self.now}")
        texts: list[str] = []
        while due := [t for t in self.timers.values() if t.due_at <= target]:
            timer = min(due, key=lambda t: t.due_at)
            result = await self.fire(timer.name)
            texts += [reply.text for reply in result.replies]
        self.now = target
        return texts

    async def fire(self, name: str, *, token: str | None = None) -> StepResult:
        """Fire the pending timer `name` now, or at its due time if that is later.

        `token` stands in for a stale state token, to test a timeout that lost a race.
        """
        if name not in self.timers:
            pending = ", ".join(sorted(self.timers)) or "none"
            raise KeyError(f"no pending timer {name!r}; pending: {pending}")
        timer = self.timers.pop(name)
        self.now = max(self.now, timer.due_at)
        body = dict(timer.payload)
        if token is not None:
            body["state_token"] = token
        payload = {"name": name, "kind": timer.kind, "payload": body}
        return await self.step(EventKind.TIMER, {**payload, "due_at": timer.due_at.isoformat()})

    async def step(self, kind: EventKind, payload: Mapping[str, Any]) -> StepResult:
        """Run one event through the runtime and apply its result, as the dispatcher would."""
        self.events += 1
        event = DispatchEvent(self.events, kind, dict(payload), self.now)
        result = await self.runtime.handle(event, self.snap, self.now)
        if result.cancel_all_timers:
            self.timers.clear()
        for name in result.cancel_timers:
            self.timers.pop(name, None)
        self.timers.update({t.name: t for t in result.timers})
        self.replies += result.replies
        # started_at moves when another flow takes over, as the dispatcher stores it
        started = result.flow is not None and result.flow != self.snap.flow
        self.snap = dataclasses.replace(
            self.snap,
            flow=result.flow,
            state=result.state if result.flow else None,
            data=copy.deepcopy(result.data),
            version=self.snap.version + 1,
            state_token=f"token{self.events}" if result.state_entered else self.snap.state_token,
            opted_out=self.snap.opted_out if result.opt_out is None else result.opt_out,
            started_at=self.now if started else self.snap.started_at,
            last_activity_at=self.now,
            contact=_changed(self.snap.contact, self.snap.key.phone, result.contact),
        )
        return result

    def __repr__(self) -> str:
        where = f"{self.flow}:{self.state}" if self.flow else "no conversation"
        return f"<Chat {self.snap.key} {where} at {self.now.isoformat()}>"


def _changed(
    contact: ContactSnapshot | None, phone: str, change: ContactChange | None
) -> ContactSnapshot | None:
    """The contact after a step's change, as the dispatcher would store it."""
    if change is None:
        return contact
    old = contact or ContactSnapshot(phone)
    groups = frozenset((old.groups | change.join) - change.leave)
    types = {**old.types, **change.new_types}
    return ContactSnapshot(phone, change.name, change.language, change.fields, groups, types)
