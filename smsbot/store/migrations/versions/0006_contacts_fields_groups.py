"""Contacts get a language, typed custom fields and groups; erased opt-outs become suppressions

Storage: a contact's field values live in one JSON column on its row (`contacts.fields`),
their types in `contact_fields`, memberships in `contact_groups`. One row per contact keeps an
import to one executemany upsert per batch and a flow step to one read and one write; the
types table is what turns a stored string back into a datetime. `suppressions` keeps a hash of
an erased phone's opt-out so an earlier STOP still holds after `smsbot contacts erase`.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 16:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

from smsbot.store.types import UTCDateTime

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STR = sqlmodel.sql.sqltypes.AutoString


def upgrade() -> None:
    with op.batch_alter_table("contacts") as batch:
        batch.add_column(sa.Column("language", _STR(length=16), nullable=True))
        batch.add_column(sa.Column("fields", sa.JSON(), nullable=False, server_default="{}"))
        batch.add_column(sa.Column("updated_at", UTCDateTime(), nullable=True))
    with op.batch_alter_table("contacts") as batch:
        batch.alter_column("fields", server_default=None)
    op.create_table(
        "contact_fields",
        sa.Column("name", _STR(length=64), nullable=False),
        sa.Column("type", _STR(length=16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "contact_groups",
        sa.Column("contact_id", sa.Integer(), nullable=False),
        sa.Column("name", _STR(length=100), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["contact_id"], ["contacts.id"]),
        sa.PrimaryKeyConstraint("contact_id", "name"),
    )
    op.create_index("ix_contact_groups_name", "contact_groups", ["name", "contact_id"])
    op.create_table(
        "suppressions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("virtual_number", _STR(length=32), nullable=False),
        sa.Column("phone_hash", _STR(length=64), nullable=False),
        sa.Column("keyword", _STR(length=50), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("virtual_number", "phone_hash", name="uq_suppression_key"),
    )
    op.create_index("ix_suppressions_phone_hash", "suppressions", ["phone_hash"])


def downgrade() -> None:
    op.drop_index("ix_suppressions_phone_hash", table_name="suppressions")
    op.drop_table("suppressions")
    op.drop_index("ix_contact_groups_name", table_name="contact_groups")
    op.drop_table("contact_groups")
    op.drop_table("contact_fields")
    with op.batch_alter_table("contacts") as batch:
        batch.drop_column("updated_at")
        batch.drop_column("fields")
        batch.drop_column("language")
