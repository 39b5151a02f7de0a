"""Write what a batch of steps decided, in the dispatcher's transaction, with few statements.

Every row a batch touches is written with one executemany per kind (conversations, messages,
opt-outs, timers, events), so a batch of 200 steps costs about as many round trips as one. The
rows themselves are built and bound by step_rows.py: a bulk chunk's before its transaction
begins (the write then sets only the ids it learns), the dispatcher's and timer firings'
inside it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from sqlalchemy import ARRAY, Connection, and_, any_, bindparam, delete, update

from smsbot.engine.contract import ConversationKey
from smsbot.pipeline import handover, step_rows
from smsbot.pipeline.outbox import Claimed
from smsbot.pipeline.step_rows import Binders, NewConversation, Stepped, StepRows
from smsbot.store.lookup import arrays_for
from smsbot.store.models import (
    TIMER_SCHEDULED,
    EventState,
    TimerState,
    events_t,
    opt_outs_t,
    timers_t,
)
from smsbot.store.prepared import Prepared
from smsbot.store.types import utc_param
from smsbot.store.upsert import insert_on_conflict


@dataclasses.dataclass(frozen=True, slots=True)
class StepOutcome:
    """What one committed step did; passed to the after-commit listeners."""

    key: ConversationKey
    event_id: int
    queued_messages: int
    timers_changed: bool
    handed: Claimed | None = None  # the first reply, claimed for its sender (handover.py)


# Prepared (store/prepared.py): compiled once, run through sqlite3's executemany on SQLite.
_FINISH_EVENT = Prepared(
    update(events_t)
    .where(events_t.c.id == bindparam("b_id"))
    .values(state=bindparam("b_state"), processed_at=utc_param("b_now"))
)
# PostgreSQL: a batch's events in one statement. asyncpg's executemany binds and executes a row
# at a time on the server (~41 µs each in benchmark 2's statement log, bench/README.md session
# 20). SQLite keeps its executemany by primary key: sqlite3 runs it with no round trip a row.
_FINISH_EVENTS_PG = Prepared(
    update(events_t)
    .where(events_t.c.id == any_(bindparam("b_ids", type_=ARRAY(events_t.c.id.type))))
    .values(state=bindparam("b_state"), processed_at=utc_param("b_now"))
)
_CANCEL_ALL_TIMERS = Prepared(
    update(timers_t)
    .where(timers_t.c.conversation_id == bindparam("b_convo"), TIMER_SCHEDULED)
    .values(state=TimerState.CANCELLED.value)
)
_CANCEL_TIMER = Prepared(
    update(timers_t)
    .where(
        timers_t.c.conversation_id == bindparam("b_convo"),
        timers_t.c.name == bindparam("b_name"),
        TIMER_SCHEDULED,
    )
    .values(state=TimerState.CANCELLED.value)
)
_OPT_OUT = insert_on_conflict(opt_outs_t, ["virtual_number", "phone"])


def write_effects(
    conn: Connection,
    items: list[Stepped],
    now: dt.datetime,
    *,
    events_done: bool = False,
) -> list[StepOutcome]:
    """Write every item's state, messages, opt-out change and timers; mark its event done
    (`events_done`: they were inserted done).

    Each item's rows were built before the transaction (step_rows.bind) or are built here; the
    write sets the ids it learnt and runs one executemany per kind of row.
    """
    if not items:
        return []
    b = step_rows.binders_for(conn)
    every: list[StepRows] = []
    for item in items:
        rows = item.rows if item.rows is not None else step_rows.rows_of(item, now, b)
        if rows.binders is not b:  # bound for another kind of connection: a caller's mistake
            raise RuntimeError("step rows bound for another kind of connection than the write's")
        rows.fill(item.convo.id, item.event.id)
        every.append(rows)
    updates = [r.update for r in every if r.update is not None]
    b.update.many(conn, updates)
    b.history.many(conn, [row for r in every for row in r.history])
    for item in items:
        _write_opt_out(conn, item, now)
    offered = [(i, r.offered) for i, r in zip(items, every, strict=True) if r.offered is not None]
    handed = handover.take(conn, offered, now)
    messages = [row for r in every for row in r.messages]
    messages += [b.messages(row) for _, row in offered]
    b.messages.many(conn, messages)
    _write_timers(conn, items, every, b)
    if not events_done:
        finish_events(conn, [i.event.id for i in items], EventState.DONE, now)
    return [
        StepOutcome(i.snapshot.key, i.event.id, r.queued, r.timers_changed, handed.get(i.event.id))
        for i, r in zip(items, every, strict=True)
    ]


def finish_events(
    conn: Connection, event_ids: list[int], state: EventState, now: dt.datetime
) -> None:
    """Mark events finished (done, ignored, …): one executemany, one UPDATE on PostgreSQL."""
    if not event_ids:
        return
    values = {"b_state": state.value, "b_now": now}
    if arrays_for(conn):
        _FINISH_EVENTS_PG.all(conn, {"b_ids": list(event_ids), **values})
        return
    _FINISH_EVENT.many(conn, [{"b_id": i, **values} for i in event_ids])


def _write_opt_out(conn: Connection, item: Stepped, now: dt.datetime) -> None:
    key, result = item.snapshot.key, item.result
    if result.opt_out is True:
        conn.execute(
            _OPT_OUT.values(
                workspace=item.workspace,
                virtual_number=key.virtual_number,
                phone=key.phone,
                keyword=(result.opt_keyword or "STOP")[:50],
                created_at=now,
            )
        )
    elif result.opt_out is False:
        conn.execute(
            delete(opt_outs_t).where(
                and_(
                    opt_outs_t.c.virtual_number == key.virtual_number,
                    opt_outs_t.c.phone == key.phone,
                )
            )
        )


def _write_timers(
    conn: Connection, items: list[Stepped], every: list[StepRows], b: Binders
) -> None:
    old = [i for i in items if not isinstance(i.convo, NewConversation)]  # may have timers
    cancel_all = [{"b_convo": i.convo.id} for i in old if i.result.cancel_all_timers]
    cancel = [
        {"b_convo": i.convo.id, "b_name": name} for i in old for name in i.result.cancel_timers
    ]
    # the same conversation and name twice: the last one wins
    latest = {
        (i.convo.id, name): row
        for i, r in zip(items, every, strict=True)
        for name, row in r.timers.items()
    }
    if cancel_all:
        _CANCEL_ALL_TIMERS.many(conn, cancel_all)
    if cancel:
        _CANCEL_TIMER.many(conn, cancel)
    b.timers.many(conn, list(latest.values()))
