"""A conversation's state history: each step's flow starts, state changes and ends, as rows.

Built by step_rows.py and written by effects.write_effects in the step's transaction (one
executemany per batch), so a change is recorded exactly when the step that made it commits.
What one step records, from the conversation before it and its StepResult:

- the running flow ended: a move to the state it ended in (if it moved), then an end row
  (`to_state` None, `reason` why: completed, interrupted, expired, opted out, …);
- a flow started (another one, or the same one again): a start row (`from_state` None);
- otherwise a change of state, or the same state entered again (a question asked again).

A flow that begins and finishes within one step (an auto-reply such as HOURS) never takes the
conversation and leaves no row. States passed through inside one step are not recorded: the
step's result holds only where it ended up.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from smsbot.store.models import state_changes_t
from smsbot.store.prepared import Prepared

if TYPE_CHECKING:
    from smsbot.pipeline.step_rows import Stepped

STARTED = "started"  # the reason on a start row
INSERT = Prepared(state_changes_t.insert())  # store/prepared.py
KEYS = (  # every row's parameters (step_rows.py binds them)
    "conversation_id", "workspace", "at", "flow", "from_state", "to_state", "reason",
    "event_kind", "event_id",
)  # fmt: skip


def changes(item: Stepped, c: Any, now: dt.datetime) -> list[dict[str, Any]]:
    """The state_changes rows one step makes from conversation row `c`, in order."""
    r = item.result
    rows: list[dict[str, Any]] = []

    def add(flow: str, before: str | None, after: str | None, reason: str | None) -> None:
        rows.append(
            {
                "conversation_id": c.id,
                "workspace": item.workspace,
                "at": now,
                "flow": flow[:100],
                "from_state": before,
                "to_state": after,
                "reason": reason[:100] if reason else None,
                "event_kind": item.event.kind.value,
                "event_id": item.event.id,
            }
        )

    if c.flow is not None and (r.end_reason is not None or r.flow != c.flow):
        last = r.end_state or c.state
        if last != c.state:
            add(c.flow, c.state, last, None)
        add(c.flow, last, None, r.end_reason or "ended")
    if r.flow is not None and (r.flow != c.flow or r.end_reason is not None):
        add(r.flow, None, r.state, STARTED)
    elif r.flow is not None and (r.state != c.state or r.state_entered):
        add(r.flow, c.state, r.state, None)
    return rows
