"""Contacts and opt-outs: the contacts table (phone, name, time zone) and the opt-out list.

The contacts feature (fields, groups, import) is issue 15; until it lands this page shows the
table as it is, read-only, beside the opt-outs every STOP adds.
"""

from __future__ import annotations

from aiohttp import web

from smsbot.app.console import reads
from smsbot.app.console.render import render
from smsbot.app.server.keys import BOT

MAX_SEARCH = 100


async def people_page(request: web.Request) -> web.Response:
    """GET /console/people?search=: contacts and opt-outs whose phone (or name) contains it."""
    search = request.query.get("search", "").strip()[:MAX_SEARCH]
    contacts, opt_outs = await reads.people(request.config_dict[BOT].db, search or None)
    return render(request, "people.html", search=search, contacts=contacts, opt_outs=opt_outs)


def add_routes(router: web.UrlDispatcher) -> None:
    """Register this module's pages."""
    router.add_get("/people", people_page)
