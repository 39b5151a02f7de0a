"""The console's HTML: a Jinja environment over templates/, escaping everything by default."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from smsbot.app.console.security import CSRF_FIELD, CSRF_HEADER, Session, current_session
from smsbot.app.server.keys import BOT

MOUNT = "/console"  # where create_app mounts the console
HERE = Path(__file__).resolve().parent

# The pages in the navigation bar: (path under MOUNT, label).
NAVIGATION = [
    ("/conversations", "Conversations"),
    ("/simulator", "Simulator"),
    ("/flows", "Flows"),
    ("/results", "Results"),
    ("/people", "Contacts & opt-outs"),
    ("/health", "Health"),
]


def when(value: dt.datetime | None, with_date: bool = True) -> str:
    """A stored time as the console shows it: UTC, to the second."""
    if value is None:
        return "-"
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC" if with_date else "%H:%M:%S")


def duration(value: dt.timedelta) -> str:
    """A span of time in words, to the minute: "1 d 19 h 5 min"."""
    minutes = int(value.total_seconds() // 60)
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "min")]
    return " ".join(f"{n} {unit}" for n, unit in parts if n) or "under a minute"


def first_line(error: str | None) -> str:
    """The line of a stored error that says what went wrong (a traceback's last line)."""
    lines = [line.strip() for line in (error or "").strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters["when"] = when
_env.filters["first_line"] = first_line
_env.filters["duration"] = duration
_env.globals.update(MOUNT=MOUNT, NAVIGATION=NAVIGATION, CSRF_FIELD=CSRF_FIELD)


def session_of(request: web.Request) -> Session:
    """The signed-in session (the console's guard has let the request through)."""
    session = current_session(request)
    if session is None:
        raise web.HTTPSeeOther(location=f"{MOUNT}/sign-in")
    return session


def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    """Render a page (or an htmx fragment) with what every page needs, uncached."""
    session = current_session(request)
    csrf = session.csrf if session is not None else ""
    bot = request.config_dict[BOT]
    page = _env.get_template(template).render(
        request_path=request.path,
        session=session,
        # the header names the session's workspace once the deployment has more than one
        workspace_names=bot.settings.workspaces.names,
        csrf=csrf,
        htmx_headers=f'{{"{CSRF_HEADER}": "{csrf}"}}',
        bot_now=bot.clock.now(),
        **context,
    )
    response = web.Response(text=page, status=status, content_type="text/html", charset="utf-8")
    response.headers["Cache-Control"] = "no-store"
    return response


def redirect(location: str) -> web.HTTPSeeOther:
    """A 303 to another console page (a form's answer: the browser then GETs it)."""
    return web.HTTPSeeOther(location=location)
