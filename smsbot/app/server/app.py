"""Build the aiohttp application around a Bot."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.typedefs import Handler

from smsbot.app.console import MOUNT as CONSOLE
from smsbot.app.console import create_console
from smsbot.app.server import health
from smsbot.app.server.api import create_api
from smsbot.app.server.keys import BOT
from smsbot.channels.webhook_routes import WEBHOOK_ROUTES
from smsbot.pipeline.bot import Bot

log = logging.getLogger(__name__)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn aiohttp's plain-text HTTP errors (404, 405, 413) into JSON with a reason."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        body = json.dumps({"error": exc.reason})
        return web.Response(status=exc.status, text=body, content_type="application/json")


def create_app(bot: Bot, *, run_workers: bool = True) -> web.Application:
    """Return the application; starting it starts the bot, cleaning it up stops the bot."""
    app = web.Application(client_max_size=bot.settings.max_body_bytes, middlewares=[json_errors])
    app[BOT] = bot
    for channel_routes in WEBHOOK_ROUTES:
        app.router.add_routes(channel_routes)
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/metrics", health.metrics)
    app.add_subapp("/api", create_api())
    app.add_subapp(CONSOLE, create_console())

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        if bot.settings.insecure_no_signature:
            log.warning(
                "webhook signatures are NOT verified (--insecure-no-signature): local use only"
            )
        await bot.start(background=run_workers)
        yield
        await bot.stop()

    app.cleanup_ctx.append(lifecycle)
    return app
