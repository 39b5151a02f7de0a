"""The running bot: database, inbox, providers, dispatcher, senders and scheduler, wired once.

Each workspace sends through its own provider client (its account) with its own Sender, so
one client's outage, 429s or backlog never delay another's messages (docs/workspaces.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Mapping

from sqlalchemy import func, select

from smsbot.channels.base import SmsProvider
from smsbot.clock import Clock, SystemClock
from smsbot.config import Settings
from smsbot.engine.contract import StepHandler
from smsbot.pipeline.campaigns import CampaignSync, Plan
from smsbot.pipeline.dispatcher import Dispatcher, StepOutcome
from smsbot.pipeline.inbox import Inbox
from smsbot.pipeline.metrics import Metrics
from smsbot.pipeline.rate_limit import number_rates, workspace_rates
from smsbot.pipeline.scheduler import TimerScheduler
from smsbot.pipeline.sender import Sender
from smsbot.store.engine import Database
from smsbot.store.models import (
    DEFAULT_WORKSPACE,
    TIMER_SCHEDULED,
    OutboxState,
    messages_t,
    timers_t,
)

log = logging.getLogger(__name__)

STOP_TIMEOUT = 6.0  # SIGTERM must finish within 10 s: aiohttp and the timers need the rest


class Bot:
    """Everything `smsbot serve` runs, built from Settings; tests pass their own parts in.

    `providers` has one client per workspace (app.assembly.build_providers); `provider` alone
    is the `default` workspace's, enough when no other workspace is declared.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        provider: SmsProvider | None = None,
        providers: Mapping[str, SmsProvider] | None = None,
        handler: StepHandler,
        clock: Clock | None = None,
        db: Database | None = None,
        metrics: Metrics | None = None,
        poll_interval: float = 0.2,
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.db = db or Database(settings.database_url, hide_parameters=not settings.log_sensitive)
        self.metrics = metrics or Metrics()
        self.providers = _clients(settings, provider, providers)
        self.provider = self.providers[DEFAULT_WORKSPACE]
        self.handler = handler
        self.inbox = Inbox(self.db, self.clock)
        rates = number_rates(settings.numbers)
        self.senders: dict[str, Sender] = {}
        for w in settings.workspaces:
            per_sender, account = workspace_rates(settings, w)
            self.senders[w.name] = Sender(
                self.db,
                self.providers[w.name],
                self.clock,
                workspace=w.name,
                metrics=self.metrics,
                batch_size=settings.send_batch_size,
                rate_per_second=per_sender,
                number_rates=rates,
                account_rate=account,
                lease_seconds=settings.lease_seconds,
                resend_grace=settings.resend_grace,
                poll_interval=poll_interval,
            )
        self.sender = self.senders[DEFAULT_WORKSPACE]
        self.dispatcher = Dispatcher(
            self.db,
            handler,
            self.clock,
            metrics=self.metrics,
            workers=settings.workers,
            max_attempts=settings.step_max_attempts,
            step_timeout=settings.step_timeout,
            poll_interval=poll_interval,
            on_commit=self._after_step,
            takers=self.senders.get,
        )
        for sender in self.senders.values():
            sender.on_event = self.dispatcher.notify
        self.scheduler = TimerScheduler(
            settings,
            self.db,
            self.inbox,
            self.clock,
            metrics=self.metrics,
            on_fired=self.dispatcher.notify,
            stepper=self.dispatcher.fire_timers,
            campaigns=CampaignSync(Plan.of(settings, getattr(handler, "campaigns", {}))),
        )
        self._tasks: list[asyncio.Task[None]] = []
        # read once: the webhook path should not rebuild this list per request
        self.webhook_secrets = settings.webhook_secrets()

    def _after_step(self, outcome: StepOutcome) -> None:
        if outcome.handed is not None:
            self.senders[outcome.handed.workspace].hand(outcome.handed)
        if outcome.queued_messages > (outcome.handed is not None):
            self.notify_senders()
        if outcome.timers_changed:
            self.scheduler.notify()

    def notify_senders(self) -> None:
        """Wake every workspace's sender: messages were queued (or became due)."""
        for sender in self.senders.values():
            sender.notify()

    def provider_for(self, workspace: str) -> SmsProvider:
        """The provider client of `workspace`'s account (KeyError naming the workspaces)."""
        if workspace not in self.providers:
            raise KeyError(f"no workspace {workspace!r}; workspaces: {', '.join(self.providers)}")
        return self.providers[workspace]

    @property
    def runs_workers(self) -> bool:
        """True while the dispatcher, sender and timers run in the background (`start()`)."""
        return bool(self._tasks)

    async def start(self, *, background: bool = True) -> None:
        """Start the inbox writer and, with `background`, the dispatcher, sender and timers."""
        await self.inbox.start()
        if background:
            await self.scheduler.start()  # campaigns for leadership; the leader runs APScheduler
            self._tasks = [
                asyncio.create_task(self._supervise(self.dispatcher.run()), name="dispatcher"),
                *(
                    asyncio.create_task(self._supervise(sender.run()), name=f"sender {name}")
                    for name, sender in self.senders.items()
                ),
            ]

    async def _supervise(self, work: Awaitable[None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("a background loop crashed")

    async def stop(self) -> None:
        """Stop timers and claiming work, finish steps in flight, flush the inbox, close."""
        self.dispatcher.stop()
        for sender in self.senders.values():
            sender.stop()
        # Timers first (the loops wind down meanwhile): no firing may outlive the database.
        await self.scheduler.stop()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=STOP_TIMEOUT)
            for task in pending:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._tasks = []
        await self.inbox.stop()
        for client in {id(p): p for p in self.providers.values()}.values():
            await client.close()
        await self.db.dispose()

    async def fire_due_timers(self) -> int:
        """Fire the timers due by the bot's clock (test kit, `smsbot chat`); return how many."""
        return await self.scheduler.fire_due(self.clock.now())

    async def run_until_idle(self) -> int:
        """Dispatch and send until nothing is due (tests, `smsbot chat`): steps + sends done."""
        total = 0
        while True:
            n = await self.dispatcher.run_until_idle() + await self.send_until_idle()
            if n == 0:
                return total
            total += n

    async def send_until_idle(self) -> int:
        """Every workspace's sender sends what is due, side by side: how many were handed over.

        Side by side, so an account that hangs or refuses does not hold up another's sends.
        """
        results = await asyncio.gather(
            *(s.send_until_idle() for s in self.senders.values()), return_exceptions=True
        )
        for result in results:  # every sender finished its round; then the first error
            if isinstance(result, BaseException):
                raise result
        return sum(r for r in results if isinstance(r, int))

    async def next_due(self, until: dt.datetime) -> dt.datetime | None:
        """The first instant after now, up to `until`, when a timer or a held message is due.

        What moves a virtual clock one due instant at a time (the test kit, the console).
        Campaign fires of contacts changed since the last look are scheduled first.
        """
        now = self.clock.now()
        await self.scheduler.sync_campaigns(now)
        timer = select(func.min(timers_t.c.due_at)).where(
            TIMER_SCHEDULED,
            timers_t.c.due_at > now,
            timers_t.c.due_at <= until,
        )
        # per workspace, on ix_messages_outbox (outbox state, workspace, send_after)
        messages = [
            select(func.min(messages_t.c.send_after)).where(
                messages_t.c.workspace == name,
                messages_t.c.outbox == OutboxState.PENDING.value,
                messages_t.c.send_after > now,
                messages_t.c.send_after <= until,
            )
            for name in self.senders
        ]
        async with self.db.session() as s:
            times = [(await s.execute(q)).scalar_one_or_none() for q in (timer, *messages)]
        return min((t for t in times if t is not None), default=None)


def _clients(
    settings: Settings,
    provider: SmsProvider | None,
    providers: Mapping[str, SmsProvider] | None,
) -> dict[str, SmsProvider]:
    """One provider client per workspace, each workspace's messages sent only through its own."""
    clients = dict(providers or {})
    if provider is not None:
        if clients.get(DEFAULT_WORKSPACE, provider) is not provider:
            raise ValueError("Bot: provider and providers['default'] differ; pass one of them")
        clients[DEFAULT_WORKSPACE] = provider
    missing = [name for name in settings.workspaces.names if name not in clients]
    if missing:
        raise ValueError(
            f"Bot: no provider client for workspace(s) {', '.join(missing)}: pass providers="
            " with one client per workspace (smsbot.app.assembly.build_providers builds them)"
        )
    unknown = sorted(set(clients) - set(settings.workspaces.names))
    if unknown:
        raise ValueError(f"Bot: providers for unknown workspace(s) {', '.join(unknown)}")
    return clients
