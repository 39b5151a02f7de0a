"""Campaign: a message or a flow start timed from a contact's own datetime field.

A campaign event is declared in Python beside flows (any module in the flows directory)::

    Campaign(name="appointment-reminder", group="patients", field="appointment_at",
             offset=timedelta(hours=-24), send="appointment/reminder.txt")

For every contact in `group` whose `field` holds a datetime, one fire is due at the field's
value plus `offset` (at `at_hour` o'clock in the contact's own zone when given). This module
only decides *when* and *what*; smsbot.pipeline.campaigns keeps the fires in the timers table.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import sys
import zoneinfo
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from smsbot.engine.contact import check_field_name
from smsbot.engine.loader import MODULE_PREFIX, FlowLoadError, Problem
from smsbot.engine.quiet_hours import _after_gap, _exists
from smsbot.hints import did_you_mean
from smsbot.sms.templates import SmsTemplates

__all__ = [
    "CONTACT_KEYS",
    "TIMER_PREFIX",
    "Campaign",
    "campaign_of",
    "campaign_problems",
    "campaigns_in",
    "load_campaigns",
    "timer_name",
]

TIMER_PREFIX = "campaign:"  # a campaign fire's timer is named campaign:<name>@<field value>
CONTACT_KEYS = ("name", "language", "phone")  # what `data` may name besides fields
_NAME = re.compile(r"[a-z][a-z0-9_-]{0,49}")


@dataclasses.dataclass(frozen=True)
class Campaign:
    """Send a template, or start a flow, at a time set by each contact's datetime field."""

    name: str
    group: str
    field: str
    offset: dt.timedelta = dt.timedelta(0)
    at_hour: int | None = None  # deliver at this hour (0-23) in the contact's own zone
    send: str | None = None  # a template name, such as "appointment/reminder.txt"
    start: str | None = None  # or a flow name
    # What the template (or the started flow's start data) gets, by key: a contact field, or
    # name / language / phone. None: every field of the contact, and its name.
    data: Mapping[str, str] | None = None
    number: str | None = None  # the sender; None: SMSBOT_DEFAULT_SENDER, or the only [numbers]

    def __post_init__(self) -> None:
        where = f"campaign {self.name!r}"
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(
                f"campaign name {self.name!r} must be 1-50 lower-case letters, digits, _ or -,"
                " starting with a letter"
            )
        if not isinstance(self.group, str) or not self.group.strip():
            raise ValueError(f"{where}: group must be a group name such as 'patients'")
        try:
            check_field_name(self.field)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        if not isinstance(self.offset, dt.timedelta):
            raise ValueError(f"{where}: offset must be a timedelta, such as timedelta(hours=-24)")
        if self.at_hour is not None and (
            not isinstance(self.at_hour, int) or not 0 <= self.at_hour <= 23
        ):
            raise ValueError(f"{where}: at_hour must be an hour from 0 to 23, or None")
        if (self.send is None) == (self.start is None):
            raise ValueError(
                f'{where}: give exactly one of send="template.txt" (a message) or'
                ' start="flow" (a flow to start)'
            )
        for key, source in (self.data or {}).items():
            if not isinstance(key, str) or not isinstance(source, str):
                raise ValueError(f"{where}: data maps names to contact fields, as strings")

    @property
    def action(self) -> str:
        """What it does, in words: 'send <template>' or 'start <flow>'."""
        return f"send {self.send}" if self.send is not None else f"start {self.start}"

    @property
    def when(self) -> str:
        """When it fires, in words, such as '24h before appointment_at, at 09:00 local'."""
        seconds = int(self.offset.total_seconds())
        span = abs(seconds)
        if span % 86400 == 0 and span >= 2 * 86400:
            amount = f"{span // 86400}d"
        elif span % 3600 == 0 and span:
            amount = f"{span // 3600}h"
        else:
            amount = f"{span // 60}m"
        text = (
            f"at {self.field}"
            if seconds == 0
            else f"{amount} {'before' if seconds < 0 else 'after'} {self.field}"
        )
        if self.at_hour is not None:
            text += f", at {self.at_hour:02d}:00 local"
        return text

    def due_at(self, value: dt.datetime, zone: zoneinfo.ZoneInfo) -> dt.datetime:
        """When the fire for a field value is due (aware UTC), for a contact in `zone`."""
        when = value + self.offset
        if self.at_hour is None:
            return when.astimezone(dt.UTC)
        day = when.astimezone(zone).date()
        wall = dt.datetime.combine(day, dt.time(self.at_hour), tzinfo=zone)
        if not _exists(wall):  # a spring-forward gap: the first instant after it
            return _after_gap(wall).astimezone(dt.UTC)
        return wall.replace(fold=0).astimezone(dt.UTC)

    def context(
        self, phone: str, name: str | None, language: str | None, fields: Mapping[str, Any]
    ) -> dict[str, Any]:
        """What a fire's template or flow gets from its contact (see `data`)."""
        own = {"name": name, "language": language, "phone": phone}
        if self.data is None:
            return {**fields, "name": name}
        return {
            key: own[source] if source in CONTACT_KEYS else fields.get(source)
            for key, source in self.data.items()
        }


