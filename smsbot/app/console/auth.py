"""Sign-in and sign-out pages: an operator credential opens a session cookie.

Any credential the operator API takes signs in (smsbot.app.credentials.authenticate): the admin
key SMSBOT_API_KEY, whose session may act in every workspace, or a workspace's key, whose
session sees and acts in that workspace only.
"""

from __future__ import annotations

import logging
import secrets

from aiohttp import web

from smsbot.app.console.render import MOUNT, redirect, render, session_of
from smsbot.app.console.security import (
    CSRF_FIELD,
    SESSION_COOKIE,
    SESSIONS,
    SIGNIN_COOKIE,
    THROTTLE,
    current_session,
    same_token,
    set_cookie,
    signing_secret,
)
from smsbot.app.credentials import Caller, authenticate
from smsbot.app.server.keys import BOT

log = logging.getLogger(__name__)


async def caller_of(request: web.Request, key: str) -> Caller | None:
    """Who the operator credential `key` proves, if it may open a console session; else None.

    A workspace credential whose workspace is no longer configured opens none.
    """
    bot = request.config_dict[BOT]
    caller = await authenticate(bot, key)
    if caller is None or (
        caller.workspace is not None and caller.workspace not in bot.settings.workspaces
    ):
        return None
    return caller


def _next_page(raw: str | None) -> str:
    """Where to go after signing in: a console path, never another site."""
    if raw and raw.startswith(f"{MOUNT}/") and "//" not in raw and "\\" not in raw:
        return raw
    return f"{MOUNT}/"


async def sign_in_page(request: web.Request) -> web.Response:
    """GET /console/sign-in: the form, with a fresh CSRF value (also set as a cookie)."""
    if current_session(request) is not None:  # signed in already
        raise redirect(_next_page(request.query.get("next")))
    token = secrets.token_urlsafe(24)
    configured = signing_secret(request.config_dict[BOT].settings) is not None
    response = render(
        request,
        "sign_in.html",
        signin_token=token,
        next=_next_page(request.query.get("next")),
        error=None,
        configured=configured,
    )
    set_cookie(response, request, SIGNIN_COOKIE, token, f"{MOUNT}/sign-in")
    return response


async def sign_in(request: web.Request) -> web.StreamResponse:
    """POST /console/sign-in: check the form's token and the key; open a session."""
    form = await request.post()
    token, key, wanted = (form.get(n) for n in (CSRF_FIELD, "key", "next"))
    next_page = _next_page(wanted if isinstance(wanted, str) else None)
    address = request.remote or "?"
    if not same_token(
        token if isinstance(token, str) else None, request.cookies.get(SIGNIN_COOKIE, "-")
    ):
        raise web.HTTPForbidden(reason="the sign-in form expired: reload the page and sign in")
    throttle = request.config_dict[THROTTLE]
    if throttle.blocked(address):
        raise web.HTTPTooManyRequests(reason="too many wrong keys: wait five minutes")
    secret = signing_secret(request.config_dict[BOT].settings)
    caller = None
    if secret is not None and isinstance(key, str) and key:
        caller = await caller_of(request, key)
    if caller is None or secret is None:
        throttle.failed(address)
        configured = secret is not None
        error = "That key is not an operator key." if configured else None
        retry = secrets.token_urlsafe(24)
        response = render(
            request,
            "sign_in.html",
            status=401,
            signin_token=retry,
            next=next_page,
            error=error,
            configured=configured,
        )
        set_cookie(response, request, SIGNIN_COOKIE, retry, f"{MOUNT}/sign-in")
        return response
    response = redirect(next_page)
    set_cookie(
        response,
        request,
        SESSION_COOKIE,
        request.config_dict[SESSIONS].open(secret, caller.name, caller.workspace),
        MOUNT,
    )
    response.del_cookie(SIGNIN_COOKIE, path=f"{MOUNT}/sign-in")
    log.info("console: %s signed in (workspace %s)", caller.name, caller.workspace or "any")
    raise response


async def sign_out(request: web.Request) -> web.StreamResponse:
    """POST /console/sign-out: end the session and clear its cookie."""
    request.config_dict[SESSIONS].end(session_of(request))
    response = redirect(f"{MOUNT}/sign-in")
    response.del_cookie(SESSION_COOKIE, path=MOUNT)
    raise response
