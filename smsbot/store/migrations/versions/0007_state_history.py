"""Each conversation's state history: every flow start, state change and end, durably

A row per change, written in the dispatcher's transaction with the step that made it, so the
console's timeline shows transitions and flow results attribute a conversation a keyword
started to its flow after it has ended.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 18:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

from smsbot.store.types import UTCDateTime

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STR = sqlmodel.sql.sqltypes.AutoString


def upgrade() -> None:
    op.create_table(
        "state_changes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("conversation_id", sa.Integer(), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("flow", _STR(length=100), nullable=False),
        sa.Column("from_state", _STR(length=100), nullable=True),
        sa.Column("to_state", _STR(length=100), nullable=True),
        sa.Column("reason", _STR(length=100), nullable=True),
        sa.Column("event_kind", _STR(length=16), nullable=False),
        sa.Column("event_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["conversation_id"], ["conversations.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_state_changes_conversation", "state_changes", ["conversation_id", "id"])
    op.create_index("ix_state_changes_flow", "state_changes", ["flow", "at"])


def downgrade() -> None:
    op.drop_index("ix_state_changes_flow", table_name="state_changes")
    op.drop_index("ix_state_changes_conversation", table_name="state_changes")
    op.drop_table("state_changes")
