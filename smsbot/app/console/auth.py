"""Sign-in and sign-out pages: the operator credential opens a session cookie."""

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
)
from smsbot.app.server.keys import BOT
from smsbot.config import Secret

log = logging.getLogger(__name__)

ADMIN = "admin"  # the name a session opened with SMSBOT_API_KEY carries


def credential_name(request: web.Request, key: str) -> str | None:
    """Which operator credential `key` is ("admin" for SMSBOT_API_KEY), or None.

    Workspace-scoped keys (issue 14) are looked up here once they exist.
    """
    admin = request.config_dict[BOT].settings.api_key
    return ADMIN if admin is not None and admin == key else None


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
    configured = request.config_dict[BOT].settings.api_key is not None
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
    who = credential_name(request, key) if isinstance(key, str) and key else None
    if who is None:
        throttle.failed(address)
        configured = request.config_dict[BOT].settings.api_key is not None
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
    credential = request.config_dict[BOT].settings.api_key
    assert isinstance(credential, Secret)
    response = redirect(next_page)
    set_cookie(
        response,
        request,
        SESSION_COOKIE,
        request.config_dict[SESSIONS].open(credential, who),
        MOUNT,
    )
    response.del_cookie(SIGNIN_COOKIE, path=f"{MOUNT}/sign-in")
    log.info("console: %s signed in", who)
    raise response


async def sign_out(request: web.Request) -> web.StreamResponse:
    """POST /console/sign-out: end the session and clear its cookie."""
    request.config_dict[SESSIONS].end(session_of(request))
    response = redirect(f"{MOUNT}/sign-in")
    response.del_cookie(SESSION_COOKIE, path=MOUNT)
    raise response
