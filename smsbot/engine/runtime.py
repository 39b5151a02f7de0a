"""FlowRuntime: runs one event through the router and the flows and returns a StepResult.

It implements smsbot.engine.contract.StepHandler, so it is pure: no database, no network, no
wall clock.
Every timer a flow asks for is a TimerRequest in the result; the dispatcher stores it.

Timers a conversation owns are listed in its data under "_smsbot" (hidden from handlers), so
that when it ends, its wait timeouts and scheduled calls can be cancelled by name while its
reminders still go out ("see you tomorrow" outlives the conversation that arranged it).
"""

from __future__ import annotations

import datetime as dt
import inspect
import logging
import types
from collections.abc import Iterable, Mapping
from typing import Any

from smsbot.config import Settings
from smsbot.engine.campaign import Campaign, campaign_problems, load_campaigns
from smsbot.engine.compliance import ComplianceAction
from smsbot.engine.contact import decode
from smsbot.engine.contract import (
    ConversationSnapshot,
    DispatchEvent,
    EventKind,
    Origin,
    OutgoingSms,
    StepResult,
    TimerRequest,
)
from smsbot.engine.conversation import Conversation
from smsbot.engine.flow import Flow, FlowError, Handler, Message, State
from smsbot.engine.jsondata import copy_json
from smsbot.engine.loader import FlowLoadError, check_flows, load_flows
from smsbot.engine.quiet_hours import defer_until
from smsbot.engine.router import RouteKind, Router
from smsbot.engine.step import RESERVED, Run, Step, StepDeps, sent_by_this_run
from smsbot.sms.keywords import normalize_text
from smsbot.sms.templates import SmsTemplates

__all__ = ["FlowLoopError", "FlowRuntime", "FlowStartRejectedError"]

log = logging.getLogger(__name__)

MAX_STATES_PER_STEP = 10  # enter hooks that keep returning states are a bug, not a workflow


class FlowLoopError(FlowError):
    """A step moved through more than MAX_STATES_PER_STEP states (an on_enter loop)."""


class FlowStartRejectedError(FlowError):
    """A START with policy "reject" found a conversation already running; nothing changed."""


