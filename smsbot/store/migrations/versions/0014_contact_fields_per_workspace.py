"""contact fields per workspace: one client's field types are not another's

Each workspace declares its own custom fields (`visit` may be a datetime for one client and free
text for another); existing declarations become the `default` workspace's.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04 23:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

from smsbot.store.types import UTCDateTime

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _column() -> sa.Column[str]:
    return sa.Column(
        "workspace",
        sqlmodel.sql.sqltypes.AutoString(length=64),
        nullable=False,
        server_default="default",
    )


def _sqlite_copy(key: list[str], workspace: bool) -> None:
    # SQLite cannot change a primary key in place: a new table, the rows copied, renamed.
    columns = [
        *([_column()] if workspace else []),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("type", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    ]
    op.create_table("_contact_fields_new", *columns, sa.PrimaryKeyConstraint(*key))
    names = "name, type, created_at"
    into = ("workspace, " if workspace else "") + names
    taken = ("'default', " if workspace else "") + names
    op.execute(f"INSERT INTO _contact_fields_new ({into}) SELECT {taken} FROM contact_fields")
    op.drop_table("contact_fields")
    op.rename_table("_contact_fields_new", "contact_fields")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.add_column("contact_fields", _column())
        op.drop_constraint("contact_fields_pkey", "contact_fields", type_="primary")
        op.create_primary_key("contact_fields_pkey", "contact_fields", ["workspace", "name"])
    else:
        _sqlite_copy(["workspace", "name"], workspace=True)


def downgrade() -> None:
    op.execute("DELETE FROM contact_fields WHERE workspace != 'default'")
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint("contact_fields_pkey", "contact_fields", type_="primary")
        op.create_primary_key("contact_fields_pkey", "contact_fields", ["name"])
        op.drop_column("contact_fields", "workspace")
    else:
        _sqlite_copy(["name"], workspace=False)
