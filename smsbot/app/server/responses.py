"""Small JSON answers; every client error says what was wrong."""

from __future__ import annotations

from typing import Any

from aiohttp import web


def problem(status: int, reason: str, **extra: Any) -> web.Response:
    """Return a JSON error `{"error": reason}` with `status`."""
    return web.json_response({"error": reason, **extra}, status=status)
