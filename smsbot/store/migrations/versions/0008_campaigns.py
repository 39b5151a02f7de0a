"""Campaign fires are timers of a contact: timers get contact_id, conversation_id may be empty

A campaign (smsbot.engine.campaign) fires once per contact and field value. Its fires live in
the timers table beside the conversations' timers, so the one scheduler fires both: a fire has
a contact_id and no conversation until it fires (the conversation of its contact's phone and
the campaign's number is made then). (contact_id, name) is unique, and is the index that
finds a contact's fires when it changes or is erased. contacts get an index on (updated_at, id):
the order in which the sync reads the contacts that changed.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 18:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("timers") as batch:
        batch.add_column(sa.Column("contact_id", sa.Integer(), nullable=True))
        batch.alter_column("conversation_id", existing_type=sa.Integer(), nullable=True)
        batch.create_unique_constraint("uq_timer_contact_name", ["contact_id", "name"])
    # The campaign sync reads the contacts changed since its cursor in (updated_at, id) order.
    op.create_index("ix_contacts_updated", "contacts", ["updated_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_contacts_updated", table_name="contacts")
    op.execute("DELETE FROM timers WHERE conversation_id IS NULL")
    with op.batch_alter_table("timers") as batch:
        batch.drop_constraint("uq_timer_contact_name", type_="unique")
        batch.alter_column("conversation_id", existing_type=sa.Integer(), nullable=False)
        batch.drop_column("contact_id")
