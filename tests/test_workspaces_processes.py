"""Two clients side by side in real `smsbot serve` processes, each on its own fake provider.

One process on SQLite, and two processes sharing PostgreSQL: each client's texts reach only its
own conversations and are answered only through its own account; a webhook signed with the
other client's secret is refused; a number nobody owns is acknowledged and reaches no flow; and
one client's provider outage does not hold up the other's replies.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import select

from smsbot.channels.sandbox import Sandbox
from smsbot.clock import SystemClock
from smsbot.store.engine import Database
from smsbot.store.migrate import upgrade
from smsbot.store.models import conversations_t, events_t, messages_t
from tests.processes import ServerProcess
from tests.support import inbound_body, signed

pytestmark = pytest.mark.slow

# (workspace, provider workspaceId, number, account API key, webhook secret)
CLIENTS = {
    "clinic": ("ws_clinic", "+447700900200", "clinic-account-key", "whsec_clinic_0123456789"),
    "shop": ("ws_shop", "+447700900300", "shop-account-key", "whsec_shop_0123456789ab"),
}
NOBODYS = "+447700900999"


def _config(path: Path, urls: dict[str, str]) -> Path:
    lines = []
    for name, (ws_id, number, _key, _secret) in CLIENTS.items():
        lines += [
            f"[workspaces.{name}]",
            'provider = "divergent"',
            f'url = "{urls[name]}"',
            f'api_key_env = "{name.upper()}_KEY"',
            f'webhook_secret_env = "{name.upper()}_SECRET"',
            f'workspace_id = "{ws_id}"',
            f'numbers = ["{number}"]',
            "",
        ]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _secrets_env() -> dict[str, str]:
    env = {}
    for name, (_ws_id, _number, key, secret) in CLIENTS.items():
        env[f"{name.upper()}_KEY"], env[f"{name.upper()}_SECRET"] = key, secret
    return env


def _inbound(client: str, event_id: str, text: str, phone: str, to: str | None = None) -> bytes:
    ws_id, number, _key, _secret = CLIENTS[client]
    envelope = json.loads(inbound_body(event_id, text, sender=phone, to=to or number))
    envelope["workspaceId"] = ws_id
    return json.dumps(envelope, separators=(",", ":")).encode()


async def _post(http: aiohttp.ClientSession, url: str, body: bytes, secret: str) -> int:
    headers = signed(body, SystemClock(), secret=secret)
    async with http.post(f"{url}/webhooks/divergent", data=body, headers=headers) as response:
        return response.status


async def _wait_for(predicate: object, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.05)


@pytest.fixture
async def providers() -> AsyncIterator[dict[str, Sandbox]]:
    """One fake Divergent account per client, each accepting only that client's API key."""
    sandboxes = {name: Sandbox(api_key=key) for name, (_w, _n, key, _s) in CLIENTS.items()}
    for sb in sandboxes.values():
        await sb.start()
    yield sandboxes
    for sb in sandboxes.values():
        await sb.stop()


async def _run_two_clients(
    db_url: str, providers: dict[str, Sandbox], tmp_path: Path, processes: int
) -> None:
    urls = {name: sb.url or "" for name, sb in providers.items()}
    config = _config(tmp_path / "smsbot.toml", urls)
    env = {"SMSBOT_CONFIG": str(config), **_secrets_env()}
    servers = [
        ServerProcess(db_url, "http://127.0.0.1:9", tmp_path / f"s{i}.log", **env)
        for i in range(processes)
    ]
    phones = [f"+4477009{n:05d}" for n in range(20)]
    try:
        await asyncio.gather(*(s.start() for s in servers))
        at = [s.url for s in servers]
        clinic_secret, shop_secret = CLIENTS["clinic"][3], CLIENTS["shop"][3]
        # The clinic's account is down for now: the shop's replies must not wait for it.
        providers["clinic"].set_failure(503)
        async with aiohttp.ClientSession() as http:
            statuses = await asyncio.gather(
                *(
                    _post(http, at[i % len(at)], _inbound(c, f"evt_{c}_{i}", f"{c} {i}", p), s)
                    for i, p in enumerate(phones)
                    for c, s in (("clinic", clinic_secret), ("shop", shop_secret))
                )
            )
            assert set(statuses) == {200}
            # the shop's secret on the clinic's number: refused, stored nowhere
            forged = _inbound("clinic", "evt_forged", "forged", phones[0])
            assert await _post(http, at[0], forged, shop_secret) == 401
            # a number nobody owns: acknowledged so the provider stops retrying, no flow runs
            stray = _inbound("clinic", "evt_stray", "stray", phones[0], to=NOBODYS)
            assert await _post(http, at[-1], stray, clinic_secret) == 200

            shop = providers["shop"]
            await _wait_for(lambda: len(shop.messages) >= len(phones), 60)
            assert not providers["clinic"].messages  # still down
            providers["clinic"].set_failure(None)  # back up: its replies follow (backoff ≤ 60 s)
            await _wait_for(lambda: len(providers["clinic"].messages) >= len(phones), 90)
            async with http.get(f"{at[0]}/metrics") as response:
                metrics = await response.text()
        await asyncio.sleep(0.5)  # a duplicate send, if any, would land now
        for client, sb in providers.items():
            number = CLIENTS[client][1]
            assert sorted(m.content for m in sb.messages) == sorted(
                f"You said: {client} {i}" for i in range(len(phones))
            )
            assert {m.sender for m in sb.messages} == {number}  # only its own number
        assert 'workspace="shop"' in metrics
        db = Database(db_url)
        try:
            async with db.session() as s:
                convos = (await s.execute(select(conversations_t))).all()
                sent = (await s.execute(select(messages_t))).all()
                stray_row = (
                    await s.execute(select(events_t).where(events_t.c.event_id == "evt_stray"))
                ).one()
                forged_rows = (
                    await s.execute(select(events_t).where(events_t.c.event_id == "evt_forged"))
                ).all()
        finally:
            await db.dispose()
        assert sorted((c.workspace, c.virtual_number) for c in convos) == sorted(
            (client, CLIENTS[client][1]) for client in CLIENTS for _ in phones
        )
        assert all(
            m.workspace == {"+447700900200": "clinic"}.get(m.virtual_number, "shop") for m in sent
        )
        assert (stray_row.state, stray_row.workspace) == ("unmatched", None)
        assert not forged_rows
        for server in servers:
            assert await server.terminate() == 0
    finally:
        for server in servers:
            server.close()


async def test_two_clients_in_one_process_on_sqlite(
    providers: dict[str, Sandbox], tmp_path: Path
) -> None:
    path = tmp_path / "bot.db"
    await asyncio.to_thread(upgrade, f"sqlite:///{path}")
    await _run_two_clients(f"sqlite+aiosqlite:///{path}", providers, tmp_path, processes=1)


async def test_two_clients_across_two_processes_on_postgres(
    pg_database: str, providers: dict[str, Sandbox], tmp_path: Path
) -> None:
    await asyncio.to_thread(upgrade, pg_database.replace("postgresql://", "postgresql+psycopg://"))
    db_url = pg_database.replace("postgresql://", "postgresql+asyncpg://")
    await _run_two_clients(db_url, providers, tmp_path, processes=2)
