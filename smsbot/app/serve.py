"""`smsbot serve`: migrate, assemble the bot, serve until SIGTERM, stop cleanly."""

from __future__ import annotations

import errno
import logging
import sys
from collections.abc import AsyncIterator

from aiohttp import web

from smsbot.app.assembly import (
    SANDBOX_API_KEY,
    build_handler,
    build_providers,
    local_sandbox,
)
from smsbot.app.database import migrate
from smsbot.app.dev_key import development_key, key_path
from smsbot.app.heap import settle_heap
from smsbot.app.server.app import create_app
from smsbot.app.server.keys import SANDBOX
from smsbot.channels.sandbox import Sandbox
from smsbot.clock import Clock, OffsetClock
from smsbot.config import SANDBOX_NUMBER, Settings, port_in_use
from smsbot.engine.contract import EchoHandler, StepHandler
from smsbot.engine.runtime import FlowRuntime
from smsbot.pipeline.bot import Bot
from smsbot.sms.phone import normalize

log = logging.getLogger("smsbot")

SHUTDOWN_TIMEOUT = 2.0  # aiohttp's wait for open requests; the bot then gets the rest of 10 s
WILDCARDS = ("0.0.0.0", "::", "")  # noqa: S104  (addresses meaning "every interface")


def serve(settings: Settings, *, echo: bool = False) -> None:
    """Run smsbot in the foreground on settings.host:settings.port until SIGINT/SIGTERM."""
    settings.check_serve()
    if done := migrate(settings, in_child=True):  # `make run` needs no manual migration step
        log.info("%s", done)
    if key := development_key(settings):
        settings = settings.replace(api_key=key)
        log.info(
            "operator API: no SMSBOT_API_KEY with the sandbox, so this development key is used"
            " (kept in %s); paste this line where you run curl:",
            key_path(settings),
        )
        print(f"export SMSBOT_API_KEY={key.get()}", file=sys.stderr, flush=True)
    handler: StepHandler = EchoHandler() if echo else build_handler(settings)
    if isinstance(handler, FlowRuntime):
        _say_service_names(settings, handler)
    settle_heap()
    try:
        web.run_app(
            _app(settings, handler),
            host=settings.host,
            port=settings.port,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
            access_log=None,
            print=lambda text: log.info("%s", text.strip()),
        )
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise port_in_use(settings.port, "SMSBOT_PORT (or pass --port)") from None
        raise


def _say_service_names(settings: Settings, runtime: FlowRuntime) -> None:
    """Log which name the HELP, STOP and START answers use, and the setting that sets it."""
    for raw in settings.numbers:
        number = normalize(raw, settings.default_region)
        service = runtime.router.binding(number).compliance.service
        log.info(
            'HELP, STOP and START answers on %s name the service "%s"'
            ' (service in [numbers."%s".compliance] of smsbot.toml)',
            number,
            service,
            raw,
        )
    example = settings.sender if (settings.sender or "").startswith("+") else SANDBOX_NUMBER
    others = "other numbers" if settings.numbers else "every number"
    log.info(
        'HELP, STOP and START answers on %s name the service "%s": set service = "Your'
        ' Business" in [numbers."%s".compliance] of smsbot.toml (docs/compliance.md)',
        others,
        runtime.router.default.compliance.service,
        example,
    )


async def _app(settings: Settings, handler: StepHandler) -> web.Application:
    sandbox: Sandbox | None = None
    sandbox_url = None
    clock: Clock | None = None
    if settings.provider == "sandbox":
        # Local development: one clock for the bot and the sandbox (webhook signatures carry
        # its time) that the console can move forward to fire reminders (docs/console.md).
        clock = OffsetClock()
    if (uses_sandbox := local_sandbox(settings)) is not None:  # default's or a declared one's
        # The sandbox listens where the bot does, so a container's published port reaches it.
        bot_host = "127.0.0.1" if settings.host in WILDCARDS else settings.host
        sandbox = Sandbox(
            api_key=SANDBOX_API_KEY,
            webhook_url=f"http://{bot_host}:{settings.port}/webhooks/divergent",
            webhook_secret=uses_sandbox.webhook_secrets[0].get(),
            clock=clock,
        )
        try:
            bound = await sandbox.start(settings.host, settings.sandbox_port)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise port_in_use(settings.sandbox_port, "SMSBOT_SANDBOX_PORT") from None
            raise
        sandbox_url = f"http://{bot_host}:{bound.rsplit(':', 1)[1]}"
        log.info(
            "sandbox provider on %s: text the bot with POST %s/sandbox/inbound", bound, sandbox_url
        )
    providers = build_providers(settings, sandbox_url=sandbox_url)
    bot = Bot(settings, providers=providers, handler=handler, clock=clock)
    app = create_app(bot)
    if sandbox is not None:
        app[SANDBOX] = sandbox

    async def sandbox_lifecycle(_app: web.Application) -> AsyncIterator[None]:
        yield
        if sandbox is not None:
            await sandbox.stop()

    app.cleanup_ctx.insert(0, sandbox_lifecycle)  # stopped after the bot
    return app
