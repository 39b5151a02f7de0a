"""`smsbot chat`: talk to your flows from the terminal, through a sandbox on loopback.

It is the test kit's BotDriver (smsbot.testing) at a prompt: the bot's real aiohttp app on a
loopback port, a sandbox provider that signs your lines as inbound webhooks and records the
bot's replies, and a throw-away SQLite database. Time is a virtual clock that starts now, so
`/wait 23h` fires reminders at once.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from collections.abc import Awaitable
from pathlib import Path

from smsbot.app.operations import resolve_recipient
from smsbot.clock import SystemClock
from smsbot.config import ConfigError, Settings, parse_duration
from smsbot.engine.runtime import FlowRuntime
from smsbot.hints import did_you_mean
from smsbot.testing.driver import BotDriver, StepFailedError

HELP = (
    "Type a message and press Enter. Commands: /wait 2h (move the clock, fire due reminders),"
    " /time, /data, /quit"
)


class _Prompt:
    """Runs one action of the driver and prints the replies to this phone it brought."""

    def __init__(self, bot: BotDriver, phone: str) -> None:
        self.bot = bot
        self.phone = phone
        self.shown = 0

    async def act(self, action: Awaitable[None]) -> None:
        """Await `action`; print a flow's failure instead of ending the chat; show replies."""
        running = self.bot.conversation().active
        try:
            await action
        except StepFailedError as exc:
            print(f"     (the flow failed: {str(exc).splitlines()[0]})")
        for reply in self.bot.replies[self.shown :]:
            if reply.to == self.phone:
                plural = "s" if reply.segments != 1 else ""
                print(
                    f"bot> {reply.text}\n     [{reply.encoding}, {reply.segments} segment{plural}]"
                )
        self.shown = len(self.bot.replies)
        convo = self.bot.conversation()
        if running and not convo.active:
            print(f"     (the conversation ended in {convo.end_state}: {convo.end_reason})")


def _check_flow(bot: BotDriver, flow: str | None) -> None:
    """Refuse --flow naming no loaded flow, with the known names and the closest one."""
    handler = bot.bot.handler
    if flow is None or not isinstance(handler, FlowRuntime) or flow in handler.flows:
        return
    known = ", ".join(sorted(handler.flows)) or "none"
    hint = did_you_mean(flow, handler.flows, "{!r}")
    hint = f" ({hint})" if hint else ""
    raise ConfigError(f"--flow: no flow named {flow!r}{hint}; known flows: {known}")


async def run_chat(settings: Settings, *, flow: str | None, phone: str, data: str) -> None:
    """Run the interactive chat until /quit or end of input."""
    try:
        initial = json.loads(data)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--data is not JSON: {exc.msg}") from None
    if not isinstance(initial, dict):
        raise ConfigError('--data must be a JSON object, e.g. \'{"name": "Sam"}\'')
    me = resolve_recipient(settings, phone)
    now = SystemClock().now().replace(microsecond=0)
    with tempfile.TemporaryDirectory(prefix="smsbot-chat-") as tmp:
        db = Path(tmp) / "chat.db"
        chat_settings = settings.replace(database_url=f"sqlite+aiosqlite:///{db}")
        async with BotDriver(chat_settings, now=now, phone=me) as bot:
            _check_flow(bot, flow)  # before the greeting: a typo is one line, not a chat
            prompt = _Prompt(bot, me)
            print(f"You are {me}, texting {bot.virtual_number}. {HELP}")
            if flow:
                await prompt.act(bot.start(flow, data=initial))
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
                    convo = bot.conversation()
                    shown = {"flow": convo.flow, "state": convo.state, "data": convo.data}
                    if not convo.active and convo.end_state:
                        shown.update(end_state=convo.end_state, end_reason=convo.end_reason)
                    print(f"     {json.dumps(shown, default=str)}")
                elif line == "/time":
                    print(f"     virtual time {bot.clock.now():%Y-%m-%d %H:%M} UTC")
                elif line.startswith("/wait"):
                    try:
                        delta = parse_duration(line[5:].strip() or "1h")
                    except ValueError:
                        print("     usage: /wait 30m | 2h | 1d")
                        continue
                    await prompt.act(bot.advance(delta))
                else:
                    await prompt.act(bot.send(line))
