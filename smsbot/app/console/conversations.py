"""Conversations: the filterable list, one conversation's timeline, and retrying parked events."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from smsbot.app.console import people, reads, scope
from smsbot.app.console.render import MOUNT, redirect, render
from smsbot.app.operations import OperatorError, requeue_failed, resolve_recipient, resolve_sender
from smsbot.app.server.keys import BOT
from smsbot.engine.contract import EventKind
from smsbot.store.models import Direction, EventState, TimerState


def flow_names(request: web.Request) -> list[str]:
    """The flows the session's workspace runs, sorted (none with --echo)."""
    return list(scope.flows(request))


def _filters(request: web.Request) -> tuple[reads.ConversationFilter, list[str]]:
    """The list's filters from the query string, and what was wrong with any of them."""
    settings = request.config_dict[BOT].settings
    q, problems = request.query, []
    number = q.get("number", "").strip() or None
    phone = q.get("phone", "").strip() or None
    try:
        number = resolve_sender(settings, number) if number else None
    except OperatorError as exc:
        problems.append(f"Number: {exc}")
    try:
        phone = resolve_recipient(settings, phone) if phone else None
    except OperatorError as exc:
        problems.append(f"Phone: {exc}")
    page_text = q.get("page", "1")
    page = int(page_text) if page_text.isdecimal() and 0 < int(page_text) < 100_000 else 0
    if not page:
        problems.append("Page must be a whole number from 1")
    found = reads.ConversationFilter(
        number=number,
        flow=q.get("flow", "").strip() or None,
        state=q.get("state", "").strip() or None,
        phone=phone,
        page=page or 1,
    )
    return found, problems


