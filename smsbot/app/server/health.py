"""GET /healthz (is the database answering?) and GET /metrics (Prometheus text)."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy import func, select

from smsbot.app.server.keys import BOT
from smsbot.store.models import EVENT_PENDING, message_open, messages_t


async def healthz(request: web.Request) -> web.Response:
    """200 when the database answers, else 503 (wire the provider's health check here)."""
    bot = request.app[BOT]
    if await bot.db.ping():
        return web.json_response({"status": "ok"})
    return web.json_response({"status": "unavailable", "reason": "database"}, status=503)


async def metrics(request: web.Request) -> web.Response:
    """Counters, latencies and queue depths in the Prometheus text format."""
    bot = request.app[BOT]
    try:
        async with bot.db.session() as s:
            inbox = (await s.execute(select(func.count()).where(EVENT_PENDING))).scalar_one()
            outbox = (
                await s.execute(select(func.count()).where(message_open(messages_t.c.outbox)))
            ).scalar_one()
        bot.metrics.set("smsbot_queue_depth", inbox, queue="inbox")
        bot.metrics.set("smsbot_queue_depth", outbox, queue="outbox")
    except Exception:  # metrics must answer even while the database is away
        bot.metrics.inc("smsbot_metrics_db_errors_total")
    return web.Response(text=bot.metrics.render(), content_type="text/plain", charset="utf-8")
