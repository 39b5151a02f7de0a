"""bulk runs: the file each `smsbot start --csv` run started from

bulk_runs holds one row a run: its id (in its starts' event ids, bulk:RUN:LINE), workspace,
flow, the SHA-256 of the file's bytes and how many rows it was to start. `--resume RUN`
refuses a file whose digest differs: its lines would no longer be the run's lines.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06 22:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

from smsbot.store.types import UTCDateTime

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "bulk_runs",
        sa.Column("run", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("workspace", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("flow", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("file_sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("run"),
    )


def downgrade() -> None:
    op.drop_table("bulk_runs")