async def conversation_list(request: web.Request) -> web.Response:
    """GET /console/conversations?number=&flow=&state=&phone=&page=."""
    bot = request.config_dict[BOT]
    filters, problems = _filters(request)
    rows: list[Any] = []
    opted: set[str] = set()
    more = False
    if not problems:
        rows, opted, more = await reads.conversations(
            bot.db, scope.workspace_name(request), filters
        )
    shown = {k: v for k, v in request.query.items() if k != "page" and v}

    def page_link(page: int) -> str:
        return f"{MOUNT}/conversations?{urlencode({**shown, 'page': page})}"

    return render(
        request,
        "conversations.html",
        status=400 if problems else 200,
        rows=rows,
        opted=opted,
        problems=problems,
        query=request.query,
        filters=filters,
        flows=flow_names(request),
        numbers=await reads.known_numbers(bot.db, scope.workspace_name(request)),
        ended=reads.ENDED,
        previous_page=page_link(filters.page - 1) if filters.page > 1 else None,
        next_page=page_link(filters.page + 1) if more else None,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Item:
    """One line of a timeline."""

    at: dt.datetime
    kind: str  # in | out | event | state | lifecycle
    title: str
    row: Any = None
    statuses: tuple[tuple[str, dt.datetime], ...] = ()


def _status_history(m: Any, receipts: list[tuple[str, dt.datetime]]) -> list[tuple[str, Any]]:
    steps: list[tuple[str, Any]] = [("queued", m.created_at)]
    if m.sent_at is not None:
        steps.append(("accepted", m.sent_at))
    steps += receipts
    if m.status and m.status not in [s for s, _ in steps]:
        steps.append((m.status, m.status_at))
    return [s for i, s in enumerate(steps) if i == 0 or s[0] != steps[i - 1][0]]


_EVENT_TITLES = {
    EventKind.START.value: "Flow start requested",
    EventKind.TIMER.value: "Timer fired",
    EventKind.SEND.value: "Operator message requested",
    EventKind.SEND_FAILED.value: "A message could not be delivered",
    EventKind.INBOUND.value: "Inbound message not processed yet",
}


def timeline_items(t: reads.Timeline) -> list[Item]:
    """Messages, events, timers and the conversation's start and end, oldest first."""
    items = []
    for m in t.messages:
        if m.direction == Direction.INBOUND:
            items.append(Item(m.created_at, "in", "Received", m))
        else:
            history = tuple(_status_history(m, t.statuses.get(m.id, [])))
            items.append(Item(m.created_at, "out", "Sent", m, history))
    for e in t.events:
        # An inbound event that was processed is shown as its message.
        if e.kind == EventKind.INBOUND.value and e.state == EventState.DONE.value:
            continue
        if e.kind == EventKind.RECEIPT.value:
            continue
        title = _EVENT_TITLES.get(e.kind, e.kind)
        if e.kind == EventKind.START.value:
            title = f"Flow {e.payload.get('flow', '?')!s} start requested"
        elif e.kind == EventKind.TIMER.value:
            title = f"Timer {e.payload.get('name', '?')!s} fired"
        items.append(Item(e.received_at, "event", title, e))
    items += [Item(h.at, "state", transition_title(h), h) for h in t.changes]
    c = t.convo
    if not t.changes:  # recorded before state history was (migration 0007): start and end only
        if c.started_at is not None:
            items.append(Item(c.started_at, "lifecycle", "Conversation started"))
        if c.ended_at is not None and c.flow is None:
            reason = c.end_reason or "-"
            items.append(Item(c.ended_at, "lifecycle", f"Conversation ended: {reason}"))
    # In time order; at the same time (a virtual clock that stood still) by step, the inbox
    # event's id, and within a step: its message arrived, its state changed, it replied.
    order = {"lifecycle": 0, "event": 1, "in": 2, "state": 3, "out": 4}
    return sorted(items, key=lambda i: (i.at, _step(i), order[i.kind]))


def _step(item: Item) -> int:
    if item.row is None:
        return 0
    if item.kind == "event":
        return int(item.row.id)
    return int(item.row.event_id or 0)


_CAUSES = {
    EventKind.INBOUND.value: "a message",
    EventKind.TIMER.value: "a timer",
    EventKind.START.value: "a start request",
    EventKind.SEND_FAILED.value: "a failed send",
    EventKind.SEND.value: "an operator message",
}


def transition_title(h: Any) -> str:
    """One state change in words: "appointment: waiting → confirmed, on a message"."""
    cause = _CAUSES.get(h.event_kind, h.event_kind)
    if h.from_state is None:
        return f"{h.flow} started in {h.to_state}, on {cause}"
    if h.to_state is None:
        return f"{h.flow} ended in {h.from_state} ({h.reason or 'ended'}), on {cause}"
    return f"{h.flow}: {h.from_state} → {h.to_state}, on {cause}"


async def _timeline_or_404(request: web.Request) -> reads.Timeline:
    text = request.match_info["id"]
    db, workspace = request.config_dict[BOT].db, scope.workspace_name(request)
    convo = (
        await reads.conversation(db, workspace, int(text))
        if text.isdecimal() and len(text) < 18
        else None
    )
    if convo is None:
        raise web.HTTPNotFound(reason=f"no conversation #{text}: pick one from the list")
    return await reads.timeline(request.config_dict[BOT].db, convo)


async def conversation_page(request: web.Request) -> web.Response:
    """GET /console/conversations/{id}: the timeline, refreshed live."""
    t = await _timeline_or_404(request)
    db = request.config_dict[BOT].db
    person = await people.person(db, t.convo.workspace, t.convo.phone)
    return render(request, "conversation.html", person=person, **_timeline_context(t))


async def conversation_fragment(request: web.Request) -> web.Response:
    """GET /console/conversations/{id}/live: the parts of the page that change (htmx)."""
    t = await _timeline_or_404(request)
    return render(request, "conversation_live.html", **_timeline_context(t))


def _timeline_context(t: reads.Timeline) -> dict[str, Any]:
    return {
        "t": t,
        "c": t.convo,
        "items": timeline_items(t),
        "pending_timers": [x for x in t.timers if x.state == TimerState.SCHEDULED.value],
        "other_timers": [x for x in t.timers if x.state != TimerState.SCHEDULED.value],
    }


async def retry_event(request: web.Request) -> web.StreamResponse:
    """POST /console/events/{id}/retry: queue a parked event again, then go back."""
    bot = request.config_dict[BOT]
    text = request.match_info["id"]
    if not (text.isdecimal() and len(text) < 18):
        raise web.HTTPNotFound(reason=f"no event #{text}")
    if not await reads.has_event(bot.db, scope.workspace_name(request), int(text)):
        raise web.HTTPNotFound(reason=f"no event #{text}")
    if not await reads_requeue(bot, int(text), scope.workspace_name(request)):
        raise web.HTTPConflict(reason=f"event #{text} is not parked (already retried?): reload")
    form = await request.post()
    back = form.get("back")
    if isinstance(back, str) and back.startswith(f"{MOUNT}/") and "//" not in back:
        raise redirect(back)
    raise redirect(f"{MOUNT}/events")


async def reads_requeue(bot: Any, event_id: int, workspace: str) -> bool:
    """Queue a parked event of `workspace` again and wake the dispatcher."""
    changed = await requeue_failed(bot.db, event_id, workspace)
    if changed:
        bot.dispatcher.notify()
    return changed


async def parked_page(request: web.Request) -> web.Response:
    """GET /console/events: every parked event, with a Retry button each."""
    rows = await reads.parked_events(request.config_dict[BOT].db, scope.workspace_name(request))
    return render(request, "events.html", rows=rows)


def add_routes(router: web.UrlDispatcher) -> None:
    """Register this module's pages."""
    router.add_get("/conversations", conversation_list)
    router.add_get("/conversations/{id}", conversation_page)
    router.add_get("/conversations/{id}/live", conversation_fragment)
    router.add_get("/events", parked_page)
    router.add_post("/events/{id}/retry", retry_event)
