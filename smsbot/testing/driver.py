"""BotDriver: your flows on a real bot, a sandbox provider and a virtual clock, in one process.

Nothing is patched. The bot is the one `smsbot serve` runs, behind its real aiohttp app on a
loopback port, over a real database. The provider is the sandbox (smsbot.channels.sandbox), also on
loopback: the bot sends to it over HTTP with the Divergent client, and it posts inbound SMS and
delivery receipts back to the webhook, signed. Only time is fake: a VirtualClock that moves when
the test says so. With no background loops, every action runs the bot until it is idle, so a
test never sleeps and never races.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web
from sqlalchemy import select

from smsbot.app.assembly import SANDBOX_API_KEY, sandbox_providers
from smsbot.app.operations import OperatorError, resolve_recipient, resolve_sender
from smsbot.app.server.app import create_app
from smsbot.channels.sandbox import Sandbox
from smsbot.clock import VirtualClock
from smsbot.config import Secret, Settings
from smsbot.engine.runtime import FlowRuntime
from smsbot.engine.step import RESERVED
from smsbot.pipeline.bot import Bot
from smsbot.store.engine import Database
from smsbot.store.models import (
    TIMER_SCHEDULED,
    conversations_t,
    events_t,
    opt_outs_t,
    timers_t,
)
from smsbot.testing.harness import DEFAULT_NOW, DEFAULT_NUMBER, DEFAULT_PHONE
from smsbot.testing.transcript import Reply, Transcript

__all__ = [
    "DEFAULT_NOW",
    "DEFAULT_NUMBER",
    "DEFAULT_PHONE",
    "BotDriver",
    "ConversationView",
    "StartRefusedError",
    "StepFailedError",
    "driver_settings",
]

MAX_ROUNDS = 100  # fire-dispatch-send rounds at one instant; more is a timer rescheduling itself


class StepFailedError(AssertionError):
    """A flow raised while handling an event; the message has the error and the transcript."""


class StartRefusedError(OperatorError):
    """The operator API refused a start (unknown flow, bad data, opted-out phone)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(frozen=True, slots=True)
class ConversationView:
    """One conversation as stored after the last action: where it is and what it holds."""

    phone: str
    virtual_number: str
    flow: str | None  # None: no conversation running (never started, or ended)
    state: str | None
    data: dict[str, Any]  # as the flow sees it (kept after the conversation ends)
    opted_out: bool
    end_reason: str | None
    timers: dict[str, dt.datetime]  # scheduled timers by name: "reminder", "timeout:waiting"
    end_state: str | None = None  # the state it ended in ("cancelled"); None while it runs

    @property
    def active(self) -> bool:
        """True while a flow is running for this phone."""
        return self.flow is not None


def driver_settings(
    project: Path, database_url: str, overrides: Mapping[str, str] | None = None
) -> Settings:
    """Settings for a BotDriver: the project's smsbot.toml, `overrides` on top, no os.environ.

    `overrides` are SMSBOT_* names and values, as in the environment; relative flow and
    template directories are read from `project`, not from the working directory.
    """
    overrides = dict(overrides or {})
    config = overrides.pop("SMSBOT_CONFIG", "smsbot.toml")
    env = {
        "SMSBOT_DATABASE_URL": database_url,
        # The rate limiter counts wall-clock seconds, which mean nothing in virtual time.
        "SMSBOT_SEND_RATE": "100000",
        **overrides,
        "SMSBOT_PROVIDER": "sandbox",  # never a real provider, whatever smsbot.toml says
    }
    settings = Settings.from_env(env, toml_path=project / config)
    return settings.replace(
        flows_dir=project / settings.flows_dir, templates_dir=project / settings.templates_dir
    )


