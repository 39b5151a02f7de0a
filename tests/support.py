"""Helpers shared by the pipeline tests: signed webhook bodies and a bot wired to a sandbox."""

from __future__ import annotations

import dataclasses
import io
import json
import uuid
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from smsbot.channels.base import SmsProvider
from smsbot.channels.divergent.client import DivergentClient
from smsbot.channels.divergent.signature import sign
from smsbot.channels.retry import RetryPolicy
from smsbot.channels.sandbox import Sandbox
from smsbot.clock import Clock
from smsbot.config import Settings
from smsbot.engine.contract import StepHandler
from smsbot.pipeline.bot import Bot
from smsbot.store.engine import Database

SECRET = "whsec_pipeline_test"
API_KEY = "test-api-key"
VN = "+447700900100"
PHONE = "+447700900123"
# Signature and segment vectors copied from the team's shared vectors: see tests/vectors/README.md.
VECTORS = Path(__file__).resolve().parent / "vectors"
_REPO = Path(__file__).resolve().parents[1]
# The repository's example flows and templates, for tests that run them.
EXAMPLE_FLOWS = {
    "SMSBOT_FLOWS_DIR": str(_REPO / "flows"),
    "SMSBOT_TEMPLATES_DIR": str(_REPO / "templates"),
}


def inbound_body(
    event_id: str | None = None, text: str = "hi", sender: str = PHONE, to: str = VN
) -> bytes:
    """Return an eventType 2 envelope, compact JSON as the provider sends it."""
    event_id = event_id or f"evt_{uuid.uuid4().hex}"
    envelope = {
        "id": event_id,
        "timestamp": "2026-01-15T14:22:30Z",
        "workspaceId": "ws_test",
        "eventType": 2,
        "data": {
            "messageId": f"inb_{event_id}",
            "inboundNumber": to,
            "sender": sender,
            "body": text,
            "receivedAt": "2026-01-15T14:22:30Z",
        },
    }
    return json.dumps(envelope, separators=(",", ":")).encode()


def receipt_body(
    client_reference: str | None,
    status: str,
    event_id: str | None = None,
    message_id: str | None = None,
) -> bytes:
    """Return an eventType 1 envelope."""
    envelope = {
        "id": event_id or f"evt_dr_{uuid.uuid4().hex}",
        "timestamp": "2026-01-15T10:30:00Z",
        "workspaceId": "ws_test",
        "eventType": 1,
        "data": {
            "messageId": message_id or f"m_{uuid.uuid4().hex[:8]}",
            "clientReference": client_reference,
            "deliveryStatus": status,
            "errorCode": None,
            "processedAt": "2026-01-15T10:29:55Z",
            "deliveredAt": "2026-01-15T10:30:00Z",
        },
    }
    return json.dumps(envelope, separators=(",", ":")).encode()


def signed(body: bytes, clock: Clock, secret: str = SECRET) -> dict[str, str]:
    """Headers the provider would send with `body` at the clock's current time."""
    ts = str(int(clock.now().timestamp()))
    return {
        "Content-Type": "application/json",
        "X-Webhook-Timestamp": ts,
        "X-Webhook-Signature": sign(secret, ts, body),
    }


def settings_for(db_url: str, sandbox_url: str, **extra: str) -> Settings:
    """Settings for a bot that sends through the sandbox at `sandbox_url`."""
    env = {
        "SMSBOT_DATABASE_URL": db_url,
        "SMSBOT_PROVIDER": "divergent",
        "SMSBOT_DIVERGENT_API_KEY": API_KEY,
        "SMSBOT_DIVERGENT_URL": sandbox_url,
        "SMSBOT_WEBHOOK_SECRET": SECRET,
        "SMSBOT_SEND_RATE": "1000",
        **extra,
    }
    return Settings.from_env(env, toml_path=Path("/nonexistent/smsbot.toml"))


async def no_sleep(_seconds: float) -> None:
    """A RetryPolicy sleep that returns at once: tests never wait for backoff."""


@dataclasses.dataclass
class Harness:
    """A bot behind its real aiohttp app, sending to a real sandbox on loopback."""

    bot: Bot
    client: TestClient[Any, Any]
    sandbox: Sandbox
    clock: Clock

    async def post(self, body: bytes, headers: dict[str, str] | None = None) -> Any:
        """POST a webhook, signed now unless headers are given."""
        # aiohttp warns about large raw bodies; a file-like object is streamed instead
        data: Any = io.BytesIO(body) if len(body) > 1_000_000 else body
        return await self.client.post(
            "/webhooks/divergent", data=data, headers=headers or signed(body, self.clock)
        )

    async def event_count(self) -> int:
        """How many events the inbox holds."""
        from sqlalchemy import func, select

        from smsbot.store.models import events_t

        async with self.bot.db.session() as s:
            return int((await s.execute(select(func.count()).select_from(events_t))).scalar_one())


async def make_bot(
    db_url: str, sandbox: Sandbox, handler: StepHandler, clock: Clock, **extra: str
) -> Bot:
    """A Bot on a fresh schema that sends to `sandbox` (every workspace, each its own client)."""
    assert sandbox.url is not None
    settings = settings_for(db_url, sandbox.url, **extra)
    db = Database(db_url)
    await db.create_all()
    return Bot(
        settings,
        providers=sandbox_clients(settings, sandbox.url),
        handler=handler,
        clock=clock,
        db=db,
        poll_interval=0.01,
    )


def sandbox_clients(settings: Settings, url: str) -> dict[str, SmsProvider]:
    """One client per workspace, every one to the sandbox at `url` (one fake account)."""
    return {
        name: DivergentClient(
            API_KEY, url, timeout=2.0, retry=RetryPolicy(attempts=2, sleep=no_sleep)
        )
        for name in settings.workspaces.names
    }


async def conversation_id(s: Any, virtual_number: str, phone: str) -> int:
    """The id of the (virtual number, phone) conversation row, created if missing."""
    from sqlalchemy import select

    from smsbot.store.models import conversations_t

    c = conversations_t
    found = await s.execute(
        select(c.c.id).where(c.c.virtual_number == virtual_number, c.c.phone == phone)
    )
    existing = found.scalar_one_or_none()
    if existing is not None:
        return int(existing)
    created = await s.execute(
        c.insert()
        .values(virtual_number=virtual_number, phone=phone, data={}, version=0)
        .returning(c.c.id)
    )
    return int(created.scalar_one())
