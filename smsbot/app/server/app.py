"""Build the aiohttp application around a Bot."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.typedefs import Handler

from smsbot.app.console import MOUNT as CONSOLE
from smsbot.app.console import create_console
from smsbot.app.logs import HTTP_LOG, keep_private
from smsbot.app.server import health, oauth
from smsbot.app.server.api import create_api
from smsbot.app.server.keys import BOT
from smsbot.channels.webhook_routes import WEBHOOK_ROUTES
from smsbot.config import SANDBOX_SECRET, Settings
from smsbot.engine.runtime import FlowRuntime
from smsbot.pipeline.bot import Bot

log = logging.getLogger(__name__)

SERVER = "smsbot"  # the Server header: aiohttp's default names the Python and aiohttp versions


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn aiohttp's plain-text HTTP errors (404, 405, 413) into JSON with a reason."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        body = json.dumps({"error": exc.reason})
        # Keep what the error says beyond its body: Allow on a 405, Connection: close on a 408.
        headers = {k: v for k, v in exc.headers.items() if k.lower() not in _BODY_HEADERS}
        response = web.Response(
            status=exc.status, text=body, content_type="application/json", headers=headers
        )
        if headers.get("Connection", "").lower() == "close":
            response.force_close()  # a 408: the rest of that body is not worth waiting for
        return response


_BODY_HEADERS = frozenset(("content-type", "content-length"))


async def _server_header(_request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER


def _warn_about_signatures(settings: Settings) -> None:
    if settings.insecure_no_signature:
        log.warning("webhook signatures are NOT verified (--insecure-no-signature): local use only")
    elif (
        settings.provider == "sandbox"
        and not settings.webhook_secret
        and settings.sandbox_webhook_secret == SANDBOX_SECRET
    ):
        log.warning(
            "webhooks are checked against the sandbox's public secret, which anyone can sign"
            " with: set SMSBOT_WEBHOOK_SECRET before this server is reachable from elsewhere"
        )


def create_app(bot: Bot, *, run_workers: bool = True) -> web.Application:
    """Return the application; starting it starts the bot, cleaning it up stops the bot."""
    settings = bot.settings
    keep_private(sensitive=settings.log_sensitive)
    handler_args: dict[str, object] = {"logger": HTTP_LOG}
    if not settings.log_sensitive:
        handler_args["access_log"] = None  # request lines carry phone numbers (?phone=...)
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[json_errors],
        handler_args=handler_args,
    )
    app.on_response_prepare.append(_server_header)
    app[BOT] = bot
    for channel_routes in WEBHOOK_ROUTES:
        app.router.add_routes(channel_routes)
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/metrics", health.metrics)
    oauth.add_routes(app)  # POST /oauth/token: access tokens for workspace keys
    flows = bot.handler.flows if isinstance(bot.handler, FlowRuntime) else {}
    app.add_subapp("/api", create_api(flows))
    app.add_subapp(CONSOLE, create_console())

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        _warn_about_signatures(settings)
        await bot.start(background=run_workers)
        yield
        await bot.stop()

    app.cleanup_ctx.append(lifecycle)
    return app
