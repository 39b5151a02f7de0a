"""The workspace a console session acts in: what every page reads and changes, and the
admin's workspace selector.

A workspace credential's session sees and acts in its own workspace only. The admin key
(SMSBOT_API_KEY) acts in one workspace at a time, `default` at first, and picks another with
the selector in the page header (POST /console/workspace); the choice lives in the session
cookie. Every page filters by the session's workspace, and a conversation or contact of another
workspace answers 404 exactly as a missing one does.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from aiohttp import web

from smsbot.app.console.render import MOUNT, NAVIGATION, redirect, session_of
from smsbot.app.console.security import (
    SESSION_COOKIE,
    SESSIONS,
    Session,
    read_session,
    set_cookie,
    signing_secret,
)
from smsbot.app.credentials import active_key
from smsbot.app.server.keys import BOT
from smsbot.engine.flow import Flow
from smsbot.engine.runtime import FlowRuntime
from smsbot.hints import did_you_mean
from smsbot.workspaces import DEFAULT, Workspace

log = logging.getLogger(__name__)


async def checked_session(request: web.Request) -> Session | None:
    """The request's session if its cookie is genuine and its workspace is still configured.

    A workspace credential's session ends when its key is revoked or its workspace leaves the
    configuration; an admin acting in a workspace that left acts in `default` again.
    """
    session = read_session(request)
    if session is None:
        return None
    bot = request.config_dict[BOT]
    workspaces = bot.settings.workspaces
    if session.scope is not None:
        if session.scope not in workspaces:
            return None
        # A revoked key ends its sessions at once, as it ends its API calls and tokens: one
        # primary-key read per page of a workspace session (the admin key is settings').
        key_id = session.who.split(" ", 1)[0]
        info = await bot.db.read(lambda conn: active_key(conn, key_id=key_id))
        return session if info is not None and info.workspace == session.scope else None
    if session.workspace not in workspaces:
        return dataclasses.replace(session, workspace=DEFAULT)
    return session


def workspace_name(request: web.Request) -> str:
    """The name of the workspace the signed-in session acts in."""
    return session_of(request).workspace


def workspace(request: web.Request) -> Workspace:
    """The workspace the signed-in session acts in."""
    return request.config_dict[BOT].settings.workspaces[workspace_name(request)]


def owns(request: web.Request, number: str) -> bool:
    """Whether the virtual number (or sender ID) `number` belongs to the session's workspace."""
    owner = request.config_dict[BOT].settings.workspaces.owner(number)
    return owner is not None and owner.name == workspace_name(request)


def flows(request: web.Request) -> dict[str, type[Flow]]:
    """The flows the session's workspace runs, by name, sorted: every flow one of its numbers
    is bound to (every loaded flow for the catch-all `default`); none with --echo."""
    handler = request.config_dict[BOT].handler
    if not isinstance(handler, FlowRuntime):
        return {}
    loaded = handler.flows
    here = workspace(request)
    if not here.catch_all:
        bound: set[str] = set()
        for sender in here.numbers | here.sender_ids:
            bound |= handler.router.binding(sender).flows
        loaded = {name: cls for name, cls in loaded.items() if name in bound}
    return dict(sorted(loaded.items()))


# The pages a switch may return to: the navigation's and the parked events' list.
_SECTIONS = {path.strip("/") for path, _ in NAVIGATION} | {"events"}


def _section(back: Any) -> str:
    """Where to go after switching: the list of the page it was made on (an item of the old
    workspace would be a 404 in the new one), else the start page; never another site."""
    if not isinstance(back, str) or not back.startswith(f"{MOUNT}/"):
        return f"{MOUNT}/"
    first = back[len(MOUNT) + 1 :].split("/")[0].split("?")[0]
    return f"{MOUNT}/{first}" if first in _SECTIONS else f"{MOUNT}/"


async def choose(request: web.Request) -> web.StreamResponse:
    """POST /console/workspace {workspace, back}: the admin acts in another workspace."""
    session = session_of(request)
    settings = request.config_dict[BOT].settings
    form = await request.post()
    name = str(form.get("workspace") or "").strip()
    if not session.is_admin:
        raise web.HTTPForbidden(
            reason=f"this key acts in workspace {session.scope} only; sign in with the admin"
            " key (SMSBOT_API_KEY) to choose another workspace"
        )
    if name not in settings.workspaces:
        hint = did_you_mean(name, settings.workspaces.names, "{!r}")
        raise web.HTTPBadRequest(
            reason=f"no workspace {name[:64]!r}{f' ({hint})' if hint else ''}: pick one of"
            f" {', '.join(settings.workspaces.names)}"
        )
    secret = signing_secret(settings)
    assert secret is not None  # a session was read with it
    response = redirect(_section(form.get("back")))
    cookie = request.config_dict[SESSIONS].switch(secret, session, name)
    set_cookie(response, request, SESSION_COOKIE, cookie, MOUNT)
    log.info("console: %s acts in workspace %s", session.who, name)
    raise response


def add_routes(router: web.UrlDispatcher) -> None:
    """Register the selector's route."""
    router.add_post("/workspace", choose)
