"""pytest plugin registered through the `pytest11` entry point; fixtures for flow tests.

Fixtures (each built only when a test asks for it):

    bot               a BotDriver running the project's flows; see docs/testing-flows.md
    smsbot_settings   SMSBOT_* overrides for `bot` (default: none); override it to change them
    smsbot_now        the virtual time a test starts at (default: Thu 2026-01-15 09:00 UTC)

The ini option `smsbot_project` names the directory holding flows/, templates/ and
smsbot.toml, relative to the rootdir (default: the rootdir). pytest loads this module in every
project where smsbot is installed, so it imports nothing heavy until a fixture runs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from smsbot.testing.driver import BotDriver

try:
    import pytest_asyncio
except ImportError:  # the `bot` fixture then says what to install
    pytest_asyncio = None  # type: ignore[assignment]


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the `smsbot_project` ini option."""
    parser.addini(
        "smsbot_project",
        "smsbot: directory with flows/, templates/ and smsbot.toml, relative to the rootdir",
        default=".",
    )


@pytest.fixture
def smsbot_settings() -> Mapping[str, str]:
    """SMSBOT_* settings for the `bot` fixture, over smsbot.toml; override this fixture."""
    return {}


@pytest.fixture
def smsbot_now() -> dt.datetime:
    """The virtual time a `bot` test starts at; override this fixture to change it."""
    from smsbot.testing.driver import DEFAULT_NOW

    return DEFAULT_NOW


async def _driver(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    smsbot_settings: Mapping[str, str],
    smsbot_now: dt.datetime,
) -> AsyncIterator[BotDriver]:
    """A BotDriver on a fresh SQLite database in tmp_path (unless the settings name another)."""
    from smsbot.testing.driver import BotDriver, driver_settings

    project = request.config.rootpath / str(request.config.getini("smsbot_project"))
    database = f"sqlite+aiosqlite:///{tmp_path / 'smsbot.db'}"
    settings = driver_settings(project, database, smsbot_settings)
    async with BotDriver(settings, now=smsbot_now) as driver:
        yield driver


if pytest_asyncio is not None:
    bot = pytest_asyncio.fixture(_driver, name="bot")
else:

    @pytest.fixture(name="bot")
    def _no_asyncio() -> None:
        """Explain that the `bot` fixture needs pytest-asyncio."""
        pytest.fail("smsbot's `bot` fixture needs pytest-asyncio: pip install pytest-asyncio")