class BotDriver:
    """Talk to your flows as a phone would: signed webhooks, a real database, virtual time."""

    def __init__(
        self, settings: Settings, *, now: dt.datetime | None = None, phone: str = DEFAULT_PHONE
    ) -> None:
        self.clock = VirtualClock(now or DEFAULT_NOW)
        self.virtual_number = resolve_sender(settings, settings.default_sender or DEFAULT_NUMBER)
        self.settings = settings.replace(
            provider="sandbox",
            api_key=settings.api_key or Secret(secrets.token_urlsafe(16)),
            default_sender=self.virtual_number,  # the operator API sends only from our numbers
        )
        self.phone = resolve_recipient(self.settings, phone)
        self.transcript = Transcript()
        self._views: dict[tuple[str, str], ConversationView] = {}
        self._reported: set[tuple[int, int]] = set()  # (event id, attempt) already raised
        self._stack = contextlib.AsyncExitStack()
        self._bot: Bot | None = None
        self._sandbox: Sandbox | None = None
        self._http: aiohttp.ClientSession | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> BotDriver:
        try:
            await self._open()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()

    async def _open(self) -> None:
        runtime = FlowRuntime.from_settings(self.settings)  # first: a broken flow fails fast
        sandbox = Sandbox(
            api_key=SANDBOX_API_KEY,
            webhook_secret=self.settings.webhook_secrets()[0],
            clock=self.clock,
        )
        url = await sandbox.start()
        self._stack.push_async_callback(sandbox.stop)
        db = Database(self.settings.database_url)
        self._stack.push_async_callback(db.dispose)  # again after the app's cleanup: harmless
        await db.create_all()
        # every workspace's client to the sandbox: a test never reaches a real account
        providers = sandbox_providers(self.settings, url)
        for provider in providers.values():
            self._stack.push_async_callback(provider.close)
        bot = Bot(self.settings, providers=providers, handler=runtime, clock=self.clock, db=db)
        # No background workers: each action runs the bot until idle, so tests never race it.
        runner = web.AppRunner(create_app(bot, run_workers=False), access_log=None)
        await runner.setup()  # starts the bot; its cleanup stops it
        self._stack.push_async_callback(runner.cleanup)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        base = f"http://{host}:{port}"
        sandbox.webhook_url = f"{base}/webhooks/divergent"
        self._http = await self._stack.enter_async_context(aiohttp.ClientSession(base))
        self._bot, self._sandbox = bot, sandbox

    @property
    def bot(self) -> Bot:
        """The smsbot Bot under test (its db, inbox, dispatcher, sender, scheduler)."""
        if self._bot is None:
            raise RuntimeError("use the driver inside `async with BotDriver(...)`")
        return self._bot

    @property
    def sandbox(self) -> Sandbox:
        """The fake provider: `set_failure`, `failing_numbers` and `messages` are there."""
        if self._sandbox is None:
            raise RuntimeError("use the driver inside `async with BotDriver(...)`")
        return self._sandbox

    # -- acting ---------------------------------------------------------------------------------

    async def start(
        self,
        flow: str,
        *,
        to: str | None = None,
        data: Mapping[str, Any] | None = None,
        from_: str | None = None,
        policy: str = "interrupt",
    ) -> None:
        """Start `flow` for a phone through the operator API, then run until idle."""
        phone = self._use_phone(to)
        data = dict(data or {})
        body = {"to": phone, "from": from_ or self.virtual_number, "data": data, "policy": policy}
        assert self._http is not None and self.settings.api_key is not None
        headers = {"Authorization": f"Bearer {self.settings.api_key.get()}"}
        path = f"/api/flows/{quote(flow, safe='')}/start"
        async with self._http.post(path, json=body, headers=headers) as resp:
            answer = await resp.json()
        if resp.status != 202:
            raise StartRefusedError(
                f"starting {flow!r} for {phone} was refused ({resp.status}): {answer.get('error')}",
                resp.status,
            )
        self.transcript.started(self.clock.now(), flow, phone, data)
        await self._settle()

    async def send(self, text: str, *, from_: str | None = None, to: str | None = None) -> None:
        """Text the bot from a phone (default: the last one used) as a signed webhook; run."""
        phone = self._use_phone(from_)
        number = resolve_sender(self.settings, to) if to else self.virtual_number
        self.transcript.received(self.clock.now(), phone, text)
        status = await self.sandbox.text_bot(phone, number, text)
        if not 200 <= status < 300:
            problem = f"the webhook answered HTTP {status} to {text!r} from {phone}"
            raise AssertionError(self.transcript.report(problem, problem))
        await self._settle()

    async def advance(
        self,
        delta: dt.timedelta | None = None,
        *,
        days: float = 0,
        hours: float = 0,
        minutes: float = 0,
        until: dt.datetime | None = None,
    ) -> None:
        """Move the clock on (or `until` a time), firing timers and sending as each falls due."""
        now = self.clock.now()
        if until is not None:
            if until.tzinfo is None:
                raise ValueError("advance(until=...) needs an aware datetime (tzinfo=datetime.UTC)")
            target = until.astimezone(dt.UTC)
        else:
            step = delta or dt.timedelta()
            target = now + step + dt.timedelta(days=days, hours=hours, minutes=minutes)
        if target < now:
            raise ValueError(f"the clock never moves back: {target:%Y-%m-%d %H:%M} is before now")
        self.transcript.advanced(now, target - now)
        # One instant at a time, so each timer fires at its own time, in order (and none is
        # later than SMSBOT_REMINDER_MAX_LATENESS, which would mark it missed).
        while (due := await self.bot.next_due(target)) is not None:
            self.clock.set(due)
            await self._settle()
        self.clock.set(target)
        await self._settle()

    # -- checking -------------------------------------------------------------------------------

    def expect_reply(
        self,
        *,
        contains: str | None = None,
        equals: str | None = None,
        matches: str | re.Pattern[str] | None = None,
        to: str | None = None,
    ) -> Reply:
        """Assert the next unchecked reply (to `to`, if given) fits; check it off and return it."""
        __tracebackhide__ = True  # pytest shows the test's line, not the kit's
        phone = resolve_recipient(self.settings, to) if to else None
        return self.transcript.expect(contains=contains, equals=equals, matches=matches, to=phone)

    def expect_no_reply(self, *, to: str | None = None) -> None:
        """Assert every reply (to `to`, if given) has been checked off by expect_reply."""
        __tracebackhide__ = True
        self.transcript.expect_none(to=resolve_recipient(self.settings, to) if to else None)

    @property
    def replies(self) -> list[Reply]:
        """Every SMS the bot sent so far, checked or not, in order."""
        return list(self.transcript.replies)

    def conversation(
        self, phone: str | None = None, *, virtual_number: str | None = None
    ) -> ConversationView:
        """The conversation with `phone` (default: the last used) as of the last action."""
        phone = resolve_recipient(self.settings, phone) if phone else self.phone
        number = resolve_sender(self.settings, virtual_number) if virtual_number else None
        number = number or self.virtual_number
        empty = ConversationView(phone, number, None, None, {}, False, None, {})
        return self._views.get((number, phone), empty)

    # -- running the bot ------------------------------------------------------------------------

    def _use_phone(self, given: str | None) -> str:
        if given:
            self.phone = resolve_recipient(self.settings, given)
        return self.phone

    async def _settle(self) -> None:
        """Fire what is due, dispatch, send and apply receipts until nothing moves."""
        bot, sandbox = self.bot, self.sandbox
        for _ in range(MAX_ROUNDS):
            work = await bot.fire_due_timers() + await bot.run_until_idle()
            await sandbox.wait_for_receipts()  # the sandbox posts them from its own tasks
            work += await bot.run_until_idle()
            if not work:
                break
        else:
            raise RuntimeError(
                f"the bot was still busy after {MAX_ROUNDS} rounds at {self.clock.now()}:"
                " does a timer keep scheduling itself at convo.now?"
            )
        for m in sandbox.messages[len(self.transcript.replies) :]:
            self.transcript.sent(Reply.of(m.received_at, m.recipient, m.sender, m.content))
        await self._refresh()
        await self._raise_failures()

    async def _refresh(self) -> None:
        """Read every conversation, opt-out and scheduled timer, for conversation()."""
        async with self.bot.db.session() as s:
            convos = (await s.execute(select(conversations_t))).all()
            pairs = await s.execute(select(opt_outs_t.c.virtual_number, opt_outs_t.c.phone))
            opted = {(vn, phone) for vn, phone in pairs}
            timers = (
                await s.execute(
                    select(timers_t.c.conversation_id, timers_t.c.name, timers_t.c.due_at).where(
                        TIMER_SCHEDULED
                    )
                )
            ).all()
        views: dict[tuple[str, str], ConversationView] = {}
        for c in convos:
            key = (c.virtual_number, c.phone)
            views[key] = ConversationView(
                phone=c.phone,
                virtual_number=c.virtual_number,
                flow=c.flow,
                state=c.state,
                data={k: v for k, v in (c.data or {}).items() if k != RESERVED},
                opted_out=key in opted,
                end_reason=c.end_reason,
                timers={t.name: t.due_at for t in timers if t.conversation_id == c.id},
                end_state=c.end_state,
            )
        for vn, phone in opted - views.keys():
            views[(vn, phone)] = ConversationView(phone, vn, None, None, {}, True, None, {})
        self._views = views

    async def _raise_failures(self) -> None:
        """Raise StepFailedError for a step that failed since the last check."""
        query = select(
            events_t.c.id,
            events_t.c.kind,
            events_t.c.phone,
            events_t.c.attempts,
            events_t.c.last_error,
        ).where(events_t.c.last_error.is_not(None))
        async with self.bot.db.session() as s:
            rows = (await s.execute(query)).all()
        new = [r for r in rows if (r.id, r.attempts) not in self._reported]
        if not new:
            return
        self._reported.update((r.id, r.attempts) for r in new)
        problems = [
            f"{r.kind} event #{r.id} for {r.phone} failed (attempt {r.attempts}): {r.last_error}"
            for r in new
        ]
        raise StepFailedError(self.transcript.report(problems[0], "\n".join(problems)))
