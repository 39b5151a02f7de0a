"""`smsbot chat`: talk to your flows from the terminal, through a sandbox on loopback.

Everything runs in this process against a throw-away SQLite database: the bot's real aiohttp
app on a loopback port, and a sandbox provider that signs your lines as inbound webhooks and
records the bot's replies. Time is a virtual clock, so `/wait 23h` fires reminders at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from aiohttp import web
from sqlalchemy import select

from smsbot.assembly import SANDBOX_API_KEY, build_provider
from smsbot.bot import Bot
from smsbot.clock import VirtualClock
from smsbot.config import ConfigError, Settings, parse_duration
from smsbot.inbox import InboxEntry
from smsbot.operator import OperatorError, resolve_recipient, resolve_sender
from smsbot.runtime import FlowRuntime
from smsbot.sandbox import Sandbox
from smsbot.server.app import create_app
from smsbot.store.models import EventKind, conversations_t
from smsbot.text import analyze

HELP = (
    "Type a message and press Enter. Commands: /wait 2h (move the clock, fire due reminders),"
    " /time, /data, /quit"
)


class ChatSession:
    """A bot, a sandbox and a virtual clock wired together for one terminal conversation."""

    def __init__(self, settings: Settings, phone: str) -> None:
        self.settings = settings
        self.phone = phone
        self.virtual_number = resolve_sender(settings, settings.default_sender or "+447700900100")
        self.clock = VirtualClock(dt.datetime.now(dt.UTC).replace(microsecond=0))
        self.sandbox = Sandbox(
            api_key=SANDBOX_API_KEY,
            webhook_secret=settings.webhook_secrets()[0],
            clock=self.clock,
        )
        self.runtime = FlowRuntime.from_settings(settings)
        self.bot: Bot | None = None
        self._runner: web.AppRunner | None = None
        self._shown = 0

    async def __aenter__(self) -> ChatSession:
        url = await self.sandbox.start()
        provider = build_provider(self.settings, sandbox_url=url)
        self.bot = Bot(self.settings, provider=provider, handler=self.runtime, clock=self.clock)
        await self.bot.db.create_all()
        self._runner = web.AppRunner(create_app(self.bot, run_workers=False), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.sandbox.webhook_url = f"http://{host}:{port}/webhooks/divergent"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()  # stops the bot too
        await self.sandbox.stop()

    async def start_flow(self, flow: str, data: dict[str, Any]) -> list[str]:
        """Start `flow` for this phone, as the operator API would; return the replies."""
        if flow not in self.runtime.flows:
            known = ", ".join(sorted(self.runtime.flows)) or "none"
            raise OperatorError(f"no flow named {flow!r}; known flows: {known}")
        assert self.bot is not None
        await self.bot.inbox.accept(
            InboxEntry(
                "api",
                f"chat-start:{flow}:{self.clock.now().isoformat()}",
                EventKind.START,
                {"flow": flow, "data": data, "policy": "interrupt"},
                self.virtual_number,
                self.phone,
            )
        )
        return await self._settle()

    async def say(self, text: str) -> list[str]:
        """Text the bot as this phone; return its replies."""
        await self.sandbox.text_bot(self.phone, self.virtual_number, text)
        return await self._settle()

    async def wait(self, delta: dt.timedelta) -> list[str]:
        """Move the virtual clock on, fire what fell due, return the replies."""
        assert self.bot is not None
        self.clock.advance(delta)
        fire_due = getattr(self.bot, "fire_due_timers", None)
        if fire_due is not None:
            await fire_due()
        return await self._settle()

    async def conversation(self) -> dict[str, Any]:
        """This phone's conversation row: flow, state and data."""
        assert self.bot is not None
        async with self.bot.db.session() as s:
            row = (
                await s.execute(
                    select(conversations_t).where(
                        conversations_t.c.virtual_number == self.virtual_number,
                        conversations_t.c.phone == self.phone,
                    )
                )
            ).first()
        if row is None:
            return {}
        return {"flow": row.flow, "state": row.state, "data": row.data}

    async def _settle(self) -> list[str]:
        assert self.bot is not None
        await self.bot.run_until_idle()
        new = self.sandbox.messages[self._shown :]
        self._shown = len(self.sandbox.messages)
        return [m.content for m in new if m.recipient.lstrip("+") == self.phone.lstrip("+")]


def show(replies: list[str]) -> None:
    """Print each reply with its encoding and segment count."""
    for text in replies:
        sms = analyze(text)
        plural = "s" if sms.segments != 1 else ""
        print(f"bot> {text}\n     [{sms.encoding.value}, {sms.segments} segment{plural}]")


async def run_chat(settings: Settings, *, flow: str | None, phone: str, data: str) -> None:
    """Run the interactive chat until /quit or end of input."""
    try:
        initial = json.loads(data)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--data is not JSON: {exc.msg}") from None
    if not isinstance(initial, dict):
        raise ConfigError('--data must be a JSON object, e.g. \'{"name": "Sam"}\'')
    me = resolve_recipient(settings, phone)
    with tempfile.TemporaryDirectory(prefix="smsbot-chat-") as tmp:
        db = Path(tmp) / "chat.db"
        chat_settings = settings.replace(
            database_url=f"sqlite+aiosqlite:///{db}", provider="sandbox"
        )
        async with ChatSession(chat_settings, me) as session:
            print(f"You are {me}, texting {session.virtual_number}. {HELP}")
            if flow:
                show(await session.start_flow(flow, initial))
            interactive = sys.stdin.isatty()
            while True:
                try:
                    line = await asyncio.to_thread(input, "you> " if interactive else "")
                except EOFError:
                    break
                line = line.strip()
                if not interactive:  # piped input: echo it, so the output reads as a transcript
                    print(f"you> {line}")
                if not line:
                    continue
                if line in ("/quit", "/exit"):
                    break
                if line == "/data":
                    print(f"     {json.dumps(await session.conversation(), default=str)}")
                    continue
                if line == "/time":
                    print(f"     virtual time {session.clock.now():%Y-%m-%d %H:%M} UTC")
                    continue
                if line.startswith("/wait"):
                    try:
                        delta = parse_duration(line[5:].strip() or "1h")
                    except ValueError:
                        print("     usage: /wait 30m | 2h | 1d")
                        continue
                    show(await session.wait(delta))
                    continue
                show(await session.say(line))
