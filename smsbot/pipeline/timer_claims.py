"""Claiming timer firings: the guard that makes a timer fire once.

A firing runs only if its timer is still scheduled with the token it fired with, and the step's
own transaction marks it fired. Flow timers are claimed by (conversation, name, token) on
ix_timers_conversation; a firing whose timer id is known (a campaign's fire, a timer stepped as
it fires) by primary key alone.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection
from typing import Any

from sqlalchemy import ColumnElement, Connection, bindparam, select, update
from sqlalchemy.sql.expression import Executable

from smsbot.engine.contract import ConversationKey, EventKind
from smsbot.store.lookup import KeyedRows
from smsbot.store.models import TIMER_SCHEDULED, TimerState, timers_t
from smsbot.store.prepared import Prepared
from smsbot.store.types import utc_param

BY_ID = timers_t.c.id.in_(bindparam("ids", expanding=True))  # by primary key alone: `ids`
Reads = dict[bool, Prepared]  # reads_by_id's: {lock: statement}


def reads_by_id(*columns: ColumnElement[Any]) -> Reads:
    """The read of scheduled_by_id: timers' id, state and `columns` by primary key alone."""
    statement = select(timers_t.c.id, timers_t.c.state, *columns).where(BY_ID)
    return {False: Prepared(statement), True: Prepared(statement.with_for_update())}


def scheduled_by_id(
    conn: Connection,
    ids: Collection[int],
    read: Reads,
    keep: Callable[[Any], bool] | None = None,
    mark: Prepared | None = None,
    **params: Any,
) -> tuple[list[Any], list[Any]]:
    """The timers among `ids` still scheduled (and that `keep` accepts), read by primary key;
    with `mark` (an UPDATE … WHERE BY_ID), locked and updated by id: (those rows, mark's rows).

    By primary key alone, state and the rest checked here: next to `id IN (…)`, SQLite's planner
    (no ANALYZE) takes `state = ?` (or a due time) for the better index and reads every
    scheduled timer (ix_timers_due; ix_timers_changed then): 10 ms a claim at 100,000
    (bench/README.md, session 10), 945,000 instructions a campaign sync's cancel
    (tests/test_query_plans.py). The read locks the rows on PostgreSQL (FOR UPDATE, so a timer
    claimed meanwhile is seen fired); SQLite's write transaction excludes every other writer.
    `params`: the rest of `mark`'s parameters. A read that marks nothing locks nothing.
    """
    rows = read[mark is not None].all(conn, {"ids": ids})
    scheduled = TimerState.SCHEDULED.value
    if keep is None:
        kept = [r for r in rows if r.state == scheduled]
    else:
        kept = [r for r in rows if r.state == scheduled and keep(r)]
    if mark is None or not kept:
        return kept, []
    return kept, mark.all(conn, {"ids": [r.id for r in kept], **params})


_FIRED = {"state": TimerState.FIRED.value, "fired_at": utc_param("now")}
_BY_TOKEN = reads_by_id(timers_t.c.token)  # a timer's id, state and token
_MARK_FIRED = Prepared(update(timers_t).where(BY_ID).values(_FIRED))
_BY_NAME = (timers_t.c.conversation_id, timers_t.c.name, timers_t.c.token)  # a flow's timer


def _firing(claim: bool) -> KeyedRows:
    """The live firings among (conversation, name, token) keys: claimed (marked fired,
    RETURNING) or read. On ix_timers_conversation (conversation_id, state)."""

    def build(where: ColumnElement[bool]) -> Executable:
        if claim:
            statement = update(timers_t).where(where, TIMER_SCHEDULED).values(_FIRED)
            return statement.returning(*_BY_NAME)
        return select(*_BY_NAME).where(where, TIMER_SCHEDULED)

    return KeyedRows(_BY_NAME, build)


_FIRE = {claim: _firing(claim) for claim in (True, False)}


def claim_timers(
    conn: Connection,
    convos: dict[ConversationKey, Any],
    events: dict[ConversationKey, Any],
    now: dt.datetime,
    *,
    claim: bool = True,
) -> set[int]:
    """Mark the batch's timer firings FIRED in one statement; return the live event ids.

    The guard that makes a timer fire once: only a still-scheduled timer whose name and
    token match the firing may run, and it is marked fired in the step's own transaction.
    `claim=False`: only read which would be live (a conversation with no row has none).
    """
    wanted: dict[tuple[int, str, str], int] = {}
    fires: dict[tuple[int, str], int] = {}  # campaign fires: (timer id, token) -> event id
    for key, row in events.items():
        if row.kind == EventKind.TIMER.value:
            name, token = row.payload.get("name"), row.payload.get("token")
            timer_id = row.payload.get("timer_id")
            if isinstance(timer_id, int) and isinstance(token, str):
                fires[(timer_id, token)] = row.id
            elif isinstance(name, str) and isinstance(token, str) and key in convos:
                wanted[(convos[key].id, name, token)] = row.id
    params = {"now": now} if claim else {}
    live: set[int] = set()
    if fires:
        live = claim_fires(conn, fires, now) if claim else _read_fires(conn, fires)
    if wanted:
        found = _FIRE[claim].all(conn, wanted, **params)
        live |= {wanted[(c, n, tok)] for c, n, tok in found}
    return live


def claim_fires(conn: Connection, fires: dict[tuple[int, str], int], now: dt.datetime) -> set[int]:
    """Mark timers FIRED by (timer id, token) -> event id, if still scheduled with that token;
    return the event ids whose timer this claimed (the once-only guard, by primary key)."""
    return _fires(conn, fires, _MARK_FIRED, now=now)


def _read_fires(conn: Connection, fires: dict[tuple[int, str], int]) -> set[int]:
    return _fires(conn, fires, None)


def _fires(
    conn: Connection, fires: dict[tuple[int, str], int], mark: Prepared | None, **params: Any
) -> set[int]:
    """The event ids among `fires` whose timer is still scheduled with that token: marked by
    `mark` (claimed), or only read (None)."""
    ids = sorted({i for i, _ in fires})
    live, _ = scheduled_by_id(
        conn, ids, _BY_TOKEN, lambda r: (r.id, r.token) in fires, mark, **params
    )
    return {fires[(r.id, r.token)] for r in live}
