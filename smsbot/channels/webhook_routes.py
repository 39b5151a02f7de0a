"""The registry of webhook routes: each channel's ROUTES, added to the server as they are.

A new provider adds its folder under channels/ and one line here.
"""

from __future__ import annotations

from aiohttp import web

from smsbot.channels.divergent import routes as divergent
from smsbot.channels.puresms import routes as puresms

WEBHOOK_ROUTES: tuple[list[web.RouteDef], ...] = (divergent.ROUTES, puresms.ROUTES)
