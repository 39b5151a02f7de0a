"""Shared fixtures: a fresh database per test on SQLite, and on PostgreSQL when reachable."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from functools import cache
from pathlib import Path

import psycopg
import pytest

from smsbot.channels.sandbox import Sandbox
from smsbot.store.engine import Database

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


def _pg_admin_url() -> str:
    url = os.environ.get("SMSBOT_TEST_POSTGRES_URL", DEFAULT_PG)
    return url.replace("postgresql+asyncpg://", "postgresql://").replace(
        "postgresql+psycopg://", "postgresql://"
    )


@cache
def _pg_problem() -> str | None:
    """Return why PostgreSQL cannot be used, or None when it answers."""
    try:
        with psycopg.connect(_pg_admin_url(), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"PostgreSQL at {_pg_admin_url()} is unreachable: {exc}"
    return None


def require_postgres() -> None:
    """Skip when PostgreSQL is down, or fail when SMSBOT_TEST_POSTGRES_URL demands it."""
    problem = _pg_problem()
    if problem is None:
        return
    if os.environ.get("SMSBOT_TEST_POSTGRES_URL"):
        pytest.fail(f"{problem} (SMSBOT_TEST_POSTGRES_URL is set, so PostgreSQL is required)")
    pytest.skip(problem)


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture
def pg_database() -> Iterator[str]:
    """Create a private PostgreSQL database for one test; yield its plain postgresql:// URL."""
    require_postgres()
    admin = _pg_admin_url()
    name = f"smsbot_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(admin, name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An async database URL for an empty database: SQLite always, PostgreSQL when reachable."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'smsbot.db'}"
    else:
        plain = request.getfixturevalue("pg_database")
        yield plain.replace("postgresql://", "postgresql+asyncpg://", 1)


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    """A Database with every table created."""
    database = Database(db_url)
    await database.create_all()
    try:
        yield database
    finally:
        await database.dispose()


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    """The fake provider on a loopback port, accepting tests.support.API_KEY."""
    from tests.support import API_KEY

    sb = Sandbox(api_key=API_KEY)
    await sb.start()
    yield sb
    await sb.stop()
