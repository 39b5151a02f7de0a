"""Typed application keys shared by the route modules."""

from __future__ import annotations

from aiohttp import web

from smsbot.pipeline.bot import Bot

BOT = web.AppKey("bot", Bot)
