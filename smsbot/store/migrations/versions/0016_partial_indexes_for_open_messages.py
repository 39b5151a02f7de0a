"""partial indexes for open messages: a conversation's open messages, the lane's pending ones

ix_messages_open (virtual number, phone, created_at) holds only pending and in-flight messages:
the sender's one-send-at-a-time check and a step's handover read a conversation's open
messages there, not its whole history on ix_messages_key. ix_messages_lane keeps only pending
messages: a reply handed to its sender in flight adds no entry to it.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06 01:10:00.000000
"""

from collections.abc import Sequence

from alembic import op
from sqlalchemy import text

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LANE = ["outbox", "workspace", "origin", "send_after", "created_at"]


def upgrade() -> None:
    pending = text("outbox = 'pending'")
    op.drop_index("ix_messages_lane", table_name="messages")
    op.create_index(
        "ix_messages_lane", "messages", _LANE, sqlite_where=pending, postgresql_where=pending
    )
    open_ = text("outbox = 'pending' OR outbox = 'inflight'")
    op.create_index(
        "ix_messages_open",
        "messages",
        ["virtual_number", "phone", "created_at"],
        sqlite_where=open_,
        postgresql_where=open_,
    )


def downgrade() -> None:
    op.drop_index("ix_messages_open", table_name="messages")
    op.drop_index("ix_messages_lane", table_name="messages")
    op.create_index("ix_messages_lane", "messages", _LANE)
