"""OAuth 2.0 access tokens: short-lived JWTs (PyJWT, HS256) scoped to one workspace key.

The signing key is a random secret in the database (server_secrets), made once by whichever
`smsbot serve` needs it first (INSERT … ON CONFLICT DO NOTHING, then read back), so every
process on one database issues and accepts the same tokens. It is never logged nor shown.

A token names its key (`sub`) and workspace (`ws`); its expiry is checked against the bot's
injected clock, not the wall clock (PyJWT's own time checks are off). Whoever accepts a token
also checks its key is still unrevoked (credentials.authenticate), so revoking a key ends its
tokens at once.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
import weakref
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, select

from smsbot.store.engine import Database
from smsbot.store.models import server_secrets_t
from smsbot.store.upsert import insert_on_conflict

if TYPE_CHECKING:
    from smsbot.pipeline.bot import Bot

LIFETIME = dt.timedelta(minutes=15)
ALGORITHM = "HS256"
ISSUER = "smsbot"
AUDIENCE = "smsbot-operator-api"
SIGNING_KEY = "oauth_signing_key"

# One signing key per database, read once per process.
_KEYS: weakref.WeakKeyDictionary[Database, bytes] = weakref.WeakKeyDictionary()
_NEW_SECRET = insert_on_conflict(server_secrets_t, ["name"])


@dataclasses.dataclass(frozen=True, slots=True)
class Claims:
    """What a valid token says: the key it was issued for, its workspace, and its expiry."""

    key_id: str
    workspace: str
    expires: dt.datetime


def _stored_key(conn: Connection) -> str | None:
    s = server_secrets_t
    value = conn.execute(select(s.c.value).where(s.c.name == SIGNING_KEY)).scalar_one_or_none()
    return str(value) if value is not None else None


async def signing_key(db: Database, now: dt.datetime) -> bytes:
    """The database's token signing key, made on first use by whichever process comes first."""
    if (cached := _KEYS.get(db)) is not None:
        return cached
    value = await db.read(_stored_key)
    if value is None:

        def create(conn: Connection) -> str:
            fresh = {"name": SIGNING_KEY, "value": secrets.token_urlsafe(48), "created_at": now}
            conn.execute(_NEW_SECRET, [fresh])  # another process may have won: keep its key
            stored = _stored_key(conn)
            assert stored is not None
            return stored

        value = await db.write(create)
    key = value.encode()
    _KEYS[db] = key
    return key


async def issue_token(bot: Bot, key_id: str, workspace: str) -> tuple[str, int]:
    """A signed access token for the key `key_id` of `workspace`, and its lifetime in seconds."""
    now = bot.clock.now()
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": key_id,
        "ws": workspace,
        "iat": int(now.timestamp()),
        "exp": int((now + LIFETIME).timestamp()),
        "jti": secrets.token_hex(8),
    }
    import jwt  # here, not at the top: an idle server that issues no token never loads PyJWT

    token = jwt.encode(claims, await signing_key(bot.db, now), algorithm=ALGORITHM)
    return token, int(LIFETIME.total_seconds())


async def read_token(bot: Bot, token: str) -> Claims | None:
    """The claims of a token this deployment signed and that has not expired, else None."""
    if token.count(".") != 2:
        return None
    import jwt  # see issue_token

    now = bot.clock.now()
    try:
        claims = jwt.decode(
            token,
            await signing_key(bot.db, now),
            algorithms=[ALGORITHM],  # fixed: never the token's own choice
            audience=AUDIENCE,
            issuer=ISSUER,
            options={
                "require": ["exp", "iat", "sub", "ws"],
                # time is the bot's clock (a VirtualClock in tests), checked below
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
            },
        )
    except jwt.InvalidTokenError:
        return None
    expires, workspace, key_id = claims["exp"], claims["ws"], claims["sub"]
    if (
        not isinstance(expires, int)
        or not isinstance(workspace, str)
        or not isinstance(key_id, str)
    ):
        return None
    if now.timestamp() >= expires:
        return None
    return Claims(key_id, workspace, dt.datetime.fromtimestamp(expires, dt.UTC))
