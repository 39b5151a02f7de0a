"""The timers table as the scheduler reads it: scheduled timers due by a time, page by page.

Pages come in (due_at, id) order with keyset paging, so the (state, due_at) index yields each
page in order and a read stops after one page, however many timers the table holds (history
included). Which timers already fired (their event is in the inbox; the step that marks them
FIRED has not run yet) is one lookup by event id, not a join a planner could turn into a pass
over every timer event. tests/test_query_plans.py checks the plans.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Collection
from typing import Any

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Connection,
    Integer,
    String,
    bindparam,
    cast,
    exists,
    literal_column,
    select,
    text,
    tuple_,
)

from smsbot.engine.contract import ConversationKey, EventKind
from smsbot.pipeline.inbox import InboxEntry
from smsbot.store.lookup import Listed, arrays_for
from smsbot.store.models import (
    TIMER_SCHEDULED,
    contacts_t,
    conversations_t,
    events_t,
    timers_t,
)
from smsbot.store.prepared import Prepared
from smsbot.store.types import utc_param

BATCH = 500


def fired_already() -> ColumnElement[bool]:
    """True when the inbox already holds the firing of the timer row's current token."""
    event_id = (
        literal_column("'timer:'", String)
        + cast(timers_t.c.id, String)
        + literal_column("':'", String)
        + timers_t.c.token
    )
    return exists().where(events_t.c.source == "timer", events_t.c.event_id == event_id)


@dataclasses.dataclass(frozen=True, slots=True)
class Page:
    """Scheduled timers due by some time, one BATCH in (due_at, id) order."""

    unfired: list[Any]  # timer rows whose firing is not in the inbox yet
    keys: dict[int, ConversationKey]  # conversation id -> key (when asked for)
    last: tuple[dt.datetime, int] | None  # where the next page starts; None: this was the last
    contact_keys: dict[int, ConversationKey] = dataclasses.field(default_factory=dict)
    # ^ a campaign fire's timer id -> its contact's phone and the campaign's number

    def key(self, row: Any) -> ConversationKey | None:
        """The conversation an unfired timer fires into; None: its contact is gone."""
        if row.conversation_id is None:
            return self.contact_keys.get(row.id)
        return self.keys.get(row.conversation_id)

    def orphans(self) -> list[int]:
        """Campaign fires whose contact was deleted: cancelled, never fired."""
        return [
            r.id
            for r in self.unfired
            if r.conversation_id is None and r.id not in self.contact_keys
        ]


def _page(ids: bool, after: bool) -> Prepared:
    t = timers_t
    query = select(t).where(TIMER_SCHEDULED, t.c.due_at <= _UNTIL)
    if ids:
        query = query.where(t.c.id.in_(bindparam("ids", expanding=True)))
    if after:
        query = query.where(
            tuple_(t.c.due_at, t.c.id) > tuple_(_AFTER_DUE, bindparam("after_id", type_=Integer()))
        )
    return Prepared(query.order_by(t.c.due_at, t.c.id).limit(BATCH))


