"""`smsbot serve`: migrate, assemble the bot, serve until SIGTERM, stop cleanly."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator

from aiohttp import web

from smsbot.app.assembly import SANDBOX_API_KEY, build_handler, build_provider
from smsbot.app.server.app import create_app
from smsbot.app.server.keys import SANDBOX
from smsbot.channels.sandbox import Sandbox
from smsbot.clock import Clock, OffsetClock
from smsbot.config import ConfigError, Settings
from smsbot.engine.contract import EchoHandler, StepHandler
from smsbot.pipeline.bot import Bot
from smsbot.store.migrate import HEAD, current_revision

log = logging.getLogger("smsbot")

SHUTDOWN_TIMEOUT = 2.0  # aiohttp's wait for open requests; the bot then gets the rest of 10 s


def serve(settings: Settings, *, echo: bool = False) -> None:
    """Run smsbot in the foreground on settings.host:settings.port until SIGINT/SIGTERM."""
    settings.check_serve()
    migrate(settings)  # `make run` needs no manual migration step
    handler: StepHandler = EchoHandler() if echo else build_handler(settings)
    web.run_app(
        _app(settings, handler),
        host=settings.host,
        port=settings.port,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        access_log=None,
        print=lambda text: log.info("%s", text.strip()),
    )


def migrate(settings: Settings) -> None:
    """Bring the schema up to date; Alembic runs in a child process, so serving never loads it."""
    if current_revision(settings.sync_database_url) == HEAD:
        return
    log.info("migrating the database schema to revision %s", HEAD)
    # The child reads the same environment; Alembic's ~10 MB stay out of this long-lived process.
    done = subprocess.run(
        [sys.executable, "-m", "smsbot", "db", "upgrade"],
        env={**os.environ, "SMSBOT_DATABASE_URL": settings.database_url},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise ConfigError(f"the database migration failed: {done.stderr.strip()[-500:]}")


async def _app(settings: Settings, handler: StepHandler) -> web.Application:
    sandbox: Sandbox | None = None
    sandbox_url = None
    clock: Clock | None = None
    if settings.provider == "sandbox":
        # Local development: one clock for the bot and the sandbox (webhook signatures carry
        # its time) that the console can move forward to fire reminders (docs/console.md).
        clock = OffsetClock()
        webhook_host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host  # noqa: S104
        sandbox = Sandbox(
            api_key=SANDBOX_API_KEY,
            webhook_url=f"http://{webhook_host}:{settings.port}/webhooks/divergent",
            webhook_secret=settings.webhook_secrets()[0],
            clock=clock,
        )
        sandbox_url = await sandbox.start("127.0.0.1", settings.sandbox_port)
        log.info(
            "sandbox provider on %s: text the bot with POST %s/sandbox/inbound",
            sandbox_url,
            sandbox_url,
        )
    provider = build_provider(settings, sandbox_url=sandbox_url)
    bot = Bot(settings, provider=provider, handler=handler, clock=clock)
    app = create_app(bot)
    if sandbox is not None:
        app[SANDBOX] = sandbox

    async def sandbox_lifecycle(_app: web.Application) -> AsyncIterator[None]:
        yield
        if sandbox is not None:
            await sandbox.stop()

    app.cleanup_ctx.insert(0, sandbox_lifecycle)  # stopped after the bot
    return app
