"""What an operator does from outside a conversation: send now, inspect and retry failures."""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import Any

from sqlalchemy import CompoundSelect, select, update

from smsbot.app.assembly import workspace_provider
from smsbot.channels.base import OutboundSms
from smsbot.channels.errors import ProviderError
from smsbot.clock import SystemClock
from smsbot.config import Settings
from smsbot.engine.contract import Origin
from smsbot.hints import did_you_mean
from smsbot.pipeline.contacts import suppression_hash
from smsbot.pipeline.inbox import InboxEntry
from smsbot.sms.phone import PhoneNumberError, normalize, normalize_sender
from smsbot.sms.status import DeliveryStatus
from smsbot.sms.templates import RenderedSms, SmsTemplates, TemplateError
from smsbot.sms.text import Encoding
from smsbot.store.engine import Database
from smsbot.store.models import (
    Direction,
    EventState,
    OutboxState,
    events_t,
    is_value,
    messages_t,
    new_id,
    opt_out_blocks,
    opt_outs_t,
    suppressions_t,
)
from smsbot.workspaces import DEFAULT, Workspace


class OperatorError(Exception):
    """An operator request that cannot be carried out; the message says why and what to do."""


def workspace_named(settings: Settings, name: str) -> Workspace:
    """The configured workspace `name`, or OperatorError naming the workspaces there are."""
    found = settings.workspaces.get(name)
    if found is None:
        hint = did_you_mean(name, settings.workspaces.names, "{!r}")
        raise OperatorError(
            f"no workspace {name!r}{f' ({hint})' if hint else ''}; the workspaces here:"
            f" {', '.join(settings.workspaces.names)} (declare one as [workspaces.NAME] in"
            " smsbot.toml)"
        )
    return found


def default_sender(settings: Settings, workspace: str = DEFAULT) -> str | None:
    """What `workspace` sends from when a request names no sender, as written (or None).

    `default`: SMSBOT_DEFAULT_SENDER (or the sandbox's number), as before workspaces; then its
    first number. A declared workspace: its first number as written in smsbot.toml, else its
    first sender ID.
    """
    if workspace == DEFAULT and settings.sender:
        return settings.sender
    table = settings.workspace_tables.get(workspace, {})
    for key in ("numbers", "sender_ids"):
        listed = table.get(key)
        if isinstance(listed, list) and listed and isinstance(listed[0], str):
            return listed[0]
    return None


def resolve_sender(
    settings: Settings,
    sender: str | None,
    *,
    given_as: str = '"from"',
    workspace: str = DEFAULT,
) -> str:
    """Return the sender to use, normalised, or raise OperatorError naming the fix.

    `given_as` is how the caller's user names a sender: the API's "from", the CLI's --from.
    """
    chosen = sender or default_sender(settings, workspace)
    if not chosen:
        where = (
            "set SMSBOT_DEFAULT_SENDER"
            if workspace == DEFAULT
            else f"add numbers to [workspaces.{workspace}] in smsbot.toml"
        )
        raise OperatorError(f"no sender: give one in {given_as}, or {where}")
    owner = settings.workspaces.get(workspace)
    region = owner.default_region if owner is not None else settings.default_region
    try:
        return normalize_sender(chosen, region)
    except PhoneNumberError as exc:
        raise OperatorError(f"sender: {exc}") from None


def deployment_senders(settings: Settings) -> frozenset[str]:
    """This deployment's own senders: SMSBOT_DEFAULT_SENDER and the numbers in smsbot.toml."""
    ours = set()
    for raw in filter(None, (settings.sender, *settings.numbers)):
        with contextlib.suppress(PhoneNumberError):  # the router refuses a bad number at start
            ours.add(normalize_sender(raw, settings.default_region))
    return frozenset(ours)


def workspace_senders(settings: Settings, workspace: str = DEFAULT) -> frozenset[str]:
    """The senders `workspace` may send from: those of the deployment's it owns, and its own.

    With no declared workspace, `default` owns every number, so this is deployment_senders().
    """
    found = settings.workspaces.get(workspace)
    if found is None:
        return frozenset()
    candidates = deployment_senders(settings) | found.numbers | found.sender_ids
    if (first := default_sender(settings, workspace)) is not None:
        with contextlib.suppress(PhoneNumberError):
            candidates |= {normalize_sender(first, found.default_region)}
    return frozenset(s for s in candidates if settings.workspaces.owner_name(s) == workspace)


def operator_sender(
    settings: Settings,
    sender: str | None,
    *,
    given_as: str = '"from"',
    workspace: str = DEFAULT,
) -> str:
    """The sender an operator's message or start goes from: one of ours, or OperatorError."""
    chosen = resolve_sender(settings, sender, given_as=given_as, workspace=workspace)
    check_our_sender(settings, chosen, workspace=workspace)
    return chosen


