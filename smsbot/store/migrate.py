"""Schema migrations with Alembic: `smsbot db upgrade`, also run by `smsbot serve` at start-up.

Alembic (and Mako) cost about 10 MB of memory, so `smsbot serve` asks the database for its
revision with plain SQL (`current_revision`) and runs `smsbot db upgrade` in a child process
only when a migration is due: the long-lived server never imports Alembic.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import create_engine, inspect, pool, text

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"
HEAD = "0005"  # the newest revision in migrations/versions (a test keeps this true)
# Several `smsbot serve` processes may start at once; on PostgreSQL they take turns.
MIGRATION_LOCK_KEY = 0x736D73626F74  # "smsbot"


def alembic_config(sync_url: str) -> Config:
    """Return an Alembic config for smsbot's migrations on `sync_url` (a sync driver URL)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", sync_url.replace("%", "%%"))
    return cfg


def current_revision(sync_url: str) -> str | None:
    """Return the database's schema revision, or None for a database smsbot never migrated."""
    engine = create_engine(sync_url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
            return str(row[0]) if row else None
    finally:
        engine.dispose()


def upgrade(sync_url: str, revision: str = "head") -> None:
    """Bring the database at `sync_url` up to `revision` (blocking: call it off the event loop)."""
    from alembic import command

    cfg = alembic_config(sync_url)
    if not sync_url.startswith("postgresql"):
        command.upgrade(cfg, revision)
        return
    engine = create_engine(sync_url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
            conn.commit()
            try:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
                conn.commit()
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
                conn.commit()
    finally:
        engine.dispose()
