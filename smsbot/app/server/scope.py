"""Who calls the operator API, and the one workspace the request acts in.

Every route but the OpenAPI document needs `Authorization: Bearer <credential>`: the admin key
SMSBOT_API_KEY, a workspace key (`smsbot keys create`) or an OAuth access token (POST
/oauth/token). A request acts in one workspace, named by `?workspace=NAME`: a workspace
credential's own when left out (naming another is a 403, whether it exists or not), `default`
for the admin key. Every route reads and changes that workspace's rows only.
"""

from __future__ import annotations

from aiohttp import web

from smsbot.app.credentials import Caller, authenticate
from smsbot.app.server.keys import BOT
from smsbot.app.server.responses import problem
from smsbot.app.server.schema import WORKSPACE, FieldError
from smsbot.workspaces import DEFAULT, Workspace

CALLER = web.RequestKey("caller", Caller)
ACTING_IN = web.RequestKey("workspace", Workspace)
CHALLENGE = 'Bearer realm="smsbot"'


def workspace(request: web.Request) -> Workspace:
    """The workspace this request acts in (identify() found it)."""
    return request[ACTING_IN]


def _refused() -> web.Response:
    response = problem(
        401,
        "missing or wrong 'Authorization: Bearer <credential>' header: the admin key"
        " SMSBOT_API_KEY, a workspace key (`smsbot keys create`) or an OAuth access token"
        " (POST /oauth/token)",
    )
    response.headers["WWW-Authenticate"] = CHALLENGE
    return response


async def identify(request: web.Request) -> web.Response | None:
    """Find the caller and its workspace (kept on the request), or the 4xx answer that refuses."""
    bot = request.config_dict[BOT]
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    caller = await authenticate(bot, token) if scheme.lower() == "bearer" else None
    if caller is None:
        return _refused()
    named = request.query.getall(WORKSPACE.name, [])
    if len(named) > 1:
        return problem(400, "is given more than once", field=WORKSPACE.name)
    try:
        WORKSPACE.check_query(request.query)
    except FieldError as exc:
        return problem(400, exc.reason, field=exc.field)
    name = named[0] if named else (caller.workspace or DEFAULT)
    if not caller.may_act_in(name):
        return problem(
            403,
            f"this credential acts in workspace {caller.workspace} only: leave out ?workspace="
            " or name that one",
            field=WORKSPACE.name,
        )
    found = bot.settings.workspaces.get(name)
    if found is None:  # the admin key only: a workspace credential's own is configured
        known = ", ".join(bot.settings.workspaces.names)
        return problem(
            400, f"no workspace {name!r}; the workspaces here: {known}", field=WORKSPACE.name
        )
    request[CALLER] = caller
    request[ACTING_IN] = found
    return None
