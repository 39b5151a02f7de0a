"""workspaces: every row carries its workspace; existing rows are the `default` one's

Contacts become unique per (workspace, phone): the same person may be two clients' contact.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 21:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = (
    "conversations",
    "messages",
    "opt_outs",
    "suppressions",
    "timers",
    "state_changes",
)
# SQLite's unnamed UNIQUE (phone) gets a name this way, so batch mode can drop it.
NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _column(nullable: bool = False) -> sa.Column[str]:
    return sa.Column(
        "workspace",
        sqlmodel.sql.sqltypes.AutoString(length=64),
        nullable=nullable,
        server_default="default",
    )


def upgrade() -> None:
    for name in TABLES:
        with op.batch_alter_table(name, schema=None) as batch_op:
            batch_op.add_column(_column())
    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.add_column(_column(nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.add_column("contacts", _column())
        op.drop_constraint("contacts_phone_key", "contacts", type_="unique")
        op.create_unique_constraint("uq_contact_key", "contacts", ["workspace", "phone"])
    else:
        with op.batch_alter_table(
            "contacts", schema=None, recreate="always", naming_convention=NAMING
        ) as batch_op:
            batch_op.add_column(_column())
            batch_op.drop_constraint("uq_contacts_phone", type_="unique")
            batch_op.create_unique_constraint("uq_contact_key", ["workspace", "phone"])


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint("uq_contact_key", "contacts", type_="unique")
        op.create_unique_constraint("contacts_phone_key", "contacts", ["phone"])
        op.drop_column("contacts", "workspace")
    else:
        with op.batch_alter_table("contacts", schema=None, recreate="always") as batch_op:
            batch_op.drop_constraint("uq_contact_key", type_="unique")
            batch_op.create_unique_constraint("uq_contacts_phone", ["phone"])
            batch_op.drop_column("workspace")
    for name in (*TABLES, "webhook_events"):
        with op.batch_alter_table(name, schema=None) as batch_op:
            batch_op.drop_column("workspace")
