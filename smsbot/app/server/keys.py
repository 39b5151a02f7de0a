"""Typed application keys shared by the route modules."""

from __future__ import annotations

from aiohttp import web

from smsbot.channels.sandbox import Sandbox
from smsbot.pipeline.bot import Bot

BOT = web.AppKey("bot", Bot)
# The in-process sandbox provider, when there is one (`smsbot serve` with the sandbox): the
# console's phone simulator texts the bot through it.
SANDBOX = web.AppKey("sandbox", Sandbox)
