"""POST /oauth/token: the OAuth 2.0 client-credentials grant (RFC 6749 §4.4) for workspace keys.

The client is a workspace key: client_id is its id, client_secret the key, sent with HTTP Basic
or in the form body (§2.3.1), never both. The answer is a short-lived bearer token for the key's
workspace (tokens.py); errors are §5.2's JSON, and no answer may be cached.
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

from aiohttp import web

from smsbot.app.credentials import active_key, key_caller
from smsbot.app.server.bodies import read_body
from smsbot.app.server.keys import BOT
from smsbot.app.tokens import issue_token

log = logging.getLogger(__name__)

PATH = "/oauth/token"
GRANT = "client_credentials"
FORM = "application/x-www-form-urlencoded"
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_CHALLENGE = 'Basic realm="smsbot", charset="UTF-8"'


class OAuthError(Exception):
    """An RFC 6749 §5.2 error: its code, what to fix, and the HTTP status."""

    def __init__(self, code: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.code, self.description, self.status = code, description, status


def _answer(body: dict[str, Any], status: int = 200, **headers: str) -> web.Response:
    return web.json_response(body, status=status, headers={**_NO_STORE, **headers})


def _form(raw: bytes) -> dict[str, str]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise OAuthError("invalid_request", "the body is not UTF-8") from None
    params: dict[str, str] = {}
    for name, value in parse_qsl(text, keep_blank_values=True):
        if name in params:  # §3.2: a parameter MUST NOT be included more than once
            raise OAuthError("invalid_request", f"{name} is given more than once")
        params[name] = value
    return params


def _basic(header: str) -> tuple[str, str] | None:
    """(client_id, client_secret) from an `Authorization: Basic …` header, or None."""
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise OAuthError(
            "invalid_client", "the Basic credentials are not base64 of client_id:secret", 401
        ) from None
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        raise OAuthError("invalid_client", "the Basic credentials need client_id:secret", 401)
    return unquote_plus(client_id), unquote_plus(secret)  # §2.3.1: form-encoded first


def _client(request: web.Request, form: dict[str, str]) -> tuple[str, str]:
    basic = _basic(request.headers.get("Authorization", ""))
    in_body = "client_secret" in form or "client_id" in form
    if basic is not None and in_body:
        raise OAuthError(
            "invalid_request",
            "the client authenticated twice: send client_id and client_secret either with HTTP"
            " Basic or in the body, not both",
        )
    if basic is not None:
        return basic
    if not form.get("client_id") or not form.get("client_secret"):
        raise OAuthError(
            "invalid_client",
            "no client credentials: send the key id and the key as HTTP Basic"
            " (curl -u KEY_ID:KEY) or as client_id and client_secret in the body",
            401,
        )
    return form["client_id"], form["client_secret"]


async def token(request: web.Request) -> web.Response:
    """POST /oauth/token: grant_type=client_credentials, answered with a bearer token."""
    try:
        return await _token(request)
    except OAuthError as exc:
        extra = {"WWW-Authenticate": _CHALLENGE} if exc.status == 401 else {}
        body = {"error": exc.code, "error_description": exc.description}
        return _answer(body, exc.status, **extra)


async def _token(request: web.Request) -> web.Response:
    bot = request.config_dict[BOT]
    if request.content_type != FORM:
        raise OAuthError(
            "invalid_request", f"send the parameters form-encoded, with Content-Type: {FORM}"
        )
    form = _form(await read_body(request))
    grant = form.get("grant_type")
    if not grant:
        raise OAuthError("invalid_request", f"grant_type is required: grant_type={GRANT}")
    if grant != GRANT:
        raise OAuthError(
            "unsupported_grant_type", f"this server issues tokens for grant_type={GRANT} only"
        )
    client_id, secret = _client(request, form)
    info = None
    if len(client_id) <= 32 and len(secret) <= 200:
        info = await bot.db.read(lambda conn: active_key(conn, key_id=client_id, key=secret))
    if key_caller(bot.settings, info) is None or info is None:
        raise OAuthError(
            "invalid_client",
            "unknown client, wrong secret, or a revoked key: client_id is the key id and"
            " client_secret the key, as `smsbot keys create` printed them",
            401,
        )
    scope = f"workspace:{info.workspace}"
    if form.get("scope") not in (None, "", scope):
        raise OAuthError(
            "invalid_scope", f"this key's tokens act in its workspace only: scope={scope}"
        )
    access_token, lifetime = await issue_token(bot, info.id, info.workspace)
    log.info("issued an access token for key %s (workspace %s)", info.id, info.workspace)
    return _answer(
        {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": lifetime,
            "scope": scope,
        }
    )


def add_routes(app: web.Application) -> None:
    """Mount the token endpoint on the application."""
    app.router.add_post(PATH, token)
