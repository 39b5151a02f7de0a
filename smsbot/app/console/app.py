"""The console's sub-application: its routes, and the guard every request passes."""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import quote

from aiohttp import web
from aiohttp.typedefs import Handler

from smsbot.app.console import (
    auth,
    conversations,
    flows,
    health,
    people,
    results,
    scope,
    simulator,
)
from smsbot.app.console.render import HERE, MOUNT, render
from smsbot.app.console.security import (
    CSRF_FIELD,
    CSRF_HEADER,
    SECURITY_HEADERS,
    SESSION,
    SESSIONS,
    THROTTLE,
    Sessions,
    SignInThrottle,
    same_token,
)

log = logging.getLogger(__name__)

OPEN_PATHS = (f"{MOUNT}/sign-in", f"{MOUNT}/static/")  # everything else needs a session


def _signin_url(request: web.Request) -> str:
    page = request.method == "GET" and not request.headers.get("HX-Request")
    wanted = request.path_qs if page else f"{MOUNT}/"
    return f"{MOUNT}/sign-in?next={quote(wanted, safe='')}"


async def _checked(request: web.Request, handler: Handler) -> web.StreamResponse:
    session = await scope.checked_session(request)
    if session is not None:
        request[SESSION] = session  # what every page reads: who, and in which workspace
    if request.path.startswith(OPEN_PATHS):
        return await handler(request)
    if session is None:
        if request.headers.get("HX-Request"):  # htmx follows HX-Redirect with a full page load
            return web.Response(status=401, headers={"HX-Redirect": _signin_url(request)})
        raise web.HTTPSeeOther(location=_signin_url(request))
    if request.method not in ("GET", "HEAD"):
        given = request.headers.get(CSRF_HEADER)
        if given is None:
            form = await request.post()
            field = form.get(CSRF_FIELD)
            given = field if isinstance(field, str) else None
        if not same_token(given, session.csrf):
            raise web.HTTPForbidden(
                reason="the form's security token is missing or stale: reload the page and retry"
            )
    return await handler(request)


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Sign-in required, CSRF checked, errors as pages, security headers on every answer."""
    try:
        response = await _checked(request, handler)
    except web.HTTPException as exc:
        if exc.status < 400:
            exc.headers.update(SECURITY_HEADERS)
            raise
        response = render(request, "error.html", status=exc.status, reason=exc.reason)
    response.headers.update(SECURITY_HEADERS)
    return response


async def index(request: web.Request) -> web.StreamResponse:
    """GET /console/: the conversations list is the start page."""
    raise web.HTTPSeeOther(location=f"{MOUNT}/conversations")


def create_console() -> web.Application:
    """The console as a sub-application; create_app mounts it at MOUNT."""
    console = web.Application(middlewares=[guard])
    console[SESSIONS] = Sessions()
    console[THROTTLE] = SignInThrottle()
    console[simulator.CLOCK_LOCK] = asyncio.Lock()
    console.router.add_get("/", index)
    console.router.add_get("/sign-in", auth.sign_in_page)
    console.router.add_post("/sign-in", auth.sign_in)
    console.router.add_post("/sign-out", auth.sign_out)
    conversations.add_routes(console.router)
    simulator.add_routes(console.router)
    flows.add_routes(console.router)
    results.add_routes(console.router)
    people.add_routes(console.router)
    health.add_routes(console.router)
    scope.add_routes(console.router)
    console.router.add_static("/static", HERE / "static", append_version=False)
    return console
