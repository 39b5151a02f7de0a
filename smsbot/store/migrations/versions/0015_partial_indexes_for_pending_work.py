"""partial indexes for pending work: finished events and timers leave the indexes of unfinished ones

Most inbox events are done and most timers fired; the indexes that only the queries for pending
events and scheduled timers use now hold only those rows (smsbot/store/columns.py, only_rows).
An event written done (a timer stepped as it fires, a bulk start) adds no entry to them, and a
timer that fires only leaves them. Two indexes take over what the full ones also served:
ix_events_parked (failed and unmatched events, for operators) and ix_events_phone (one phone's
events: the console's conversation history, a contact's erasure). ix_timers_changed goes: no
query reads it since the scheduler mirrors timers by due time.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 01:00:00.000000
"""

from collections.abc import Sequence
from typing import Any

from alembic import op
from sqlalchemy import text

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, index, columns, rows kept); the rows as in smsbot/store/models.py
_PARTIAL = [
    ("webhook_events", "ix_events_pending", ["state", "virtual_number", "phone", "id"], "pending"),
    ("webhook_events", "ix_events_state_id", ["state", "id"], "pending"),
    ("webhook_events", "ix_events_state_kind", ["state", "kind", "id"], "pending"),
    ("webhook_events", "ix_events_workspace", ["state", "workspace", "id"], "pending"),
    ("timers", "ix_timers_due", ["state", "due_at"], "scheduled"),
    ("timers", "ix_timers_conversation", ["conversation_id", "state"], "scheduled"),
]


def _only(*states: str) -> dict[str, Any]:
    where = text(" OR ".join(f"state = '{s}'" for s in states))
    return {"sqlite_where": where, "postgresql_where": where}


def upgrade() -> None:
    for table, name, columns, state in _PARTIAL:
        op.drop_index(name, table_name=table)
        op.create_index(name, table, columns, unique=False, **_only(state))
    op.create_index(
        "ix_events_parked",
        "webhook_events",
        ["state", "workspace", "id"],
        unique=False,
        **_only("failed", "unmatched"),
    )
    op.create_index(
        "ix_events_phone", "webhook_events", ["phone", "virtual_number", "id"], unique=False
    )
    op.drop_index("ix_timers_changed", table_name="timers")


def downgrade() -> None:
    op.create_index("ix_timers_changed", "timers", ["state", "created_at"], unique=False)
    op.drop_index("ix_events_phone", table_name="webhook_events")
    op.drop_index("ix_events_parked", table_name="webhook_events")
    for table, name, columns, _state in _PARTIAL:
        op.drop_index(name, table_name=table)
        op.create_index(name, table, columns, unique=False)