def timer_name(campaign: str, value: str) -> str:
    """The timer name of a campaign's fire for one stored field value."""
    return f"{TIMER_PREFIX}{campaign}@{value}"


def campaign_of(name: str) -> str | None:
    """The campaign a timer name belongs to, or None when it is not a campaign fire."""
    if not name.startswith(TIMER_PREFIX):
        return None
    return name[len(TIMER_PREFIX) :].partition("@")[0]


def campaigns_in(directory: Path) -> list[tuple[Campaign, str]]:
    """The campaigns declared in the flow modules of `directory`, each with its file.

    Reads the modules load_flows (or import_flows) imported: call it after one of them.
    """
    found: list[tuple[Campaign, str]] = []
    for path in sorted(directory.glob("*.py")) if directory.is_dir() else []:
        module = sys.modules.get(f"{MODULE_PREFIX}.{path.stem}")
        if path.name.startswith("_") or module is None:
            continue
        for value in vars(module).values():
            items = value if isinstance(value, list | tuple) else [value]
            found += [(item, str(path)) for item in items if isinstance(item, Campaign)]
    return found


def campaign_problems(
    found: Sequence[tuple[Campaign, str]], flows: Collection[str], templates: SmsTemplates
) -> list[Problem]:
    """What is wrong with these campaigns: unknown templates or flows, names used twice."""
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for camp, file in found:
        where = f"campaign {camp.name!r}"
        if camp.name in seen:
            problems.append(
                Problem(
                    file,
                    None,
                    f"{where} is declared twice ({seen[camp.name]} and {file}):"
                    " give each campaign its own name",
                )
            )
        seen[camp.name] = file
        if camp.send is not None and not templates.exists(camp.send):
            hint = did_you_mean(camp.send, templates.names(), "{!r}")
            problems.append(
                Problem(
                    file,
                    None,
                    f"{where} sends template {camp.send!r}, which does not"
                    f" exist: {hint + ' ' if hint else ''}create it under the templates"
                    " directory or fix the name",
                )
            )
        if camp.start is not None and camp.start not in flows:
            hint = did_you_mean(camp.start, flows, "{!r}")
            problems.append(
                Problem(
                    file,
                    None,
                    f"{where} starts flow {camp.start!r}, which does not"
                    f" exist: {hint + ' ' if hint else ''}flows are {', '.join(sorted(flows))}",
                )
            )
    return problems


def load_campaigns(
    directory: Path, flows: Collection[str], templates: SmsTemplates
) -> dict[str, Campaign]:
    """The campaigns of the flow modules in `directory` (after load_flows), checked, by name."""
    found = campaigns_in(directory)
    if problems := campaign_problems(found, flows, templates):
        raise FlowLoadError(problems)
    return {camp.name: camp for camp, _ in found}
