"""outbox indexes by workspace: each workspace's sender claims past other workspaces' backlog

ix_messages_outbox and ix_messages_lane take `workspace` after the outbox state: one sender per
workspace claims only its own messages (smsbot/pipeline/outbox.py), so a client's
100,000-message campaign is not read by another client's claims. The state stays first, so
counts over the whole outbox keep their index and a query by workspace alone is not drawn to it.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05 10:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _replace(outbox: list[str], lane: list[str]) -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_outbox")
        batch_op.drop_index("ix_messages_lane")
        batch_op.create_index("ix_messages_outbox", outbox, unique=False)
        batch_op.create_index("ix_messages_lane", lane, unique=False)


def upgrade() -> None:
    _replace(
        ["outbox", "workspace", "send_after", "created_at"],
        ["outbox", "workspace", "origin", "send_after", "created_at"],
    )


def downgrade() -> None:
    _replace(
        ["outbox", "send_after", "created_at"],
        ["outbox", "origin", "send_after", "created_at"],
    )
