"""What the console reads from the store: conversations, one conversation's timeline, events.

Read-only queries over the pipeline's own tables, each bounded by a limit and written to use
an index where the table has one that fits, and each within one workspace: every row carries
its workspace (migration 0010), and no query here reads another workspace's.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from sqlalchemy import and_, select

from smsbot.engine.contract import EventKind
from smsbot.store.engine import Database
from smsbot.store.models import (
    Direction,
    EventState,
    contacts_t,
    conversations_t,
    events_t,
    is_value,
    messages_t,
    opt_outs_t,
    state_changes_t,
    timers_t,
)

PAGE_SIZE = 25
TIMELINE_LIMIT = 200  # messages and events shown for one conversation, newest kept
ENDED = "none"  # the flow filter's value for conversations with no flow running


@dataclasses.dataclass(frozen=True, slots=True)
class ConversationFilter:
    """The conversations list's filters, each already normalised (None: any)."""

    number: str | None = None
    flow: str | None = None
    state: str | None = None
    phone: str | None = None
    page: int = 1


async def conversations(
    db: Database, workspace: str, f: ConversationFilter
) -> tuple[list[Any], set[str], bool]:
    """One page of a workspace's conversations, newest activity first; the opted-out keys;
    whether more follow."""
    c = conversations_t
    query = select(c).where(c.c.workspace == workspace)
    if f.number:
        query = query.where(c.c.virtual_number == f.number)
    if f.flow == ENDED:
        query = query.where(c.c.flow.is_(None))
    elif f.flow:
        query = query.where(c.c.flow == f.flow)
    if f.state:
        query = query.where(c.c.state == f.state)
    if f.phone:
        query = query.where(c.c.phone == f.phone)
    query = (
        query.order_by(c.c.last_activity_at.desc().nulls_last(), c.c.id.desc())
        .offset((f.page - 1) * PAGE_SIZE)
        .limit(PAGE_SIZE + 1)
    )
    async with db.session() as s:
        rows = (await s.execute(query)).all()
        phones = sorted({r.phone for r in rows})
        opted: set[str] = set()
        if phones:
            found = await s.execute(
                select(opt_outs_t.c.virtual_number, opt_outs_t.c.phone).where(
                    opt_outs_t.c.phone.in_(phones), opt_outs_t.c.workspace == workspace
                )
            )
            opted = {f"{vn} {phone}" for vn, phone in found}
    return list(rows[:PAGE_SIZE]), opted, len(rows) > PAGE_SIZE


async def known_numbers(db: Database, workspace: str) -> list[str]:
    """The workspace's numbers that have conversations (the filter's choices), at most 50."""
    c = conversations_t
    query = select(c.c.virtual_number).where(c.c.workspace == workspace).distinct().limit(50)
    async with db.session() as s:
        return sorted(vn for (vn,) in await s.execute(query))


@dataclasses.dataclass(slots=True)
class Timeline:
    """One conversation as the console shows it."""

    convo: Any
    messages: list[Any]
    statuses: dict[str, list[tuple[str, dt.datetime]]]  # message id -> receipts, in order
    events: list[Any]  # every inbox event of the conversation's key, oldest first
    timers: list[Any]
    opted_out: Any | None
    contact: Any | None
    changes: list[Any] = dataclasses.field(default_factory=list)  # state changes, oldest first

    @property
    def parked(self) -> list[Any]:
        """The events parked after their retries, which an operator can retry."""
        return [e for e in self.events if e.state == EventState.FAILED.value]


async def conversation(db: Database, workspace: str, convo_id: int) -> Any | None:
    """The workspace's conversation with this id, or None (also when another workspace's)."""
    c = conversations_t
    async with db.session() as s:
        found = await s.execute(select(c).where(c.c.id == convo_id, c.c.workspace == workspace))
        return found.first()


