"""Who is calling: an operator credential and the workspace it may act in.

SMSBOT_API_KEY is the admin key: every workspace. Workspace keys (`smsbot keys create`) and the
OAuth 2.0 bearer tokens issued for them at POST /oauth/token act in one workspace only.

A workspace key is `smsk_` and 256 random bits; only its SHA-256 is stored (operator_keys). A key
is looked up by that hash, which is safe for high-entropy tokens: the hash of an unguessable
secret tells an attacker nothing, and a comparison's timing reveals at most some bytes of a hash
they cannot invert. Revocation holds at once: every use of a key, and of a token issued for it,
reads the key's row.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import secrets
from typing import TYPE_CHECKING

from sqlalchemy import Connection, select

from smsbot.config import Settings
from smsbot.store.models import operator_keys_t

if TYPE_CHECKING:
    from smsbot.pipeline.bot import Bot

log = logging.getLogger(__name__)

ADMIN = "admin"  # the name of the SMSBOT_API_KEY credential
KEY_PREFIX = "smsk_"  # a workspace key; the prefix lets secret scanners find a leaked one
KEY_ID_PREFIX = "key_"
KEY_BYTES = 32


@dataclasses.dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated operator: its credential's name and workspace (None: all of them)."""

    name: str
    workspace: str | None

    @property
    def is_admin(self) -> bool:
        """Whether this caller may act in every workspace."""
        return self.workspace is None

    def may_act_in(self, workspace: str) -> bool:
        """Whether this caller may read or change anything of `workspace`."""
        return self.workspace is None or self.workspace == workspace


@dataclasses.dataclass(frozen=True, slots=True)
class KeyInfo:
    """A workspace key as stored: never the key itself."""

    id: str
    workspace: str
    name: str | None


def new_key() -> tuple[str, str, str]:
    """A fresh (key id, key, key hash): the key is shown once, only its hash is stored."""
    key = KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)
    return KEY_ID_PREFIX + secrets.token_hex(6), key, key_hash(key)


def key_hash(key: str) -> str:
    """The hex SHA-256 a workspace key is stored and found by."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def admin_caller(settings: Settings, token: str) -> Caller | None:
    """The admin Caller if `token` is SMSBOT_API_KEY (compared in constant time), else None."""
    key = settings.api_key
    if key is not None and token and key == token:
        return Caller(ADMIN, None)
    return None


def active_key(
    conn: Connection, *, key_id: str | None = None, key: str | None = None
) -> KeyInfo | None:
    """The unrevoked key with this id or (constant time) this key's hash, or None."""
    k = operator_keys_t
    query = select(k.c.id, k.c.workspace, k.c.name, k.c.key_hash).where(k.c.revoked_at.is_(None))
    wanted = key_hash(key) if key is not None else None
    if key_id is not None:
        query = query.where(k.c.id == key_id)
    elif wanted is not None:
        query = query.where(k.c.key_hash == wanted)
    else:
        return None
    row = conn.execute(query).first()
    if row is None:
        return None
    if wanted is not None and not hmac.compare_digest(row.key_hash, wanted):
        return None  # the id's key is another one (a client_id with a wrong client_secret)
    return KeyInfo(row.id, row.workspace, row.name)


def key_caller(settings: Settings, info: KeyInfo | None, how: str = "") -> Caller | None:
    """The Caller of a workspace key, or None if its workspace is no longer configured."""
    if info is None:
        return None
    if info.workspace not in settings.workspaces:
        log.warning(
            "operator key %s belongs to workspace %r, which is not configured: refused",
            info.id,
            info.workspace,
        )
        return None
    return Caller(f"{info.id}{how}", info.workspace)


async def authenticate(bot: Bot, token: str) -> Caller | None:
    """The Caller a bearer `token` proves, or None: the admin key, a workspace key or a token.

    The one check behind the operator API and the console's sign-in.
    """
    from smsbot.app.tokens import read_token

    token = token.strip()
    if not token:
        return None
    if (admin := admin_caller(bot.settings, token)) is not None:
        return admin
    if token.startswith(KEY_PREFIX):
        info = await bot.db.read(lambda conn: active_key(conn, key=token))
        return key_caller(bot.settings, info)
    claims = await read_token(bot, token)
    if claims is None:
        return None
    info = await bot.db.read(lambda conn: active_key(conn, key_id=claims.key_id))
    if info is None or info.workspace != claims.workspace:
        return None  # revoked since the token was issued
    return key_caller(bot.settings, info, " (OAuth token)")
