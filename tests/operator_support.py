"""A bot serving three workspaces (default, a, b) behind its real app, and their credentials.

Shared by the operator-credentials tests and the workspace isolation test.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
from typing import Any

from aiohttp.test_utils import TestClient

from smsbot.app.keys_cli import create_key
from smsbot.app.server.app import create_app
from smsbot.channels.sandbox import Sandbox
from smsbot.clock import VirtualClock
from smsbot.config import Settings
from smsbot.engine.runtime import FlowRuntime
from smsbot.pipeline.bot import Bot
from smsbot.store.engine import Database
from tests.support import EXAMPLE_FLOWS, VN, sandbox_clients, settings_for

T0 = dt.datetime(2026, 1, 15, 9, 0, tzinfo=dt.UTC)
ADMIN = "admin-operator-key-0123456789"
A_VN = "+447700900200"
A_SENDER_ID = "ACLINIC"
B_VN = "+447700900300"
B_SENDER_ID = "BCLINIC"
WORKSPACES: dict[str, dict[str, Any]] = {
    "default": {"numbers": [VN]},
    "a": {"provider": "sandbox", "numbers": [A_VN], "sender_ids": [A_SENDER_ID]},
    "b": {"provider": "sandbox", "numbers": [B_VN], "sender_ids": [B_SENDER_ID]},
}


def workspace_settings(db_url: str, sandbox_url: str, **extra: str) -> Settings:
    """Settings with the workspaces default, a and b, the example flows and the admin key."""
    env = {**EXAMPLE_FLOWS, "SMSBOT_API_KEY": ADMIN, "SMSBOT_DEFAULT_SENDER": VN, **extra}
    return settings_for(db_url, sandbox_url, **env).replace(workspace_tables=WORKSPACES)


@dataclasses.dataclass
class WorkspaceApi:
    """The app of a bot serving three workspaces, sending to a real sandbox on loopback."""

    bot: Bot
    client: TestClient[Any, Any]
    sandbox: Sandbox
    clock: VirtualClock

    async def call(
        self, method: str, path: str, token: str = ADMIN, **kwargs: Any
    ) -> tuple[int, Any]:
        """Call the API with `token` as the bearer; (status, JSON or text)."""
        headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
        resp = await self.client.request(method, path, headers=headers, **kwargs)
        if resp.content_type == "application/json":
            return resp.status, await resp.json()
        return resp.status, await resp.text()

    async def key(self, workspace: str, name: str | None = None) -> tuple[str, str]:
        """A new key of `workspace`: (its id, the key)."""
        made = await self.bot.db.write(lambda conn: create_key(conn, workspace, name))
        return made["id"], made["key"]

    async def token(self, key_id: str, key: str) -> str:
        """An OAuth access token for the key, from POST /oauth/token with HTTP Basic."""
        basic = base64.b64encode(f"{key_id}:{key}".encode()).decode()
        resp = await self.client.post(
            "/oauth/token",
            data={"grant_type": "client_credentials"},
            headers={"Authorization": f"Basic {basic}"},
        )
        body = await resp.json()
        assert resp.status == 200, body
        return str(body["access_token"])


async def workspace_bot(db_url: str, sandbox: Sandbox, clock: VirtualClock, **extra: str) -> Bot:
    """A Bot on a fresh schema serving the three workspaces, sending to `sandbox`."""
    assert sandbox.url is not None
    settings = workspace_settings(db_url, sandbox.url, **extra)
    db = Database(db_url)
    await db.create_all()
    # every workspace's account is the one sandbox here (test_workspaces_outbound has two)
    providers = sandbox_clients(settings, sandbox.url)
    runtime = FlowRuntime.from_settings(settings)
    return Bot(
        settings, providers=providers, handler=runtime, clock=clock, db=db, poll_interval=0.01
    )


async def workspace_api(
    db_url: str, sandbox: Sandbox, aiohttp_client: Any, **extra: str
) -> WorkspaceApi:
    """The three-workspace bot behind its app (workers off: tests run them when they need)."""
    clock = VirtualClock(T0)
    bot = await workspace_bot(db_url, sandbox, clock, **extra)
    client = await aiohttp_client(create_app(bot, run_workers=False))
    return WorkspaceApi(bot, client, sandbox, clock)
