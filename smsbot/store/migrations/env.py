"""Alembic environment: runs migrations with a synchronous driver (sqlite3 or psycopg)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, engine_from_config, pool
from sqlmodel import SQLModel

from smsbot.store import models  # noqa: F401  (registers the tables)

config = context.config
target_metadata = SQLModel.metadata


def _ours(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    # APScheduler keeps its job store in the same database; that table is not ours to migrate.
    return not (type_ == "table" and name == "apscheduler_jobs")


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        include_object=_ours,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run every pending migration, on the caller's connection when it passes one."""
    given = config.attributes.get("connection")
    if given is not None:  # smsbot.store.migrate holds an advisory lock on it
        _run(given)
        return
    connectable = engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with connectable.connect() as connection:
        _run(connection)


run_migrations_online()
