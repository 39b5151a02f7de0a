"""Reading a request body: bounded in size and in time, and refused with a 4xx when unreadable.

Every route that reads a body (the webhooks and the operator API) reads it here, so a client that
sends too much (413), too slowly (408) or a compressed body that does not decompress (400) gets
the same clear answer everywhere, and the server never answers 500 for what a client sent.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError
from aiohttp.web_protocol import RequestPayloadError

from smsbot.app.server.keys import BOT
from smsbot.app.server.schema import FieldError
from smsbot.channels.events import WebhookFormatError, load_json


async def read_body(request: web.Request) -> bytes:
    """Return the raw (decompressed) body, or raise an HTTP error that says what was wrong."""
    settings = request.config_dict[BOT].settings
    limit = settings.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    try:
        if request.content.is_eof():
            # All of it has arrived (a webhook's body comes with its headers): reading cannot
            # wait, so no timer (in the turns profile the timeout was 4 % of the event loop).
            return await request.read()
        # A client that trickles its body would hold the connection (and this task) forever.
        async with asyncio.timeout(settings.body_timeout):
            # aiohttp decompresses as it reads, and enforces the app's client_max_size when the
            # body is chunked or grows on decompression.
            return await request.read()
    except TimeoutError:
        raise web.HTTPRequestTimeout(
            reason=f"the request body took longer than {settings.body_timeout:g} s to arrive",
            headers={"Connection": "close"},
        ) from None
    except RequestPayloadError as exc:
        # aiohttp's server log reports it once more (smsbot.app.server.http: one short line).
        raise web.HTTPBadRequest(reason=_unreadable(request, exc)) from None


def _unreadable(request: web.Request, exc: RequestPayloadError) -> str:
    if isinstance(exc.__cause__, ContentEncodingError):
        encoding = request.headers.get("Content-Encoding", "").strip()[:20] or "compressed"
        return (
            f"the body could not be decoded as {encoding}: send it uncompressed, or compressed"
            " as its Content-Encoding header says"
        )
    return "the body is malformed (broken chunked transfer encoding): send it again whole"


async def read_json(request: web.Request) -> object:
    """The body as JSON (UTF-8, no NaN, bounded nesting), storable; else FieldError (a 400)."""
    try:
        value = load_json(await read_body(request))
    except WebhookFormatError as exc:
        raise FieldError("body", exc.reason) from None
    check_storable(value, "body")
    return value


def check_storable(value: object, where: str) -> None:
    """Refuse strings the database cannot store (NUL, lone surrogates) while we can say where."""
    stack: list[tuple[object, str]] = [(value, where)]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict):
            for key, child in node.items():
                stack.append((key, path))
                stack.append((child, f"{path}.{key}" if path != "body" else str(key)))
        elif isinstance(node, list):
            stack.extend((child, f"{path}[{i}]") for i, child in enumerate(node))
        elif isinstance(node, str):
            if "\x00" in node:
                raise FieldError(path, "contains a NUL character")
            try:
                node.encode("utf-8")
            except UnicodeEncodeError:
                raise FieldError(path, "is not valid Unicode (a lone surrogate)") from None