def check_our_sender(
    settings: Settings,
    sender: str,
    ours: frozenset[str] | None = None,
    *,
    workspace: str = DEFAULT,
) -> None:
    """Raise OperatorError unless the normalised `sender` is one of workspace_senders()."""
    ours = workspace_senders(settings, workspace) if ours is None else ours
    if sender in ours:
        return
    listed = ", ".join(sorted(ours)) or "none is configured"
    if workspace == DEFAULT and len(settings.workspaces) == 1:
        raise OperatorError(
            f"{sender} is not one of this deployment's senders ({listed}): send from one of"
            ' them, or configure it as SMSBOT_DEFAULT_SENDER or, for a number, as [numbers."…"]'
            " in smsbot.toml"
        )
    # Whether another workspace owns it is not said: that is the other workspace's business.
    raise OperatorError(
        f"{sender} is not one of workspace {workspace}'s senders ({listed}): send from one of"
        f" them, or add it to numbers or sender_ids in [workspaces.{workspace}] of smsbot.toml"
    )


def opt_outs_stopping(
    sender: str, phone: str, workspace: str = DEFAULT
) -> CompoundSelect[tuple[int]]:
    """SQL: the opt-outs that stop `sender` texting `phone`, hashed ones of erased phones too.

    An erased phone's opt-outs are kept as keyed hashes (smsbot contacts erase); an
    alphanumeric sender is stopped by any of them in its workspace, as opt_out_blocks says for
    the others. Another workspace's opt-outs never stop it.
    """
    return (
        select(opt_outs_t.c.id)
        .where(opt_out_blocks(sender, phone), opt_outs_t.c.workspace == workspace)
        .union_all(
            select(suppressions_t.c.id).where(
                suppressions_t.c.phone_hash == suppression_hash(phone),
                suppressions_t.c.workspace == workspace,
                *([suppressions_t.c.virtual_number == sender] if sender[:1] == "+" else []),
            )
        )
    )


def opted_out_error(phone: str, sender: str) -> str:
    """Why nothing may go from `sender` to `phone`, which opted out (opt_out_blocks said so)."""
    if sender.startswith("+"):
        return f"{phone} has opted out of messages from {sender}; they must text START to it"
    return (
        f"{phone} has opted out of one of this workspace's numbers, and {sender} is an"
        " alphanumeric sender nobody can reply STOP to, so the opt-out stops it too; they must"
        " text START to that number"
    )


def operator_text(
    settings: Settings, text: str, templates: SmsTemplates | None = None
) -> RenderedSms:
    """An operator's text as it will be sent, checked like a template's output."""
    checker = templates or SmsTemplates(
        settings.templates_dir,
        max_segments=settings.max_segments,
        segment_policy=settings.segment_policy,
        smart_characters=settings.smart_characters,
    )
    try:
        return checker.check_text(text, label="the text")
    except TemplateError as exc:
        raise OperatorError(str(exc)) from None


def resolve_recipient(settings: Settings, to: str, *, region: str | None = None) -> str:
    """Return `to` in E.164 (a national number read in `region`), or raise OperatorError."""
    try:
        return normalize(to, region or settings.default_region)
    except PhoneNumberError as exc:
        raise OperatorError(f"recipient: {exc}") from None


def check_send(
    settings: Settings, *, to: str, text: str, sender: str | None, workspace: str = DEFAULT
) -> tuple[str, str, RenderedSms]:
    """Return (recipient, sender, checked text) for `smsbot send`, or raise OperatorError."""
    owner = workspace_named(settings, workspace)
    recipient = resolve_recipient(settings, to, region=owner.default_region)
    origin = operator_sender(settings, sender, given_as="--from", workspace=workspace)
    if not text.strip():
        raise OperatorError("the text is empty: pass --text with something to say")
    return recipient, origin, operator_text(settings, text)