async def timeline(db: Database, convo: Any) -> Timeline:
    """Messages, receipts, events, timers, opt-out and contact of one conversation (all of them
    in the conversation's workspace)."""
    vn, phone, ws = convo.virtual_number, convo.phone, convo.workspace
    m, e = messages_t, events_t
    async with db.session() as s:
        messages = (
            await s.execute(
                select(m)
                .where(m.c.virtual_number == vn, m.c.phone == phone, m.c.workspace == ws)
                .order_by(m.c.created_at.desc(), m.c.id)
                .limit(TIMELINE_LIMIT)
            )
        ).all()[::-1]
        events = (
            await s.execute(
                select(e)  # on ix_events_phone
                .where(
                    e.c.phone == phone,
                    e.c.virtual_number == vn,
                    e.c.workspace == ws,
                )
                .order_by(e.c.id.desc())
                .limit(TIMELINE_LIMIT)
            )
        ).all()[::-1]
        timers = (
            await s.execute(
                select(timers_t)
                .where(timers_t.c.conversation_id == convo.id, timers_t.c.workspace == ws)
                .order_by(timers_t.c.due_at)
            )
        ).all()
        opted_out = (
            await s.execute(
                select(opt_outs_t).where(
                    opt_outs_t.c.virtual_number == vn,
                    opt_outs_t.c.phone == phone,
                    opt_outs_t.c.workspace == ws,
                )
            )
        ).first()
        contact = (
            await s.execute(
                select(contacts_t).where(contacts_t.c.phone == phone, contacts_t.c.workspace == ws)
            )
        ).first()
        outbound = [r for r in messages if r.direction == Direction.OUTBOUND]
        statuses = await _receipts(s, outbound)
        h = state_changes_t
        changes = (
            await s.execute(
                select(h)
                .where(h.c.conversation_id == convo.id, h.c.workspace == ws)
                .order_by(h.c.id.desc())
                .limit(TIMELINE_LIMIT)
            )
        ).all()[::-1]
    return Timeline(
        convo,
        list(messages),
        statuses,
        list(events),
        list(timers),
        opted_out,
        contact,
        list(changes),
    )


async def _receipts(s: Any, outbound: list[Any]) -> dict[str, list[tuple[str, dt.datetime]]]:
    """Each message's delivery receipts, in arrival order: how its status changed.

    A receipt names one of the workspace's own messages (a random id): that scopes it, even a
    receipt stored before its workspace was known.
    """
    if not outbound:
        return {}
    ids = [r.id for r in outbound]
    start = min(r.created_at for r in outbound)
    # A receipt is applied (status_at) after it arrives: no later receipt can matter.
    end = max((r.status_at or r.created_at) for r in outbound)
    reference = events_t.c.payload["client_reference"].as_string()
    query = (
        select(events_t.c.payload, events_t.c.received_at)
        .where(
            events_t.c.received_at.between(start, end),
            events_t.c.kind == EventKind.RECEIPT.value,
            reference.in_(ids),
        )
        .order_by(events_t.c.id)
    )
    found: dict[str, list[tuple[str, dt.datetime]]] = {}
    for payload, received_at in await s.execute(query):
        status = payload.get("status")
        if isinstance(status, str):
            found.setdefault(payload["client_reference"], []).append((status, received_at))
    return found


async def parked_events(db: Database, workspace: str, limit: int = 100) -> list[Any]:
    """A workspace's events parked after their retries, newest first, with their conversation's
    id."""
    e, c = events_t, conversations_t
    same = and_(
        c.c.virtual_number == e.c.virtual_number,
        c.c.phone == e.c.phone,
        c.c.workspace == e.c.workspace,
    )
    query = (
        select(e, c.c.id.label("conversation_id"))
        .outerjoin(c, same)
        .where(is_value(e.c.state, EventState.FAILED), e.c.workspace == workspace)
        .order_by(e.c.id.desc())
        .limit(limit)
    )
    async with db.session() as s:
        return list((await s.execute(query)).all())


async def has_event(db: Database, workspace: str, event_id: int) -> bool:
    """Whether the workspace has an inbox event with this id (another workspace's: no)."""
    e = events_t
    query = select(e.c.id).where(e.c.id == event_id, e.c.workspace == workspace)
    async with db.session() as s:
        return (await s.execute(query)).first() is not None
