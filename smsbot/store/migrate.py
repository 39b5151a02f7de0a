"""Schema migrations with Alembic: `smsbot db upgrade`, also run before any command uses the DB.

Alembic (and Mako) cost about 10 MB of memory, so `smsbot serve` asks the database for its
revision with plain SQL (`current_revision`) and runs `smsbot db upgrade` in a child process
only when a migration is due (smsbot.app.database): the long-lived server never imports Alembic.
A database that cannot be reached is DatabaseUnavailableError, one line naming it and the fix.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, inspect, make_url, pool, text
from sqlalchemy.exc import DBAPIError, OperationalError

from smsbot.store.engine import try_wal

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
HEAD = "0017"  # the newest revision in migrations/versions (a test keeps this true)
# Several `smsbot serve` processes may start at once; on PostgreSQL they take turns.
MIGRATION_LOCK_KEY = 0x736D73626F74  # "smsbot"
CONNECT_TIMEOUT = 5  # seconds; an unroutable host must not hang a command


class DatabaseUnavailableError(Exception):
    """The database cannot be reached, opened or used; the message names it and what to check."""


def shown_url(sync_url: str) -> str:
    """`sync_url` as a user wrote it: no driver suffix, the password masked."""
    url = make_url(sync_url)
    shown = url.set(drivername=url.get_backend_name())
    return shown.render_as_string(hide_password=True)


def unavailable(sync_url: str, exc: DBAPIError) -> DatabaseUnavailableError:
    """Turn a failed connection into one line: the database, the driver's reason, the fix."""
    url = make_url(sync_url)
    lines = str(exc.orig).strip().splitlines() or [type(exc.orig).__name__]
    reason = re.sub(r"\s+", " ", lines[0])
    if url.password:  # drivers do not quote it, but an error must never carry it
        reason = reason.replace(str(url.password), "***")
    if url.get_backend_name() == "sqlite":
        check = "check that its directory exists and that smsbot may write there"
    else:
        check = (
            "check that PostgreSQL is running and reachable from here, and the host, port,"
            " user, password and database name"
        )
    return DatabaseUnavailableError(
        f"cannot use the database {shown_url(sync_url)} ({reason}): {check} (SMSBOT_DATABASE_URL)"
    )


def _engine(sync_url: str) -> Any:
    args = {"connect_timeout": CONNECT_TIMEOUT} if sync_url.startswith("postgresql") else {}
    return create_engine(sync_url, poolclass=pool.NullPool, connect_args=args)


def enable_wal(sync_url: str, *, wait: float = 5.0) -> None:
    """Switch a SQLite file to WAL once at start-up, waiting out other connections' locks.

    SQLite refuses the switch at once while another connection holds a lock, so this retries
    quietly; WAL then stays in the file, and no later connection has to switch it.
    """
    if not sync_url.startswith("sqlite") or ":memory:" in sync_url:
        return
    engine = _engine(sync_url)
    try:
        with engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            assert raw is not None
            raw.isolation_level = None  # the switch cannot happen inside a transaction
            cursor = raw.cursor()
            cursor.execute("PRAGMA busy_timeout=10000")
            deadline = time.monotonic() + wait
            while not try_wal(cursor):
                if time.monotonic() > deadline:
                    log.warning(
                        "SQLite stays in its default journal mode: another process holds a lock"
                    )
                    return
                time.sleep(0.05)
    except OperationalError as exc:
        raise unavailable(sync_url, exc) from None
    finally:
        engine.dispose()


def alembic_config(sync_url: str) -> Config:
    """Return an Alembic config for smsbot's migrations on `sync_url` (a sync driver URL)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", sync_url.replace("%", "%%"))
    return cfg


def current_revision(sync_url: str) -> str | None:
    """Return the database's schema revision, or None for a database smsbot never migrated.

    Raises DatabaseUnavailableError when the database cannot be reached or opened.
    """
    engine = _engine(sync_url)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
            return str(row[0]) if row else None
    except OperationalError as exc:  # refused, unknown host, bad password, no such file
        raise unavailable(sync_url, exc) from None
    finally:
        engine.dispose()


def check_known(sync_url: str, revision: str | None) -> None:
    """Raise DatabaseUnavailableError if `revision` is not one of this smsbot's migrations."""
    known = {path.name.partition("_")[0] for path in (MIGRATIONS / "versions").glob("0*.py")}
    if revision is not None and revision not in known:
        raise DatabaseUnavailableError(
            f"the database {shown_url(sync_url)} is at schema revision {revision!r}, which this"
            f" smsbot does not know (its newest is {HEAD}): a newer smsbot migrated it; run that"
            " version, or point SMSBOT_DATABASE_URL at another database"
        )


def upgrade(sync_url: str, revision: str = "head") -> None:
    """Bring the database at `sync_url` up to `revision` (blocking: call it off the event loop)."""
    from alembic import command

    cfg = alembic_config(sync_url)
    if not sync_url.startswith("postgresql"):
        command.upgrade(cfg, revision)
        return
    engine = _engine(sync_url)
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