_UNTIL = utc_param("until")
_AFTER_DUE = utc_param("after_due")
# (some ids, after a page) -> the page's statement, prepared (store/prepared.py)
_PAGES = {(ids, after): _page(ids, after) for ids in (False, True) for after in (False, True)}
# Which of a page's firings the inbox holds already. SQLite: an IN list on the unique index
# (source, event_id). PostgreSQL: one index probe an event id, whatever the planner knows. As
# `event_id IN (…)` or `= ANY (…)`, once asyncpg's statement went generic, PostgreSQL read every
# 'timer' event and compared it with each of the page's 500 ids in turn while webhook_events
# had no statistics yet (a fresh or fast-growing database): 67 ms a page at 20,000 events and
# 1.8 s at 200,000, against 1.1-1.8 ms for the probes in every case (bench/README.md, session 20).
_FIRED = Prepared(
    select(events_t.c.event_id).where(
        events_t.c.source == "timer", events_t.c.event_id.in_(bindparam("ids", expanding=True))
    )
)
_FIRED_PG = Prepared(
    text(
        "SELECT u.id FROM unnest(CAST(:ids AS VARCHAR[])) AS u(id) CROSS JOIN LATERAL"
        " (SELECT 1 FROM webhook_events AS e WHERE e.source = 'timer' AND e.event_id = u.id"
        " LIMIT 1) AS found"
    ).bindparams(bindparam("ids", type_=ARRAY(String)))
)
_KEYS = Listed(
    lambda listed: select(
        conversations_t.c.id, conversations_t.c.virtual_number, conversations_t.c.phone
    ).where(listed(conversations_t.c.id, "ids"))
)
_PHONES = Listed(
    lambda listed: select(contacts_t.c.id, contacts_t.c.phone).where(listed(contacts_t.c.id, "ids"))
)


def unfired_page(
    until: dt.datetime,
    ids: Collection[int] | None,
    after: tuple[dt.datetime, int] | None,
    *,
    keys: bool = False,
) -> Callable[[Connection], Page]:
    """A read (for Database.read) of the next page of scheduled timers due by `until`.

    `ids` narrows the timers to those (None: every timer); `after` is the previous page's
    `last`. `keys`: also look up each unfired timer's conversation key.
    """
    statement = _PAGES[ids is not None, after is not None]
    params: dict[str, Any] = {"until": until}
    if ids is not None:
        params["ids"] = list(ids)
    if after is not None:
        params["after_due"], params["after_id"] = after

    def read(conn: Connection) -> Page:
        rows = statement.all(conn, params)
        if not rows:
            return Page([], {}, None)
        by_event = {event_id(r.id, r.token): r for r in rows}
        fired = _FIRED_PG if arrays_for(conn) else _FIRED
        done = {eid for (eid,) in fired.all(conn, {"ids": list(by_event)})}
        unfired = [r for eid, r in by_event.items() if eid not in done]
        found: dict[int, ConversationKey] = {}
        people: dict[int, ConversationKey] = {}
        if keys and unfired:
            wanted = list({r.conversation_id for r in unfired if r.conversation_id})
            convos = _KEYS.all(conn, {"ids": wanted})
            found = {i: ConversationKey(vn, phone) for i, vn, phone in convos}
            if contact_ids := {r.contact_id for r in unfired if r.conversation_id is None}:
                found_phones = _PHONES.all(conn, {"ids": list(contact_ids)})
                phones: dict[int, str] = {i: phone for i, phone in found_phones}
                people = {
                    r.id: ConversationKey(str(r.payload.get("number")), phones[r.contact_id])
                    for r in unfired
                    if r.conversation_id is None
                    and r.contact_id in phones
                    and r.payload.get("number")
                }
        last = (rows[-1].due_at, rows[-1].id) if len(rows) == BATCH else None
        return Page(unfired, found, last, people)

    return read


def event_id(timer_id: int, token: str) -> str:
    """The inbox event id of a timer's firing (unique: a double firing is one event)."""
    return f"timer:{timer_id}:{token}"


def firing(row: Any, key: ConversationKey) -> InboxEntry:
    """The inbox event that fires the timer `row` of the conversation `key`."""
    return InboxEntry(
        source="timer",
        event_id=event_id(row.id, row.token),
        kind=EventKind.TIMER,
        payload={
            "name": row.name,
            "kind": row.kind,
            "token": row.token,
            "payload": row.payload,
            "due_at": row.due_at.isoformat(),
            # a campaign fire (no conversation yet) is claimed by its id and token
            **({"timer_id": row.id} if row.conversation_id is None else {}),
        },
        virtual_number=key.virtual_number,
        phone=key.phone,
        workspace=row.workspace,  # the timer's: its conversation's, or its campaign's
    )
