"""Schema migrations with Alembic: `smsbot db upgrade`, also run by `smsbot serve` at start-up."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, pool, text

MIGRATIONS = Path(__file__).parent / "migrations"
# Several `smsbot serve` processes may start at once; on PostgreSQL they take turns.
MIGRATION_LOCK_KEY = 0x736D73626F74  # "smsbot"


def alembic_config(sync_url: str) -> Config:
    """Return an Alembic config for smsbot's migrations on `sync_url` (a sync driver URL)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", sync_url.replace("%", "%%"))
    return cfg


def upgrade(sync_url: str, revision: str = "head") -> None:
    """Bring the database at `sync_url` up to `revision` (blocking: call it off the event loop)."""
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
