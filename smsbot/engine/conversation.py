"""Conversation (`convo`): what a flow's handler gets for one step.

It carries the conversation's data, its time and zone, and the contact; a handler replies, says,
reminds, schedules and cancels through it. smsbot.engine.step builds one per running flow and
reads back what it queued (outbox, timers, cancelled). The flow definition API is in flow.py.
"""

from __future__ import annotations

import datetime as dt
import json
import zoneinfo
from collections.abc import Callable, Mapping
from typing import Any

from smsbot.engine.contact import Contact, ContactSnapshot
from smsbot.engine.contract import ConversationKey, Origin, OutgoingSms, TimerRequest
from smsbot.engine.flow import Flow, FlowError, Message, State, require_json
from smsbot.engine.jsondata import copy_json, is_plain_json
from smsbot.sms.templates import SmsTemplates
from smsbot.sms.zones import UnknownTimeZoneError, iana_zone

__all__ = ["Conversation"]


class Conversation:
    """What a handler gets as `convo`: the data, the time, and ways to reply and schedule."""

    def __init__(
        self,
        *,
        flow: type[Flow],
        key: ConversationKey,
        state: str,
        data: dict[str, Any],
        now: dt.datetime,
        zone: zoneinfo.ZoneInfo,
        origin: Origin,
        templates: SmsTemplates,
        defer: Callable[[Origin, zoneinfo.ZoneInfo], dt.datetime | None],
        message: Message | None = None,
        contact: Contact | None = None,
    ) -> None:
        self._flow = flow
        # the person on the other end: fields and groups, written with the step
        self.contact = contact or Contact(ContactSnapshot(key.phone))
        self.key = key
        self.state = state  # the current state's name; the runtime moves it
        self.data = data
        self.now = now
        self.message = message  # the inbound message behind this step, if any
        self.origin = origin
        self._zone = zone
        self._templates = templates
        self._defer = defer
        self.outbox: list[OutgoingSms] = []
        self.timers: dict[str, TimerRequest] = {}
        self.cancelled: list[str] = []
        self.timezone_changed = False

    @property
    def phone(self) -> str:
        """The other side's phone number, E.164."""
        return self.key.phone

    @property
    def virtual_number(self) -> str:
        """Our number the conversation runs on, E.164."""
        return self.key.virtual_number

    @property
    def flow(self) -> str:
        """The running flow's name."""
        return self._flow.name

    @property
    def current_state(self) -> State:
        """The current State; a handler returning it re-enters it (on_enter, timeout again)."""
        return self._flow.states[self.state]

    @property
    def timezone(self) -> str:
        """The contact's IANA zone: data["timezone"], else the phone's region, else the default."""
        return self._zone.key

    @timezone.setter
    def timezone(self, zone: str) -> None:
        try:
            self._zone = iana_zone(zone)
        except UnknownTimeZoneError as exc:
            raise FlowError(str(exc)) from None
        self.data["timezone"] = zone
        self.timezone_changed = True

    def context(self, variables: Mapping[str, Any]) -> dict[str, Any]:
        """The template context: data, then the call's variables, then phone/number/now."""
        return {
            **self.data,
            **variables,
            "phone": self.phone,
            "virtual_number": self.virtual_number,
            "now": self.now,
        }

    async def reply(self, template: str, **variables: Any) -> None:
        """Render `template` (under templates/) now and queue it to the contact."""
        rendered = self._templates.render(template, self.context(variables), timezone=self._zone)
        self._send(rendered.text)

    async def say(self, text: str) -> None:
        """Queue plain text (no template) to the contact."""
        self._send(self._templates.check_text(text).text)

    def _send(self, text: str) -> None:
        # Quiet hours may hold it back, depending on why it is sent (its origin).
        send_after = self._defer(self.origin, self._zone)
        self.outbox.append(OutgoingSms(text, self.origin, send_after=send_after))

    def remind(
        self, template: str, *, at: dt.datetime, name: str = "reminder", **variables: Any
    ) -> None:
        """Send `template` at `at` (quiet hours permitting); the same name replaces a reminder."""
        self._check_at(at, "remind")
        require_json(variables, f"the variables of reminder {name!r}")
        # Rendered once now, so a typo fails this step rather than silently at `at`.
        self._templates.render(
            template, {**self.context(variables), "now": at}, timezone=self._zone
        )
        payload = {"template": template, "vars": variables, "data": self.data, "flow": self.flow}
        require_json(payload, f"the data behind reminder {name!r}")
        # a copy as JSON would read it back: a later change to convo.data does not reach it
        copied = copy_json(payload) if is_plain_json(payload) else json.loads(json.dumps(payload))
        self._add(TimerRequest(name, "remind", at, copied))

    def schedule(
        self, handler: str | Callable[..., Any], *, at: dt.datetime, name: str | None = None
    ) -> None:
        """Call the flow's method `handler(convo)` at `at`; the same name replaces it."""
        method = handler if isinstance(handler, str) else getattr(handler, "__name__", "")
        if not callable(getattr(self._flow, method, None)):
            raise FlowError(
                f"flow {self.flow!r} has no method {method!r} to schedule: pass one of its"
                " methods, e.g. convo.schedule(self.follow_up, at=...)"
            )
        self._check_at(at, "schedule")
        self._add(TimerRequest(name or f"call:{method}", "call", at, {"method": method}))

    def cancel(self, name: str) -> None:
        """Cancel the reminder or scheduled call `name` (nothing happens if there is none)."""
        self.timers.pop(name, None)
        self.cancelled.append(name)

    def _add(self, timer: TimerRequest) -> None:
        if timer.name == "expiry" or timer.name.startswith("timeout:"):
            raise FlowError(f"the timer name {timer.name!r} is reserved: choose another name")
        self.timers[timer.name] = timer

    def _check_at(self, at: dt.datetime, what: str) -> None:
        if not isinstance(at, dt.datetime) or at.utcoffset() is None:
            raise FlowError(
                f"convo.{what}(at=...) needs an aware datetime, got {at!r}: use"
                " datetime.fromisoformat('2026-01-15T10:30:00+00:00') or convo.now + timedelta"
            )

    def __repr__(self) -> str:
        return f"<Conversation {self.key} {self.flow}:{self.state}>"
