"""The phone simulator (sandbox provider only): text the bot as any phone, start flows, move time.

Messages go through the in-process sandbox, which posts them to the bot's webhook signed, as
the provider would; the thread shows what the bot stored, so delivery statuses change live.
A phone texts one of the session's workspace's numbers, and only a workspace on the sandbox
provider has the simulator. The clock is the whole deployment's: only the admin moves it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web
from sqlalchemy import select

from smsbot.app.console import samples, scope, timetravel
from smsbot.app.console.render import MOUNT, redirect, render, session_of
from smsbot.app.operations import OperatorError, resolve_recipient, resolve_sender
from smsbot.app.server.api import queue_outside_event
from smsbot.app.server.keys import BOT, SANDBOX
from smsbot.channels.base import describe
from smsbot.channels.sandbox import Sandbox
from smsbot.config import SANDBOX_NUMBER, parse_duration
from smsbot.engine.contract import EventKind
from smsbot.store.models import messages_t

log = logging.getLogger(__name__)

THREAD_LIMIT = 50
MAX_TEXT = 1_600  # ten-odd segments: more is a mistake in a simulator
CLOCK_LOCK = web.AppKey("console_clock_lock", asyncio.Lock)


CLOCK_IS_SHARED = (
    "the bot's clock is shared by every workspace: only the admin key (SMSBOT_API_KEY) moves it"
)


def _sandbox(request: web.Request) -> Sandbox | None:
    if scope.workspace(request).provider != "sandbox":
        return None
    return request.config_dict.get(SANDBOX)


def numbers(request: web.Request) -> list[str]:
    """The numbers a simulated phone can text: the workspace's own; for the catch-all `default`
    (no other workspace declared), the default sender and the configured ones."""
    settings = request.config_dict[BOT].settings
    here = scope.workspace(request)
    if not here.catch_all:
        return sorted(here.numbers)
    found = []
    for raw in [settings.sender or SANDBOX_NUMBER, *settings.numbers]:
        try:
            found.append(resolve_sender(settings, raw))
        except OperatorError:
            continue
    return [n for n in dict.fromkeys(found) if scope.owns(request, n)]


def _pick(request: web.Request, source: Any) -> tuple[str, str, list[str]]:
    """The phone and number chosen in `source` (a query or a form), normalised, and problems."""
    settings = request.config_dict[BOT].settings
    choices = numbers(request)
    problems = []
    phone = str(source.get("phone") or samples.SAMPLE_PHONE).strip()
    number = str(source.get("number") or (choices[0] if choices else SANDBOX_NUMBER)).strip()
    try:
        phone = resolve_recipient(settings, phone)
    except OperatorError as exc:
        problems.append(f"Phone: {exc}")
    try:
        number = resolve_sender(settings, number)
    except OperatorError as exc:
        problems.append(f"Number: {exc}")
    else:
        if not scope.owns(request, number):
            mine = ", ".join(choices) or "none"
            problems.append(
                f"Number: {number} is not a number of workspace {scope.workspace_name(request)};"
                f" its numbers: {mine}"
            )
    return phone, number, problems


async def _thread(request: web.Request, phone: str, number: str) -> list[Any]:
    m = messages_t
    query = (
        select(m)
        .where(
            m.c.virtual_number == number,
            m.c.phone == phone,
            m.c.workspace == scope.workspace_name(request),
        )
        .order_by(m.c.created_at.desc(), m.c.id)
        .limit(THREAD_LIMIT)
    )
    async with request.config_dict[BOT].db.session() as s:
        return list((await s.execute(query)).all())[::-1]


def _flows(request: web.Request) -> dict[str, Any]:
    return scope.flows(request)


async def simulator_page(
    request: web.Request, *, problems: list[str] | None = None, form: Any = None
) -> web.Response:
    """GET /console/simulator?phone=&number=: the phone, its thread, start and clock controls."""
    bot = request.config_dict[BOT]
    source = form if form is not None else request.query
    phone, number, picked = _pick(request, source)
    problems = [*(problems or []), *picked]
    flows = _flows(request)
    now = bot.clock.now()
    chosen_flow = str(source.get("flow") or next(iter(flows), ""))
    data = source.get("data")
    if not isinstance(data, str) and chosen_flow in flows:
        data = json.dumps(samples.start_data(flows[chosen_flow], now), indent=1)
    admin = session_of(request).is_admin
    clock = timetravel.movable(bot.clock) if admin else None
    return render(
        request,
        "simulator.html",
        status=400 if problems else 200,
        available=_sandbox(request) is not None,
        problems=problems,
        phone=phone,
        number=number,
        numbers=numbers(request),
        thread=[] if picked else await _thread(request, phone, number),
        text=str(source.get("text") or ""),
        flows=list(flows),
        chosen_flow=chosen_flow,
        data=data or "{}",
        clock=clock,
        clock_shared=not admin and timetravel.movable(bot.clock) is not None,
        next_due=await timetravel.next_due(bot) if clock else None,
        here=_here(phone, number),
    )


def _here(phone: str, number: str) -> str:
    return f"{MOUNT}/simulator?{urlencode({'phone': phone, 'number': number})}"


async def thread_fragment(request: web.Request) -> web.Response:
    """GET /console/simulator/thread?phone=&number=: the messages, polled by the page."""
    phone, number, problems = _pick(request, request.query)
    if problems:
        raise web.HTTPBadRequest(reason="; ".join(problems))
    thread = await _thread(request, phone, number)
    return render(request, "simulator_thread.html", thread=thread, phone=phone, number=number)


async def send(request: web.Request) -> web.StreamResponse:
    """POST /console/simulator/send {phone, number, text}: text the bot through the sandbox."""
    sandbox = _sandbox(request)
    if sandbox is None:
        raise web.HTTPNotFound(reason="the simulator needs the sandbox provider")
    form = await request.post()
    phone, number, problems = _pick(request, form)
    text = str(form.get("text") or "")
    if not text.strip():
        problems.append("Message: type something to send")
    elif len(text) > MAX_TEXT:
        problems.append(f"Message: at most {MAX_TEXT} characters")
    if not problems:
        try:
            status = await sandbox.text_bot(phone, number, text)
            if not 200 <= status < 300:
                problems.append(f"The bot answered the webhook with HTTP {status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            problems.append(f"Could not reach the bot's webhook: {describe(exc)}")
    if problems:
        return await simulator_page(request, problems=problems, form=form)
    raise redirect(_here(phone, number))


async def start(request: web.Request) -> web.StreamResponse:
    """POST /console/simulator/start {flow, phone, number, data}: start a flow for the phone."""
    bot = request.config_dict[BOT]
    form = await request.post()
    phone, number, problems = _pick(request, form)
    flows = _flows(request)
    name = str(form.get("flow") or "")
    data: Any = None
    if name not in flows:
        problems.append(f"Flow: pick one of {', '.join(flows) or 'none (no flows loaded)'}")
    try:
        data = json.loads(str(form.get("data") or "{}"))
    except json.JSONDecodeError as exc:
        problems.append(f"Data: not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})")
    if data is not None and not isinstance(data, dict):
        problems.append('Data: must be a JSON object, like {"name": "Sam"}')
    elif data is not None and name in flows:
        try:  # as the operator API checks it: the flow's declared start data
            data = flows[name].parse_start_data(data, now=bot.clock.now())
        except (ValueError, TypeError, KeyError) as exc:
            problems.append(f"Data: {str(exc).strip(chr(39) + chr(34))}")
    if not problems:
        payload = {"flow": name, "data": data, "policy": "interrupt"}
        status = await queue_outside_event(
            bot, EventKind.START, payload, number, phone, workspace=scope.workspace_name(request)
        )
        if status is None:
            problems.append(
                f"{phone} has opted out of messages from {number}: they must text START"
            )
    if problems:
        return await simulator_page(request, problems=problems, form=form)
    raise redirect(_here(phone, number))


async def advance(request: web.Request) -> web.StreamResponse:
    """POST /console/clock/advance {by: "1d"} or {to: "next"}: move the bot's clock forward."""
    bot = request.config_dict[BOT]
    clock = timetravel.movable(bot.clock)
    if not session_of(request).is_admin:
        raise web.HTTPForbidden(reason=CLOCK_IS_SHARED)
    if clock is None:
        raise web.HTTPNotFound(
            reason="the bot runs on the wall clock: time moves only with the sandbox provider"
        )
    form = await request.post()
    by = str(form.get("by") or "").strip().lower()
    back = str(form.get("back") or "")
    if not back.startswith(f"{MOUNT}/") or "//" in back:
        back = f"{MOUNT}/simulator"
    async with request.config_dict[CLOCK_LOCK]:
        now = bot.clock.now()
        if form.get("to") == "next":
            due = await timetravel.next_due(bot)
            if due is None:
                raise web.HTTPConflict(reason="nothing is scheduled: no timer or held message")
            target = due
        else:
            try:
                delta = parse_duration(by)
            except ValueError:
                raise web.HTTPBadRequest(
                    reason=f"advance by {by!r}? Give a duration such as 30m, 2h or 1d"
                ) from None
            if delta > timetravel.MAX_ADVANCE:
                raise web.HTTPBadRequest(reason="advance by at most 400 days at a time")
            target = now + delta
        fired = await timetravel.advance(bot, clock, target)
    log.info("console: clock moved on %s; %d timer(s) fired", target - now, fired)
    raise redirect(back)


def add_routes(router: web.UrlDispatcher) -> None:
    """Register this module's pages."""
    router.add_get("/simulator", simulator_page)
    router.add_get("/simulator/thread", thread_fragment)
    router.add_post("/simulator/send", send)
    router.add_post("/simulator/start", start)
    router.add_post("/clock/advance", advance)