class FlowRuntime:
    """Runs flows for the dispatcher: smsbot's StepHandler."""

    def __init__(
        self,
        settings: Settings,
        templates: SmsTemplates,
        flows: Mapping[str, type[Flow]] | Iterable[type[Flow]],
        campaigns: Mapping[str, Campaign] | None = None,
    ) -> None:
        self.settings = settings
        self.campaigns: dict[str, Campaign] = dict(campaigns or {})
        self.templates = templates
        classes = list(flows.values()) if isinstance(flows, Mapping) else list(flows)
        check_flows(classes, templates)  # raises FlowLoadError naming the problems
        given = [(c, "campaigns") for c in self.campaigns.values()]
        if problems := campaign_problems(given, [c.name for c in classes], templates):
            raise FlowLoadError(problems)
        self.flows: dict[str, type[Flow]] = {cls.name: cls for cls in classes}
        # Flows keep no per-conversation state, so one instance of each serves every step.
        self.instances: dict[str, Flow] = {name: cls() for name, cls in self.flows.items()}
        self.router = Router(settings, self.flows)
        self.deps = StepDeps(
            flows=self.flows,
            instances=self.instances,
            templates=templates,
            router=self.router,
            default_timezone=settings.default_timezone,
            conversation_expiry=settings.conversation_expiry,
            contact_fields=settings.contact_fields,
        )

    @classmethod
    def from_settings(cls, settings: Settings, *, reload_templates: bool = True) -> FlowRuntime:
        """Load templates from settings.templates_dir and flows from settings.flows_dir.

        reload_templates=False: never look at a template file again once compiled (a command
        that runs for minutes, such as `smsbot start`, need not stat it on every render).
        """
        templates = SmsTemplates(
            settings.templates_dir,
            max_segments=settings.max_segments,
            segment_policy=settings.segment_policy,
            smart_characters=settings.smart_characters,
            auto_reload=reload_templates,
        )
        try:
            flows = load_flows(settings.flows_dir, templates)
        except FlowLoadError:
            # One line for the cause, not one per template the flows name.
            if settings.flows_dir.is_dir() and not settings.templates_dir.is_dir():
                raise FlowLoadError(
                    f"templates directory {settings.templates_dir} does not exist:"
                    " create it or set SMSBOT_TEMPLATES_DIR"
                ) from None
            raise
        campaigns = load_campaigns(settings.flows_dir, flows, templates)
        return cls(settings, templates, flows, campaigns)

    async def handle(
        self, event: DispatchEvent, convo: ConversationSnapshot, now: dt.datetime
    ) -> StepResult:
        """Turn one event on one locked conversation into a StepResult; no I/O."""
        step = Step(self.deps, event, convo, now)
        if event.kind is EventKind.INBOUND:
            await self._inbound(step)
        elif event.kind is EventKind.START:
            await self._start_event(step)
        elif event.kind is EventKind.TIMER:
            await self._timer(step)
        elif event.kind is EventKind.SEND_FAILED:
            await self._send_failed(step)
        elif event.kind is EventKind.SEND:
            self._operator_send(step)
        return step.finish()

    # --- events -------------------------------------------------------------------------------

    async def _inbound(self, step: Step) -> None:
        payload = step.event.payload
        body = str(payload.get("body") or "")
        normalized = normalize_text(body)
        rules = step.binding.compliance
        msg = Message(
            text=body,
            normalized=normalized,
            message_id=payload.get("message_id"),
            received_at=step.event.received_at,
            looks_like_opt_out=rules.looks_like_opt_out(normalized),
        )
        active = step.active()
        state = active[1] if active else None
        route = self.router.route(
            step.binding, normalized, opted_out=step.snap.opted_out, state=state, flow=step.flow
        )
        if route.kind is RouteKind.COMPLIANCE:
            assert route.action is not None
            self._compliance(step, route.action, normalized)
        elif route.kind is RouteKind.ACTIVE and active is not None:
            if not await self._continue(step, *active, msg) and step.binding.catch_all:
                await self._begin(step, step.binding.catch_all, {}, Origin.REPLY, msg)
        elif route.kind in (RouteKind.TRIGGER, RouteKind.CATCH_ALL) and route.flow is not None:
            await self._begin(step, route.flow, {}, Origin.REPLY, msg)

    def _compliance(self, step: Step, action: ComplianceAction, normalized: str) -> None:
        rules = step.binding.compliance
        answer = rules.answer(action, normalized, opted_out=step.snap.opted_out)
        if answer.opt_out and step.flow is not None:
            step.end("opted out", cancel_all=True)
        step.result.comply(answer)

    async def _start_event(self, step: Step) -> None:
        event = step.event
        start = self.router.check_start(step.binding, event.payload, parsed=event.data_checked)
        if step.snap.opted_out:
            return  # never start anything for a phone that said STOP
        data = {k: v for k, v in copy_json(start.data).items() if k != RESERVED}
        await self._begin(step, start.flow, data, Origin.FLOW, None, start.policy)

    async def _timer(self, step: Step) -> None:
        payload = step.event.payload
        name, kind = str(payload.get("name")), payload.get("kind")
        body = payload.get("payload") or {}
        if step.snap.opted_out:
            return
        active = step.active()
        if kind == "remind":
            await self._remind(step, name, body)
            return
        if kind == "campaign":
            await self._campaign(step, body)
            return
        if active is None or (kind != "expiry" and name not in step.owned):
            return  # the conversation that asked for it has ended or been replaced
        cls, state = active
        token = body.get("state_token")
        if kind == "timeout" and (
            body.get("state") != state.name or token not in (None, step.snap.state_token)
        ):
            return  # the conversation moved on since the timeout was set
        run = step.conversation(cls, state, step.data, Origin.FLOW)
        step.owned.pop(name, None)
        if kind == "expiry":
            await self._call(run, run.flow.on_expire, run.convo)
            run.ended = "expired"
        elif kind == "timeout":
            if state.timeout_handler is None:
                run.ended = "timed out"
            else:
                await self._enter(run, await self._call(run, state.timeout_handler, run.convo))
        elif kind == "call":
            method = getattr(run.flow, str(body.get("method")))
            await self._enter(run, await self._call(run, method, run.convo))
        step.absorb(run)

    async def _remind(self, step: Step, name: str, body: Mapping[str, Any]) -> None:
        saved = dict(body.get("data") or {})
        zone = step.zone(saved)
        context = {**saved, **(body.get("vars") or {})}
        context.update(phone=step.snap.key.phone, virtual_number=step.snap.key.virtual_number)
        rendered = self.templates.render(
            str(body.get("template")), {**context, "now": step.now}, timezone=zone
        )
        when = defer_until(step.now, step.binding.quiet_window, zone)
        step.result.replies.append(OutgoingSms(rendered.text, Origin.REMINDER, when))
        step.owned.pop(name, None)

    async def _campaign(self, step: Step, body: Mapping[str, Any]) -> None:
        # A campaign fire (pipeline/campaigns.py): checked against the contact as it is now,
        # since the fire was scheduled before this step locked the conversation.
        camp = self.campaigns.get(str(body.get("campaign")))
        contact = step.snap.contact
        if camp is None:
            log.warning("campaign %r fired but is no longer declared", body.get("campaign"))
            return
        if (
            contact is None
            or not contact.exists
            or camp.group not in contact.groups
            or contact.fields.get(camp.field) != body.get("value")
        ):
            return  # left the group or changed the date since: the sync moves or cancels it
        key = step.snap.key
        if camp.send is not None:
            typed = {k: decode(contact.types.get(k), v) for k, v in contact.fields.items()}
            context = camp.context(key.phone, contact.name, contact.language, typed)
            context.update(phone=key.phone, virtual_number=key.virtual_number, now=step.now)
            zone = step.zone(body)
            rendered = self.templates.render(camp.send, context, timezone=zone)
            when = defer_until(step.now, step.binding.quiet_window, zone)
            step.result.replies.append(OutgoingSms(rendered.text, Origin.REMINDER, when))
            return
        data = camp.context(key.phone, contact.name, contact.language, contact.fields)
        start = self.router.check_start(step.binding, {"flow": camp.start, "data": data})
        await self._begin(step, start.flow, dict(start.data), Origin.FLOW, None)

    def _operator_send(self, step: Step) -> None:
        # An operator's message: already rendered by the API, held back by quiet hours like a
        # reminder, and never sent to a phone that opted out (the dispatcher suppresses it).
        if step.snap.opted_out:
            return
        zone = step.zone(step.data)
        when = defer_until(step.now, step.binding.quiet_window, zone)
        text = str(step.event.payload.get("text") or "")
        step.result.replies.append(OutgoingSms(text, Origin.OPERATOR, when))

    async def _send_failed(self, step: Step) -> None:
        active = step.active()
        if active is None or not sent_by_this_run(step.event.payload, step.snap.started_at):
            return
        run = step.conversation(*active, step.data, Origin.FLOW)
        error = str(step.event.payload.get("error") or "")
        await self._enter(run, await self._call(run, run.flow.on_send_failed, run.convo, error))
        step.absorb(run)

    # --- running flows ------------------------------------------------------------------------

    async def _begin(
        self,
        step: Step,
        name: str,
        data: dict[str, Any],
        origin: Origin,
        message: Message | None,
        policy: str = "interrupt",
    ) -> None:
        cls = self.flows[name]
        run = step.conversation(cls, cls.initial_state(), data, origin, message)
        run.fresh = True
        target = await self._call(run, run.flow.start, run.convo)
        await self._enter(run, target or run.state)
        if run.ended:
            # Finished in the step it began (an auto-reply): it never takes the conversation
            # slot, so a conversation already running carries on undisturbed.
            step.absorb(run, side=True)
            step.touched = step.flow is not None
            return
        if step.flow is not None:
            if policy == "reject":
                raise FlowStartRejectedError(  # no phone here: the message is logged
                    f"flow {name!r} not started: flow {step.flow!r} is running for this phone"
                    ' and the policy is "reject"; use "interrupt" to replace it'
                )
            step.end("interrupted", cancel_all=True)
        step.result.state_entered = True
        step.absorb(run)

    async def _continue(self, step: Step, cls: type[Flow], state: State, msg: Message) -> bool:
        picked = state.select(msg)
        if picked is None:
            return False
        handler, msg = picked
        run = step.conversation(cls, state, step.data, Origin.REPLY, msg)
        await self._enter(run, await self._call(run, handler, run.convo, msg))
        step.absorb(run)
        return True

    async def _call(self, run: Run, handler: Handler, *args: Any) -> State | None:
        """Call a handler (bound or plain function) and check what it returned."""
        bound = types.MethodType(handler, run.flow) if inspect.isfunction(handler) else handler
        value = bound(*args)
        if inspect.isawaitable(value):
            value = await value
        return run.flow.next_state(value, getattr(handler, "__name__", str(handler)))

    async def _enter(self, run: Run, target: State | None) -> None:
        """Enter `target` and whatever its on_enter hooks return, at most MAX times."""
        convo, path = run.convo, [run.state.name]
        while target is not None:
            if len(path) > MAX_STATES_PER_STEP:
                raise FlowLoopError(
                    f"flow {run.flow.name!r} went through more than {MAX_STATES_PER_STEP} states"
                    f" in one step ({' -> '.join(path)}): an on_enter hook keeps returning a state"
                )
            if run.state.timeout and not run.fresh and target is not run.state:
                convo.cancel(run.state.timer_name)
            run.state, convo.state, run.entered, run.fresh = target, target.name, True, False
            path.append(target.name)
            following = None
            for hook in target.enter_hooks:
                if (following := await self._call(run, hook, convo)) is not None:
                    break
            if target.final:
                if following is not None:
                    raise FlowError(f"final state {target.name!r} cannot move on to {following}")
                run.ended = "completed"
            elif target.timeout and following is None:
                # Set once the state's question is queued (by the handler, start or on_enter):
                # the wait counts from when it goes out, after any quiet hours holding it back.
                due = question_sent_at(convo) + target.timeout
                body = {"state": target.name, "flow": run.flow.name}
                convo.timers[target.timer_name] = TimerRequest(
                    target.timer_name, "timeout", due, body
                )
            target = following


def question_sent_at(convo: Conversation) -> dt.datetime:
    """When this step's messages go out: now, or the end of the quiet hours that hold them."""
    held = [sms.send_after for sms in convo.outbox if sms.send_after is not None]
    return max([convo.now, *held])
