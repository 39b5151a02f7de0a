"""Claiming timer firings: the guard that makes a timer fire once.

A firing runs only if its timer is still scheduled with the token it fired with, and the step's
own transaction marks it fired. Flow timers are claimed by (conversation, name, token) on
ix_timers_conversation; a firing whose timer id is known (a campaign's fire, a timer stepped as
it fires) by primary key alone.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import ColumnElement, Connection, bindparam, select, update
from sqlalchemy.sql.expression import Executable

from smsbot.engine.contract import ConversationKey, EventKind
from smsbot.store.lookup import KeyedRows
from smsbot.store.models import TIMER_SCHEDULED, TimerState, timers_t
from smsbot.store.prepared import Prepared
from smsbot.store.types import utc_param

_FIRED = {"state": TimerState.FIRED.value, "fired_at": utc_param("now")}
_BY_IDS = select(timers_t.c.id, timers_t.c.token, timers_t.c.state).where(
    timers_t.c.id.in_(bindparam("ids", expanding=True))
)
_TIMERS_BY_ID = {False: Prepared(_BY_IDS), True: Prepared(_BY_IDS.with_for_update())}  # locked
_MARK_FIRED = Prepared(
    update(timers_t).where(timers_t.c.id.in_(bindparam("ids", expanding=True))).values(_FIRED)
)
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
    live = _live(conn, fires, lock=True)
    if live:  # locked by the read (PostgreSQL); SQLite's write transaction excludes the rest
        _MARK_FIRED.all(conn, {"ids": [i for i, _ in live], "now": now})
    return {fires[k] for k in live}


def _read_fires(conn: Connection, fires: dict[tuple[int, str], int]) -> set[int]:
    return {fires[k] for k in _live(conn, fires, lock=False)}


def _live(
    conn: Connection, fires: dict[tuple[int, str], int], *, lock: bool
) -> list[tuple[int, str]]:
    # By primary key alone, state and token checked here: next to `id IN (…)`, SQLite's
    # planner (no ANALYZE) takes `state = ?` for the better index and reads every scheduled
    # timer (ix_timers_due; ix_timers_changed then), 10 ms a call at 100,000 (bench/README.md,
    # session 10).
    rows = _TIMERS_BY_ID[lock].all(conn, {"ids": sorted({i for i, _ in fires})})
    scheduled = TimerState.SCHEDULED.value
    return [(r.id, r.token) for r in rows if r.state == scheduled and (r.id, r.token) in fires]
