"""Schema migrations with Alembic: `smsbot db upgrade`, also run by `smsbot serve` at start-up."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(sync_url: str) -> Config:
    """Return an Alembic config for smsbot's migrations on `sync_url` (a sync driver URL)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", sync_url.replace("%", "%%"))
    return cfg


def upgrade(sync_url: str, revision: str = "head") -> None:
    """Bring the database at `sync_url` up to `revision` (blocking: call it off the event loop)."""
    command.upgrade(alembic_config(sync_url), revision)
