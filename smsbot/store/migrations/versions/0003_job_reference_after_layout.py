"""APScheduler job reference after the package layout change

The timer job's callable moved from smsbot.scheduler to smsbot.pipeline.scheduler. APScheduler
stores each job's reference as text inside a pickled state, so jobs stored before the move would
fail to load ("No module named smsbot.scheduler"). This rewrites the stored reference in place.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 15:20:00
"""

import pickle
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "apscheduler_jobs"
OLD = "smsbot.scheduler:fire_timer"
NEW = "smsbot.pipeline.scheduler:fire_timer"


def _rewrite(before: str, after: str) -> None:
    bind = op.get_bind()
    if not sa.inspect(bind).has_table(TABLE):
        return  # APScheduler creates its table on first start; nothing stored yet
    jobs = sa.table(TABLE, sa.column("id", sa.String), sa.column("job_state", sa.LargeBinary))
    for job_id, blob in bind.execute(sa.select(jobs.c.id, jobs.c.job_state)).all():
        # Our own rows, written by APScheduler's SQLAlchemyJobStore in this same database.
        state = pickle.loads(blob)  # noqa: S301
        if state.get("func") != before:
            continue
        state["func"] = after
        blob = pickle.dumps(state, pickle.HIGHEST_PROTOCOL)
        bind.execute(jobs.update().where(jobs.c.id == job_id).values(job_state=blob))


def upgrade() -> None:
    _rewrite(OLD, NEW)


def downgrade() -> None:
    _rewrite(NEW, OLD)
