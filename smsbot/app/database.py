"""Before a command uses the database: reach it and bring its schema up to date, as `serve` does.

Every command that touches the database goes through `migrate`, so a fresh database behaves the
same under `smsbot serve`, `send`, `start`, `events` and `db upgrade`: its schema is created,
and the command says so in one line. An unreachable database is one line too, never a traceback.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator

from sqlalchemy import Engine, create_engine, pool
from sqlalchemy.exc import DBAPIError

from smsbot.config import Settings
from smsbot.store.migrate import (
    HEAD,
    DatabaseUnavailableError,
    check_known,
    current_revision,
    enable_wal,
    shown_url,
    unavailable,
    upgrade,
)


def migrate(settings: Settings, *, in_child: bool = False) -> str | None:
    """Bring the schema to the newest revision; return what was done, or None if nothing was.

    `in_child` runs Alembic in a child process (`smsbot db upgrade`): the long-lived server then
    never loads its ~10 MB. Raises DatabaseUnavailableError when the database cannot be used.
    """
    url = settings.sync_database_url
    before = current_revision(url)
    enable_wal(url)  # before any engine connects: switching later can meet a lock and fail
    if before == HEAD:
        return None
    check_known(url, before)
    if in_child:
        # The child reads the same environment and settles its own errors into one line.
        done = subprocess.run(
            [sys.executable, "-m", "smsbot", "db", "upgrade"],
            env={**os.environ, "SMSBOT_DATABASE_URL": settings.database_url},
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            reason = last.removeprefix("smsbot: ")[-300:]
            raise DatabaseUnavailableError(f"migrating {shown_url(url)} failed: {reason}")
    else:
        upgrade(url)
    if before is None:
        return f"created the database schema (revision {HEAD}) in {shown_url(url)}"
    return f"upgraded the database schema in {shown_url(url)} from revision {before} to {HEAD}"


@contextlib.contextmanager
def command_engine(settings: Settings) -> Iterator[Engine]:
    """A migrated database's synchronous engine for one CLI command; unreachable is one line."""
    if done := migrate(settings):
        print(f"smsbot: {done}", file=sys.stderr)
    url = settings.sync_database_url
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        yield engine
    except DBAPIError as exc:
        raise unavailable(url, exc) from None
    finally:
        engine.dispose()
