"""What a step batch does in the database before its steps run, and after one fails.

All of it runs inside the batch's transaction (`Database.transaction`), as synchronous Core on
one connection: lock the conversations, read their oldest due events, see who opted out (the
timer firings are claimed in `timer_claims.py`); and, for a step that raised, count the attempt
or park the event.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import traceback
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Connection, bindparam, func, select, text, update

from smsbot.engine.contract import ConversationKey, EventKind, retryable
from smsbot.pipeline import step_rows
from smsbot.pipeline.step_rows import (
    CREATE_CONVERSATION,
    NEW_CONVERSATION,
    NewConversation,
    Stepped,
)
from smsbot.store.lookup import KeyedRows, arrays_for, rows_in
from smsbot.store.models import (
    DEFAULT_WORKSPACE,
    EVENT_PENDING,
    EventState,
    conversations_t,
    events_t,
    opt_outs_t,
)
from smsbot.store.prepared import Prepared

log = logging.getLogger(__name__)


def due_keys(conn: Connection, now: dt.datetime, limit: int) -> list[ConversationKey]:
    """Up to `limit` due conversations: people who texted first, then the rest oldest first,
    each workspace's in turn."""
    # Two lanes. The interactive lane (pending inbound messages, on ix_events_state_kind)
    # fills up to half the batch, so a reply never waits behind a bulk campaign's thousands
    # of queued starts; the arrival-order lane fills the rest, so bulk keeps progressing
    # while people text. Per-conversation order is untouched: whichever lane picks a key,
    # `oldest_events` steps that conversation's oldest pending event, and only if it is due.
    keys = _interactive_keys(conn, now, max(1, limit // 2)) if limit > 1 else []
    picked = {(k.virtual_number, k.phone) for k in keys}
    for key in _arrival_keys(conn, now, limit):
        if len(keys) >= limit:
            break
        if (key.virtual_number, key.phone) not in picked:
            picked.add((key.virtual_number, key.phone))
            keys.append(key)
    return keys


def _interactive_keys(conn: Connection, now: dt.datetime, limit: int) -> list[ConversationKey]:
    """Up to `limit` conversations with a due inbound message, oldest message first."""
    # With `now`: texts waiting for a retry (their step failed) do not take the lane's places,
    # which `oldest_events` would leave empty, from texts that are due.
    return _pending_keys(conn, now, limit, _INBOUND_LANE)


def _arrival_keys(conn: Connection, now: dt.datetime, limit: int) -> list[ConversationKey]:
    """Up to `limit` conversations whose oldest pending event is due, oldest first; when
    several workspaces wait, each one's oldest in turn."""
    # Pending events in arrival order (an index range scan on (state, id)): the first time a
    # key appears is its oldest pending event. A key whose oldest event waits for a retry is
    # skipped entirely, so its later events wait too: per-conversation order holds.
    waiting = waiting_workspaces(conn)
    if len(waiting) <= 1:
        return _pending_keys(conn, now, limit)
    # Fair shares: one client's 100,000 queued starts must not hold back another's events.
    # Each workspace's oldest keys (on ix_events_workspace), taken one from each in turn; a
    # workspace with fewer than its share leaves the rest of the batch to the next round.
    # The oldest keys of all come last in each turn (mostly the same keys again, which the
    # caller skips): they fill what the shares leave of the batch, and whatever no lane names
    # (past MAX_FAIR_WORKSPACES) still moves.
    share = -(-limit // len(waiting))
    lanes = [_pending_keys(conn, now, share, _WORKSPACE_LANE, name) for name in waiting]
    lanes.append(_pending_keys(conn, now, limit))
    return [key for turn in itertools.zip_longest(*lanes) for key in turn if key is not None]


# The workspaces with pending events, one index probe each (a loose index scan on
# ix_events_workspace): no pass over a 100,000-event backlog to find the two names in it.
_WAITING = Prepared(
    text(
        "WITH RECURSIVE w(name, n) AS ("
        " SELECT (SELECT min(workspace) FROM webhook_events WHERE state = 'pending'), 1"
        " UNION ALL"
        " SELECT (SELECT min(workspace) FROM webhook_events"
        "  WHERE state = 'pending' AND workspace > w.name), n + 1"
        " FROM w WHERE w.name IS NOT NULL AND n < :most"
        ") SELECT name FROM w WHERE name IS NOT NULL"
    )
)
MAX_FAIR_WORKSPACES = 256  # waiting at once; past it, the rest move in arrival order


def waiting_workspaces(conn: Connection) -> list[str]:
    """The workspaces with pending events (receipts included), by name; MAX_FAIR_WORKSPACES."""
    found = _WAITING.all(conn, {"most": MAX_FAIR_WORKSPACES})
    return [name for (name,) in found]


def _pending(*where: ColumnElement[bool]) -> Prepared:
    e = events_t
    return Prepared(
        select(e.c.id, e.c.virtual_number, e.c.phone, e.c.next_attempt_at)
        .where(EVENT_PENDING, e.c.virtual_number.is_not(None), e.c.id > bindparam("after"), *where)
        .order_by(e.c.id)
        .limit(bindparam("limit"))
    )


# The lanes' reads, prepared (store/prepared.py): every event, people's texts, one workspace's.
_ALL_LANE = _pending()
_INBOUND_LANE = _pending(events_t.c.kind == EventKind.INBOUND.value)  # on ix_events_state_kind
_WORKSPACE_LANE = _pending(events_t.c.workspace == bindparam("workspace"))


# How far a lane reads to find its keys. It reads pending events in arrival order and keeps
# each conversation's first, so whatever it skips (one phone's thousands of texts, thousands
# of events waiting for a retry after a flow failed for each) must not end the read: a lane
# that stopped after a fixed number of rows found nobody behind such a crowd, and every other
# conversation waited until it had gone. It reads on, a window at a time (LANE_WINDOW rows a
# key it wants, doubling), up to MAX_LANE_ROWS rows a read; past that the rest waits for a
# later round (a crowd that large shrinks as its events are stepped, retried or parked).
LANE_WINDOW = 8
MAX_LANE_ROWS = 50_000


def _pending_keys(
    conn: Connection,
    now: dt.datetime | None,
    limit: int,
    lane: Prepared = _ALL_LANE,
    workspace: str | None = None,
) -> list[ConversationKey]:
    """The conversations of pending events (in `lane`), by their first event in arrival order;
    with `now`, one whose first event is not due yet is skipped. The rows are read as they
    come (SQLite streams them) and reading stops once `limit` are found (see above)."""
    params: dict[str, Any] = {"limit": limit * LANE_WINDOW, "after": 0}
    if workspace is not None:
        params["workspace"] = workspace
    seen: set[tuple[str, str]] = set()
    keys: list[ConversationKey] = []
    read = 0
    while True:
        got = 0
        for event_id, vn, phone, due in lane.each(conn, params):
            got += 1
            params["after"] = event_id
            if (vn, phone) in seen:
                continue
            seen.add((vn, phone))
            if now is None or due is None or due <= now:
                keys.append(ConversationKey(vn, phone))
                if len(keys) >= limit:
                    return keys
        read += got
        if got < params["limit"] or read >= MAX_LANE_ROWS:
            return keys
        params["limit"] = min(2 * params["limit"], MAX_LANE_ROWS - read)


def lock_conversations(
    conn: Connection, keys: Sequence[ConversationKey], *, postgres: bool
) -> dict[ConversationKey, Any]:
    """Lock the conversations' rows (creating missing ones); skip those another process holds."""
    c = conversations_t
    wanted = {(k.virtual_number, k.phone) for k in keys}
    key = (c.c.virtual_number, c.c.phone)

    def locking(pairs: set[tuple[str, str]]) -> Any:
        query = select(c).where(rows_in(key, pairs, arrays=postgres))
        return query.with_for_update(skip_locked=True) if postgres else query

    rows = {(r.virtual_number, r.phone): r for r in (conn.execute(locking(wanted))).all()}
    missing = wanted - set(rows)
    if missing and postgres:
        # Rows that exist but SKIP LOCKED skipped belong to another process right now.
        held = conn.execute(select(*key).where(rows_in(key, missing, arrays=postgres)))
        missing -= {(vn, phone) for vn, phone in held.all()}
        missing -= _being_created(conn, missing)
    if missing:
        # A new conversation belongs to the workspace of the event that opens it.
        owners = _pending_workspaces(conn, missing)
        conn.execute(
            NEW_CONVERSATION,
            [
                {
                    "virtual_number": vn,
                    "phone": p,
                    "data": {},
                    "version": 0,
                    "workspace": owners.get((vn, p)) or DEFAULT_WORKSPACE,
                }
                for vn, p in missing
            ],
        )
        for r in (conn.execute(locking(missing))).all():
            rows[(r.virtual_number, r.phone)] = r
    return {ConversationKey(vn, phone): r for (vn, phone), r in rows.items()}


# PostgreSQL: who is creating a conversation row right now. An INSERT that meets another
# transaction's uncommitted row with the same key waits for that transaction to end, and SKIP
# LOCKED does not apply to it: a batch creating a new conversation would wait for another
# process's whole batch of steps. A transaction-level advisory lock per key, taken with
# pg_try_advisory_xact_lock before the insert, says "being created elsewhere" without
# waiting; such a key is left to that process, like a row SKIP LOCKED skips. The two-int
# form keeps these locks apart from the single-key ones (migrations, the timer leader).
CREATING_LOCKS = 0x736D7362  # the advisory lock class of conversation creation ("smsb")
_BEING_CREATED = text(
    "SELECT vn, phone FROM unnest(CAST(:vns AS TEXT[]), CAST(:phones AS TEXT[])) AS k(vn, phone)"
    " WHERE NOT pg_try_advisory_xact_lock(:space, hashtext(vn || ' ' || phone))"
)


def _being_created(conn: Connection, pairs: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """The keys another transaction is creating a conversation for now (see above); the rest
    are this transaction's to create, until it ends."""
    ordered = sorted(pairs)
    found = conn.execute(
        _BEING_CREATED,
        {
            "vns": [vn for vn, _ in ordered],
            "phones": [phone for _, phone in ordered],
            "space": CREATING_LOCKS,
        },
    )
    return {(vn, phone) for vn, phone in found.all()}


def _pending_workspaces(
    conn: Connection, pairs: set[tuple[str, str]]
) -> dict[tuple[str, str], str | None]:
    """The workspace of each key's oldest pending event (on ix_events_pending)."""
    e = events_t
    key = (e.c.virtual_number, e.c.phone)
    rows = conn.execute(
        select(*key, e.c.workspace)
        .where(EVENT_PENDING, rows_in(key, pairs, arrays=arrays_for(conn)))
        .order_by(e.c.id.desc())
    )
    return {(vn, phone): workspace for vn, phone, workspace in rows.all()}


# The hot reads and claims of a batch, prepared (store/prepared.py): one compile, then sqlite3.
_OLDEST = KeyedRows(
    (events_t.c.virtual_number, events_t.c.phone),
    lambda where: (
        select(events_t)
        .where(
            events_t.c.id.in_(
                select(func.min(events_t.c.id))
                .where(EVENT_PENDING, where)
                .group_by(events_t.c.virtual_number, events_t.c.phone)
            )
        )
        .order_by(events_t.c.id)
    ),
)
_OPTED = KeyedRows(
    (opt_outs_t.c.virtual_number, opt_outs_t.c.phone),
    lambda where: select(opt_outs_t.c.virtual_number, opt_outs_t.c.phone).where(where),
)
_CONVERSATIONS = KeyedRows(
    (conversations_t.c.virtual_number, conversations_t.c.phone),
    lambda where: select(conversations_t).where(where),
)
_VERSION = (conversations_t.c.virtual_number, conversations_t.c.phone, conversations_t.c.version)
_VERSIONS = {  # locked or not
    False: KeyedRows(_VERSION[:2], lambda where: select(*_VERSION).where(where)),
    True: KeyedRows(
        _VERSION[:2],
        lambda where: select(*_VERSION).where(where).with_for_update(skip_locked=True),
    ),
}
_WAITING_KEYS = KeyedRows(
    (events_t.c.virtual_number, events_t.c.phone),
    lambda where: (
        select(events_t.c.virtual_number, events_t.c.phone).where(EVENT_PENDING, where).distinct()
    ),
)
_STILL_PENDING = Prepared(
    select(events_t.c.id).where(events_t.c.id.in_(bindparam("ids", expanding=True)), EVENT_PENDING)
)


def oldest_events(
    conn: Connection, keys: list[ConversationKey], now: dt.datetime
) -> dict[ConversationKey, Any]:
    """Each conversation's oldest pending event, if it is due (not waiting for a retry)."""
    rows = _OLDEST.all(conn, _pairs(keys))
    return {
        ConversationKey(r.virtual_number, r.phone): r
        for r in rows
        if r.next_attempt_at is None or r.next_attempt_at <= now
    }


def opted_out(conn: Connection, keys: list[ConversationKey]) -> set[ConversationKey]:
    """The conversations whose phone opted out of their number."""
    return {ConversationKey(vn, phone) for vn, phone in _OPTED.all(conn, _pairs(keys))}


def read_conversations(
    conn: Connection, keys: Sequence[ConversationKey]
) -> dict[ConversationKey, Any]:
    """The conversations' rows as they are, without a lock; a key with no row is left out."""
    found = _CONVERSATIONS.all(conn, _pairs(keys))
    return {ConversationKey(r.virtual_number, r.phone): r for r in found}


def waiting(conn: Connection, keys: Sequence[ConversationKey]) -> set[ConversationKey]:
    """The keys with events still pending, due or not (on ix_events_pending)."""
    return {ConversationKey(vn, phone) for vn, phone in _WAITING_KEYS.all(conn, _pairs(keys))}


def versions(
    conn: Connection, keys: Sequence[ConversationKey], *, lock: bool = False
) -> dict[ConversationKey, int]:
    """Each conversation's version now (every step moves it), in the write transaction.

    `lock`: PostgreSQL locks the rows (FOR UPDATE SKIP LOCKED), so one another process holds
    is missing from the answer, as a key with no row is; SQLite renders no lock, its write
    transaction already excludes every other writer.
    """
    found = _VERSIONS[lock].all(conn, _pairs(keys))
    return {ConversationKey(vn, phone): version for vn, phone, version in found}


def still_pending(conn: Connection, event_ids: Sequence[int]) -> set[int]:
    """Which of these events are still pending (none finished by another process)."""
    if not event_ids:
        return set()
    return {i for (i,) in _STILL_PENDING.all(conn, {"ids": list(event_ids)})}


def create_conversations(
    conn: Connection, new: dict[ConversationKey, str]
) -> dict[ConversationKey, NewConversation]:
    """Insert empty conversations (key -> workspace) in one statement; return those inserted.

    A key whose row someone else inserted since it was read is not in the answer."""
    if not new:
        return {}
    rows = [
        {
            "virtual_number": k.virtual_number,
            "phone": k.phone,
            "data": {},
            "version": 0,
            "workspace": workspace,
        }
        for k, workspace in new.items()
    ]
    found = CREATE_CONVERSATION.inserted(conn, rows)
    return {ConversationKey(vn, phone): NewConversation(i) for vn, phone, i in found}


def insert_conversations(
    conn: Connection, items: Sequence[Stepped], now: dt.datetime
) -> dict[ConversationKey, NewConversation]:
    """Insert the conversations of steps that found none, as the steps leave them (one
    statement); return those inserted. A key someone else inserted meanwhile is left out."""
    if not items:
        return {}
    b = step_rows.binders_for(conn)
    rows = []
    for item in items:
        if item.rows is None:  # not bound ahead (step_rows.bind)
            item.rows = step_rows.rows_of(item, now, b)
        rows.append(item.rows.create)
    found = b.create.inserted(conn, rows)
    return {ConversationKey(vn, phone): NewConversation(i, True) for vn, phone, i in found}


def record_failures(
    conn: Connection,
    failed: Sequence[tuple[Any, BaseException]],
    now: dt.datetime,
    *,
    max_attempts: int,
) -> int:
    """Count a failed step on its event: retry later with backoff, or park it; return parked."""
    parked_count = 0
    for row, exc in failed:
        attempts = int(row.attempts) + 1
        # An error that cannot succeed on a retry (a template, the flow's own FlowError) is
        # parked at once, with one line: its traceback is in last_error (`smsbot events failed`).
        again = retryable(exc)
        parked = parks(row, exc, max_attempts)
        parked_count += parked
        said = _said(exc)
        workspace = row.workspace or DEFAULT_WORKSPACE
        if not again:
            log.error(
                "event %s (%s, workspace %s) parked, a retry cannot help: %s",
                row.id, row.kind, workspace, said,
            )  # fmt: skip
        elif parked:  # the traceback shows the line that failed; it holds code, not bodies
            log.error(
                "event %s (%s, workspace %s) parked after %d attempts: %s",
                row.id, row.kind, workspace, attempts, said, exc_info=exc,
            )  # fmt: skip
        else:
            log.warning(
                "event %s (%s, workspace %s) failed, attempt %d/%d, retrying in %s: %s",
                row.id, row.kind, workspace, attempts, max_attempts, backoff(attempts), said,
            )  # fmt: skip
        # The error first (`smsbot events failed` shows the first line), then where it was.
        detail = said + "\n" + "".join(traceback.format_exception(exc, limit=-4))
        conn.execute(
            update(events_t)
            # still pending: another process may have finished it since it was read
            .where(events_t.c.id == row.id, EVENT_PENDING)
            .values(
                attempts=attempts,
                last_error=detail[-4000:],
                state=EventState.FAILED.value if parked else EventState.PENDING.value,
                next_attempt_at=None if parked else now + backoff(attempts),
                processed_at=now if parked else None,
            )
        )
    return parked_count


def parks(row: Any, exc: BaseException, max_attempts: int) -> bool:
    """Whether this failure parks the event: its last attempt, or a retry cannot help."""
    return int(row.attempts) + 1 >= max_attempts or not retryable(exc)


def _said(exc: BaseException) -> str:
    """The error's type and first line, short enough for one log line."""
    lines = str(exc).splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


def _pairs(keys: Sequence[ConversationKey]) -> list[tuple[str, str]]:
    return [(k.virtual_number, k.phone) for k in keys]


def backoff(attempt: int, base: float = 1.0, cap: float = 300.0) -> dt.timedelta:
    """Return the wait before retry number `attempt` (1, 2, 4, … seconds, capped)."""
    return dt.timedelta(seconds=min(cap, base * 2 ** (attempt - 1)))
