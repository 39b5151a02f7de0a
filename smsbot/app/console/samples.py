"""Sample data for the console: a flow's start data and a template's variables, guessed by name.

A flow's declared start data (`start_data`) gives each field's type; a value then comes from
the field's name ("name", "location", a time for a datetime). The operator can edit the JSON
before starting a flow or rendering a template, so a guess only has to be a start.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from smsbot.engine.flow import Flow
from smsbot.engine.startdata import StartField, start_fields

SAMPLE_PHONE = "+447700900123"  # Ofcom's drama range: never a real phone
# Values for names the example flows and templates use; others get a placeholder.
KNOWN: dict[str, Any] = {
    "name": "Sam",
    "location": "Riverside Clinic",
    "keywords": ["HOURS", "ADDRESS"],
    "opt_out_hint": False,
}


def _moment(now: dt.datetime) -> str:
    """Three days from `now`, at 10:30: a time an appointment could be."""
    day = (now + dt.timedelta(days=3)).astimezone(dt.UTC)
    return day.replace(hour=10, minute=30, second=0, microsecond=0).isoformat()


def guess(name: str, now: dt.datetime) -> Any:
    """A sample value for a variable called `name`."""
    if name in KNOWN:
        return KNOWN[name]
    if name.endswith(("_at", "_time", "_date")) or name in ("when", "date", "time"):
        return _moment(now)
    return f"<{name}>"


def start_data(flow: type[Flow], now: dt.datetime) -> dict[str, Any]:
    """Data that starts `flow`: a value for each declared start field it requires."""
    try:
        fields = start_fields(flow.start_data)
    except TypeError:  # the loader has said what is wrong with the declaration
        fields = ()
    if not fields:
        return {key: guess(key, now) for key in flow.required_data}
    return {f.name: _value(f, now) for f in fields if f.required}


def _value(field: StartField, now: dt.datetime) -> Any:
    if field.type is dt.datetime:
        return _moment(now)
    if field.type is bool:
        return False
    if field.type in (int, float):
        low = field.range.min if field.range is not None else None
        return field.type(low if low is not None else 1)
    return guess(field.name, now)


def template_context(
    variables: Iterable[str], given: dict[str, Any], now: dt.datetime
) -> dict[str, Any]:
    """A template's context: `given` first, then a guess for every other variable it reads."""
    context = {name: guess(name, now) for name in variables}
    context.update(given)
    context.setdefault("phone", SAMPLE_PHONE)
    context.setdefault("now", now)
    return context
