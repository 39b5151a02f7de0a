"""The operator API for the user's own systems: start flows, send messages, read conversations.

Every route needs a bearer credential and acts in one workspace (scope.py): it reads and changes
that workspace's rows only, and another workspace's are answered as if they did not exist. Bad
input is a 400 naming the field.
"""

from __future__ import annotations

import csv
import functools
import logging
import uuid
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from smsbot.app.bulk import (
    BulkInputError,
    RowError,
    enqueue_starts,
    rows_from_csv,
    rows_from_json,
    validate,
)
from smsbot.app.operations import (
    OperatorError,
    inbox_entry,
    operator_sender,
    operator_text,
    opt_outs_stopping,
    opted_out_error,
)
from smsbot.app.server import api_contacts, api_reads, scope
from smsbot.app.server.api_reads import flow_named, only_query, recipient, runtime_of
from smsbot.app.server.bodies import check_storable, read_body, read_json
from smsbot.app.server.keys import BOT
from smsbot.app.server.openapi import build_openapi
from smsbot.app.server.responses import problem
from smsbot.app.server.schema import (
    MESSAGE,
    SKIP_INVALID,
    START_MANY_POLICY,
    FieldError,
    start_body,
)
from smsbot.config import Settings
from smsbot.engine.contract import EventKind
from smsbot.engine.flow import Flow
from smsbot.engine.runtime import FlowRuntime
from smsbot.engine.startdata import StartDataError
from smsbot.pipeline.bot import Bot
from smsbot.sms.templates import RenderedSms, TemplateError
from smsbot.workspaces import DEFAULT, Workspace

log = logging.getLogger(__name__)

_OPENAPI = web.AppKey("openapi", dict[str, Any])


@web.middleware
async def bearer_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse (401/403) a request without a credential for its workspace; the document is open."""
    if request.path.endswith("/openapi.json"):
        return await handler(request)
    if (refused := await scope.identify(request)) is not None:
        return refused
    try:
        return await handler(request)
    except FieldError as exc:
        return problem(400, exc.reason, field=exc.field)
    except OperatorError as exc:
        return problem(400, str(exc))


def _sender(settings: Settings, ws: Workspace, raw: str | None) -> str:
    try:
        return operator_sender(settings, raw, workspace=ws.name)
    except OperatorError as exc:
        raise FieldError("from", str(exc)) from None


def _start_data(
    request: web.Request, runtime: FlowRuntime, name: str, data: dict[str, Any]
) -> dict[str, Any]:
    """The flow's start data checked against its declaration (a 400 naming the field)."""
    flow = runtime.flows[name]
    try:
        return flow.parse_start_data(data, now=request.config_dict[BOT].clock.now())
    except StartDataError as exc:
        raise FieldError(exc.field, str(exc)) from None
    except (ValueError, TypeError, KeyError) as exc:
        raise FieldError("data", str(exc).strip("'\"")) from None


async def _opted_out(bot: Bot, vn: str, phone: str, workspace: str) -> bool:
    async with bot.db.session() as s:
        return (await s.execute(opt_outs_stopping(vn, phone, workspace))).first() is not None


async def queue_outside_event(
    bot: Bot,
    kind: EventKind,
    payload: dict[str, Any],
    vn: str,
    phone: str,
    idempotency_key: str | None = None,
    workspace: str = DEFAULT,
) -> str | None:
    """Queue a start or a send for (vn, phone): "queued" or "duplicate"; None if opted out."""
    if await _opted_out(bot, vn, phone, workspace):
        return None
    key = idempotency_key or uuid.uuid4().hex
    # Idempotency keys are each workspace's own: one client's key never meets another's
    # (`default` keeps the form from before workspaces, so a retry across an upgrade holds).
    scoped = key if workspace == DEFAULT else f"{workspace}:{key}"
    entry = inbox_entry(
        workspace,
        source="api",
        event_id=f"{kind.value}:{scoped}"[:200],
        kind=kind,
        payload=payload,
        virtual_number=vn,
        phone=phone,
    )
    outcome = await bot.inbox.accept(entry)
    bot.dispatcher.notify()
    return "queued" if outcome.value == "new" else outcome.value


async def _enqueue(
    request: web.Request,
    kind: EventKind,
    payload: dict[str, Any],
    vn: str,
    phone: str,
    **answer: Any,
) -> web.Response:
    bot = request.config_dict[BOT]
    key = request.headers.get("Idempotency-Key")
    ws = scope.workspace(request).name
    status = await queue_outside_event(bot, kind, payload, vn, phone, key, ws)
    if status is None:
        return problem(409, opted_out_error(phone, vn))
    return web.json_response({"status": status, "to": phone, "from": vn, **answer}, status=202)


async def start_flow(request: web.Request) -> web.Response:
    """POST /api/flows/{name}/start {"to", "from"?, "data"?, "policy"?}."""
    runtime, name = flow_named(request)
    only_query(request)
    body = start_body(runtime.flows[name]).check(await read_json(request))
    settings, ws = request.config_dict[BOT].settings, scope.workspace(request)
    phone = recipient(settings, ws, body["to"])
    vn = _sender(settings, ws, body.get("from"))
    data = _start_data(request, runtime, name, body.get("data", {}))
    payload = {"flow": name, "data": data, "policy": body.get("policy", "interrupt")}
    return await _enqueue(request, EventKind.START, payload, vn, phone)


