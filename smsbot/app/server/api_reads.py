"""The operator API's reads (a phone's conversations, a flow's results) in one workspace, and
what every route checks of a request: its flow, its recipient, its query parameters."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy import select

from smsbot.app.console.figures import PeriodError, compute, parse_period
from smsbot.app.operations import OperatorError, resolve_recipient
from smsbot.app.server import scope
from smsbot.app.server.keys import BOT
from smsbot.app.server.responses import problem
from smsbot.app.server.schema import CONVERSATIONS, WORKSPACE, Field, FieldError
from smsbot.config import Settings
from smsbot.engine.runtime import FlowRuntime
from smsbot.store.models import conversations_t, messages_t, opt_outs_t
from smsbot.workspaces import Workspace

MAX_MESSAGES = 100  # per conversation in GET /api/conversations


def runtime_of(request: web.Request) -> FlowRuntime:
    handler = request.config_dict[BOT].handler
    if not isinstance(handler, FlowRuntime):
        raise web.HTTPNotFound(reason="this server runs no flows: it was started in echo mode")
    return handler


def flow_named(request: web.Request) -> tuple[FlowRuntime, str]:
    runtime = runtime_of(request)
    name = request.match_info["name"]
    if name not in runtime.flows:
        known = ", ".join(sorted(runtime.flows)) or "none"
        raise web.HTTPNotFound(reason=f"no flow named {name!r}; known flows: {known}")
    return runtime, name


def recipient(settings: Settings, ws: Workspace, raw: str, field: str = "to") -> str:
    try:
        return resolve_recipient(settings, raw, region=ws.default_region)
    except OperatorError as exc:
        raise FieldError(field, str(exc)) from None


def only_query(request: web.Request, *known: Field) -> None:
    """Refuse query parameters the route does not take, as the OpenAPI document says."""
    names = [f.name for f in (*known, WORKSPACE)]
    for name in request.query:
        if name not in names:
            takes = f"it takes {', '.join(names)}" if names else "it takes none"
            raise FieldError(name, f"is not a query parameter of this route; {takes}")


async def conversations(request: web.Request) -> web.Response:
    """GET /api/conversations?phone=…: state, data and messages with their statuses."""
    bot = request.config_dict[BOT]
    only_query(request, CONVERSATIONS)
    raw = CONVERSATIONS.check_query(request.query)
    ws = scope.workspace(request)
    phone = recipient(bot.settings, ws, str(raw), "phone")
    c, o = conversations_t, opt_outs_t
    async with bot.db.session() as s:
        convos = (
            await s.execute(select(c).where(c.c.phone == phone, c.c.workspace == ws.name))
        ).all()
        opted = {
            vn
            for (vn,) in (
                await s.execute(
                    select(o.c.virtual_number).where(o.c.phone == phone, o.c.workspace == ws.name)
                )
            ).all()
        }
        out = []
        for convo in convos:
            msgs = (
                await s.execute(
                    select(messages_t)
                    .where(
                        messages_t.c.phone == phone,
                        messages_t.c.virtual_number == convo.virtual_number,
                        messages_t.c.workspace == ws.name,
                    )
                    .order_by(messages_t.c.created_at.desc())
                    .limit(MAX_MESSAGES)
                )
            ).all()
            out.append(_conversation_json(convo, convo.virtual_number in opted, reversed(msgs)))
    return web.json_response({"phone": phone, "conversations": out})


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _conversation_json(c: Any, opted_out: bool, msgs: Any) -> dict[str, Any]:
    return {
        "virtual_number": c.virtual_number,
        "flow": c.flow,
        "state": c.state,
        "data": c.data,
        "active": c.flow is not None,
        "opted_out": opted_out,
        "started_at": _iso(c.started_at),
        "last_activity_at": _iso(c.last_activity_at),
        "ended_at": _iso(c.ended_at),
        "end_reason": c.end_reason,
        "end_state": c.end_state,
        "messages": [
            {
                "id": m.id,
                "direction": m.direction,
                "text": m.body,
                "status": m.status,
                "segments": m.segments,
                "encoding": m.encoding,
                "created_at": _iso(m.created_at),
                "sent_at": _iso(m.sent_at),
                "error": m.error,
            }
            for m in msgs
        ],
    }


async def flow_results(request: web.Request) -> web.Response:
    """GET /api/flows/{name}/results?from=&to=: a flow's figures in the workspace (as JSON)."""
    _, name = flow_named(request)
    for field in request.query:
        if field == WORKSPACE.name:
            continue
        if field not in ("from", "to"):
            raise FieldError(field, "is not a query parameter of this route; it takes from, to")
        if not request.query[field].strip():
            raise FieldError(field, "must be a date such as 2026-01-31, or left out")
    bot = request.config_dict[BOT]
    try:
        period = parse_period(request.query, bot.clock.now(), bot.settings.default_timezone)
        results = await compute(bot, name, period, workspace=scope.workspace(request).name)
    except PeriodError as exc:
        return problem(400, str(exc), field="from/to")
    return web.json_response(results.as_json())
