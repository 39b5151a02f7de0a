"""What one step records in state_changes (pipeline/history.py), case by case.

The whole path (dispatcher, database, console) is in tests/test_console.py; here each kind of
step is fed to `changes` directly: the conversation row before it and the StepResult after.
"""

from __future__ import annotations

import datetime as dt
import types
from typing import Any

import pytest

from smsbot.engine.contract import DispatchEvent, EventKind, StepResult
from smsbot.pipeline.history import changes
from smsbot.pipeline.step_rows import Stepped

NOW = dt.datetime(2026, 1, 15, 9, 0, tzinfo=dt.UTC)


def _step(
    before: tuple[str | None, str | None], kind: EventKind = EventKind.INBOUND, **result: Any
) -> list[tuple[Any, ...]]:
    convo = types.SimpleNamespace(id=7, flow=before[0], state=before[1])
    event = DispatchEvent(id=42, kind=kind, payload={}, received_at=NOW)
    stepped = Stepped(convo, None, event, StepResult(data={}, **result))  # type: ignore[arg-type]
    rows = changes(stepped, convo, NOW)
    assert all(r["conversation_id"] == 7 and r["at"] == NOW and r["event_id"] == 42 for r in rows)
    return [(r["flow"], r["from_state"], r["to_state"], r["reason"], r["event_kind"]) for r in rows]


@pytest.mark.parametrize(
    ("before", "kind", "result", "expected"),
    [
        # nothing changed: a message the state did not act on, a reminder, a receipt-like no-op
        (("appt", "waiting"), EventKind.INBOUND, {"flow": "appt", "state": "waiting"}, []),
        ((None, None), EventKind.TIMER, {"flow": None, "state": None}, []),
        # a move, and the same state entered again (asked again)
        (
            ("appt", "waiting"),
            EventKind.INBOUND,
            {"flow": "appt", "state": "confirmed", "state_entered": True},
            [("appt", "waiting", "confirmed", None, "inbound")],
        ),
        (
            ("appt", "waiting"),
            EventKind.TIMER,
            {"flow": "appt", "state": "waiting", "state_entered": True},
            [("appt", "waiting", "waiting", None, "timer")],
        ),
        # a start from nothing
        (
            (None, None),
            EventKind.START,
            {"flow": "appt", "state": "waiting", "state_entered": True},
            [("appt", None, "waiting", "started", "start")],
        ),
        # moved to a final state and ended there, in one step
        (
            ("appt", "asking_why"),
            EventKind.INBOUND,
            {"flow": None, "state": None, "end_reason": "completed", "end_state": "cancelled"},
            [
                ("appt", "asking_why", "cancelled", None, "inbound"),
                ("appt", "cancelled", None, "completed", "inbound"),
            ],
        ),
        # ended where it was: expiry (a timer), a failed send's handler, opting out
        (
            ("appt", "waiting"),
            EventKind.TIMER,
            {"flow": None, "state": None, "end_reason": "expired", "end_state": "waiting"},
            [("appt", "waiting", None, "expired", "timer")],
        ),
        (
            ("appt", "waiting"),
            EventKind.INBOUND,
            {"flow": None, "state": None, "end_reason": "opted out", "end_state": "waiting"},
            [("appt", "waiting", None, "opted out", "inbound")],
        ),
        # replaced by another flow, or by the same flow started again
        (
            ("survey", "asking"),
            EventKind.INBOUND,
            {
                "flow": "appt",
                "state": "waiting",
                "end_reason": "interrupted",
                "end_state": "asking",
                "state_entered": True,
            },
            [
                ("survey", "asking", None, "interrupted", "inbound"),
                ("appt", None, "waiting", "started", "inbound"),
            ],
        ),
        (
            ("appt", "confirmed"),
            EventKind.START,
            {
                "flow": "appt",
                "state": "waiting",
                "end_reason": "interrupted",
                "end_state": "confirmed",
                "state_entered": True,
            },
            [
                ("appt", "confirmed", None, "interrupted", "start"),
                ("appt", None, "waiting", "started", "start"),
            ],
        ),
        # the row says a flow the runtime no longer knows: ended without an end reason
        (
            ("gone", "x"),
            EventKind.INBOUND,
            {"flow": None, "state": None},
            [("gone", "x", None, "ended", "inbound")],
        ),
    ],
)
def test_each_kind_of_step_records_its_changes(
    before: tuple[str | None, str | None],
    kind: EventKind,
    result: dict[str, Any],
    expected: list[tuple[Any, ...]],
) -> None:
    assert _step(before, kind, **result) == expected