async def start_many(request: web.Request) -> web.Response:
    """POST /api/flows/{name}/start-many: a JSON list, or a CSV upload (text/csv)."""
    runtime, name = flow_named(request)
    bot = request.config_dict[BOT]
    only_query(request, SKIP_INVALID, START_MANY_POLICY)
    skip_invalid = SKIP_INVALID.check_query(request.query) is True
    policy = str(START_MANY_POLICY.check_query(request.query) or "interrupt")
    csv_upload = request.content_type in ("text/csv", "application/csv")
    try:
        if csv_upload:
            text = (await read_body(request)).decode("utf-8-sig")
            check_storable(text, "body")
            rows = rows_from_csv(text)
        else:
            rows = rows_from_json(await read_json(request))
    except (BulkInputError, csv.Error) as exc:
        return problem(400, str(exc), field="body")
    except UnicodeDecodeError:
        return problem(400, "the CSV is not UTF-8", field="body")
    rows, misshapen = _shaped(runtime.flows[name], rows)
    parse = functools.partial(
        runtime.flows[name].parse_start_data, now=bot.clock.now(), from_text=csv_upload
    )
    ws = scope.workspace(request).name
    good, bad = validate(rows, bot.settings, parse, workspace=ws)
    bad = sorted([*misshapen, *bad], key=lambda e: e.line)
    if bad and not skip_invalid:
        return web.json_response(
            {
                "error": f"{len(bad)} invalid row(s); nothing was started"
                " (fix them, or pass ?skip_invalid=true)",
                "invalid": [{"line": e.line, "field": e.field, "error": e.error} for e in bad],
            },
            status=400,
        )
    result = await enqueue_starts(
        bot.db,
        bot.handler,
        bot.clock,
        name,
        good,
        policy=policy,
        workspace=ws,
        step_timeout=bot.settings.step_timeout,
    )
    result.invalid = bad
    bot.dispatcher.notify()  # the starts left queued
    if (sender := bot.senders.get(ws)) is not None:
        sender.notify()  # the messages the stepped starts wrote
    return web.json_response(result.as_json(), status=202)


def _shaped(
    flow: type[Flow], rows: list[tuple[int, dict[str, Any]]]
) -> tuple[list[tuple[int, dict[str, Any]]], list[RowError]]:
    """Split rows into those the row schema allows and an error for each of the others."""
    shape = start_body(flow, row=True)
    good, bad = [], []
    for line, row in rows:
        try:
            if "__error__" not in row:  # validate() reports those
                shape.check(row)
        except FieldError as exc:
            bad.append(RowError(line, exc.field, exc.reason))
            continue
        good.append((line, row))
    return good, bad


async def send_message(request: web.Request) -> web.Response:
    """POST /api/messages {"to", "from"?, "text"} or {"to", "from"?, "template", "data"?}."""
    bot = request.config_dict[BOT]
    settings = bot.settings
    only_query(request)
    body = MESSAGE.check(await read_json(request))
    ws = scope.workspace(request)
    phone = recipient(settings, ws, body["to"])
    vn = _sender(settings, ws, body.get("from"))
    if "template" in body:
        runtime = runtime_of(request)
        context = {**body.get("data", {}), "phone": phone, "virtual_number": vn}
        try:
            sms = runtime.templates.render(body["template"], context)
        except TemplateError as exc:
            raise FieldError("template", str(exc)) from None
    else:
        handler = bot.handler
        templates = handler.templates if isinstance(handler, FlowRuntime) else None
        try:
            sms = operator_text(settings, body["text"], templates)
        except OperatorError as exc:
            raise FieldError("text", str(exc)) from None
    payload = {"text": sms.text}
    return await _enqueue(request, EventKind.SEND, payload, vn, phone, **_size(settings, sms))


def _size(settings: Settings, sms: RenderedSms) -> dict[str, Any]:
    answer: dict[str, Any] = {"segments": sms.segments, "encoding": sms.encoding.value}
    if sms.segments > settings.max_segments:  # SMSBOT_SEGMENT_POLICY=warn let it through
        answer["warning"] = (
            f"{sms.segments} segments, over SMSBOT_MAX_SEGMENTS ({settings.max_segments}):"
            " sent anyway because SMSBOT_SEGMENT_POLICY is warn"
        )
    return answer


async def openapi(request: web.Request) -> web.Response:
    """GET /api/openapi.json: this deployment's operator API, with its flows' start routes."""
    return web.json_response(request.app[_OPENAPI])


def create_api(flows: Mapping[str, type[Flow]]) -> web.Application:
    """The operator API as a sub-application mounted at /api, describing `flows`."""
    api = web.Application(middlewares=[bearer_auth])
    api[_OPENAPI] = build_openapi(flows)
    api.router.add_post("/flows/{name}/start", start_flow)
    api.router.add_post("/flows/{name}/start-many", start_many)
    api.router.add_get("/flows/{name}/results", api_reads.flow_results)
    api.router.add_post("/messages", send_message)
    api.router.add_get("/conversations", api_reads.conversations)
    api.router.add_get("/openapi.json", openapi)
    api_contacts.add_routes(api)
    return api