async def send_now(
    settings: Settings, *, to: str, text: str, sender: str | None, workspace: str = DEFAULT
) -> str:
    """Send one SMS at once through `workspace`'s provider account (`smsbot send`), recorded."""
    recipient, origin, sms = check_send(
        settings, to=to, text=text, sender=sender, workspace=workspace
    )
    owner = workspace_named(settings, workspace)
    db = Database(settings.database_url)
    clock = SystemClock()
    # The sandbox is local: running or not, so retrying it only delays the answer.
    sandbox = owner.provider == "sandbox"
    provider = workspace_provider(settings, owner, attempts=1 if sandbox else 4)
    try:
        async with db.session() as s, s.begin():
            stopping = opt_outs_stopping(origin, recipient, workspace)
            if (await s.execute(stopping)).first() is not None:
                raise OperatorError(opted_out_error(recipient, origin))
            message_id = new_id()
            now = clock.now()
            await s.execute(
                messages_t.insert().values(
                    id=message_id,
                    direction=Direction.OUTBOUND.value,
                    workspace=workspace,
                    virtual_number=origin,
                    phone=recipient,
                    body=sms.text,
                    origin=Origin.OPERATOR.value,
                    status=DeliveryStatus.QUEUED.value,
                    outbox=OutboxState.INFLIGHT.value,
                    lease_until=now + dt.timedelta(minutes=5),
                    segments=sms.segments,
                    encoding=sms.encoding.value,
                    created_at=now,
                    attempts=1,
                )
            )
        outbound = OutboundSms(
            origin,
            recipient,
            sms.text,
            client_reference=message_id,
            unicode=sms.encoding is Encoding.UCS2,
        )

        async def record(**values: object) -> None:
            async with db.session() as s, s.begin():
                await s.execute(
                    update(messages_t)
                    .where(messages_t.c.id == message_id)
                    .values(outbox=OutboxState.DONE.value, status_at=clock.now(), **values)
                )

        try:
            result = await provider.send(outbound)
        except ProviderError as exc:
            await record(status=DeliveryStatus.FAILED.value, error=str(exc)[:500])
            hint = "; is `smsbot serve` (or `smsbot sandbox`) running?" if sandbox else ""
            raise OperatorError(f"the message was not sent: {exc}{hint}") from None
        await record(
            status=DeliveryStatus.ACCEPTED.value,
            provider_message_id=result.provider_message_id,
            sent_at=clock.now(),
        )
        return (
            f"sent {sms.segments} segment(s), {sms.encoding.value}, from {origin} to {recipient};"
            f" message id {message_id}, provider id {result.provider_message_id or '-'}"
        )
    finally:
        await provider.close()
        await db.dispose()


def inbox_entry(workspace: str, **fields: Any) -> InboxEntry:
    """An inbox event of `workspace` (an API start or send)."""
    return InboxEntry(workspace=workspace, **fields)


async def failed_events(
    settings: Settings, *, limit: int = 50, workspace: str = DEFAULT
) -> list[str]:
    """Return one line per parked event of `workspace`: id, kind, conversation, attempts, error."""
    db = Database(settings.database_url)
    try:
        async with db.session() as s:
            rows = (
                await s.execute(
                    select(events_t)
                    .where(
                        is_value(events_t.c.state, EventState.FAILED),
                        events_t.c.workspace == workspace,
                    )
                    .order_by(events_t.c.id.desc())
                    .limit(limit)
                )
            ).all()
    finally:
        await db.dispose()
    return [
        f"#{r.id} {r.kind} {r.virtual_number}<->{r.phone} attempts={r.attempts} "
        f"at={r.processed_at:%Y-%m-%d %H:%M:%S} error={error_message(r.last_error)[:200]}"
        for r in rows
    ]


def error_message(stored: str | None) -> str:
    """The exception's own line from a stored traceback ("ValueError: bad date"), or ""."""
    # A traceback's last line not indented is "Type: message", chained or not; a plain one-line
    # error is its own message. (A long traceback is stored cut from the front.)
    lines = [line for line in (stored or "").splitlines() if line.strip()]
    return next((line for line in reversed(lines) if not line[:1].isspace()), "")


async def requeue_failed(db: Database, event_id: int, workspace: str | None = None) -> bool:
    """Put a parked event (of `workspace`, None: any) back in the queue with its attempts reset.

    False if it is not a parked event (of that workspace).
    """
    scope = [events_t.c.workspace == workspace] if workspace is not None else []
    async with db.session() as s, s.begin():
        result = await s.execute(
            update(events_t)
            .where(events_t.c.id == event_id, is_value(events_t.c.state, EventState.FAILED), *scope)
            .values(state=EventState.PENDING.value, attempts=0, next_attempt_at=None)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


async def retry_event(settings: Settings, event_id: int, workspace: str = DEFAULT) -> str:
    """Put a parked event of `workspace` back in the queue with its attempts reset."""
    db = Database(settings.database_url)
    try:
        changed = await requeue_failed(db, event_id, workspace)
    finally:
        await db.dispose()
    if not changed:
        raise OperatorError(
            f"event #{event_id} is not a failed event of workspace {workspace}; see"
            f" `smsbot events failed --workspace {workspace}`"
        )
    return f"event #{event_id} queued again"
