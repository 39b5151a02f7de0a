"""Flows: each flow's states and transitions as a diagram, and its templates for sample data."""

from __future__ import annotations

from aiohttp import web


def add_routes(router: web.UrlDispatcher) -> None:
    """Register this module's pages."""
