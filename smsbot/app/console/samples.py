"""Sample data for the console: a flow's start data and a template's variables, guessed by name.

A flow that declares `sample_data` (a dict class attribute) is taken at its word; otherwise each
required key and each template variable gets a value its name suggests. The operator can edit
the JSON before starting a flow or rendering a template, so a guess only has to be a start.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from smsbot.engine.flow import Flow

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
    """Data that starts `flow`: its own `sample_data`, else a guess for each required key."""
    declared = getattr(flow, "sample_data", None)
    if isinstance(declared, dict):
        return dict(declared)
    return {key: guess(key, now) for key in flow.required_data}


def template_context(
    variables: Iterable[str], given: dict[str, Any], now: dt.datetime
) -> dict[str, Any]:
    """A template's context: `given` first, then a guess for every other variable it reads."""
    context = {name: guess(name, now) for name in variables}
    context.update(given)
    context.setdefault("phone", SAMPLE_PHONE)
    context.setdefault("now", now)
    # The filters read times as datetimes or ISO strings; ISO strings stay readable in the form.
    return context
