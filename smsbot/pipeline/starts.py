"""Bulk starts, batched: a chunk of START events stepped in memory and written in one transaction.

The normal path queues one START event per recipient and the dispatcher steps each one: claim,
step, write, a few hundred microseconds of server time per message. A bulk start of 100,000
appointments does not need that: each first step is the same flow's `start` on a conversation
nobody else is touching. `start_chunk` runs those steps where the starts come from (the
`smsbot start` process), then writes a whole chunk's conversations, events, messages, timers and
history rows with one executemany per kind: the existing `write_effects`, as the dispatcher uses.
The server's sender finds the messages pending in the outbox, as it finds any other.

The promises are the normal path's, kept by falling back to it, one start at a time:
- **one step at a time per conversation**: the steps are computed from a read of each
  conversation, then written only if, inside the write transaction, the conversation is still
  at the version that was read (locked first on PostgreSQL, `SKIP LOCKED`) and has no pending
  event. A start that loses that race is queued as a pending START event instead, behind the
  conversation's other events, and the dispatcher steps it like any other;
- **opt-outs**: an opted-out phone (erased opt-outs included) is skipped and counted, as before;
  a STOP that lands between the read and the write moves the conversation's version;
- **quiet hours, templates, timers, the start policy**: the step is the runtime's own
  (`FlowRuntime.handle`), so each reply's `send_after` and each timer are what the dispatcher
  would have written;
- **once only**: each start's inbox event id (`bulk:RUN:LINE`) is unique; a start whose event
  is already stored is a duplicate and writes nothing.

A step that raises, that waits longer than the step timeout (stepping.run_step: a TimeoutError,
one more failure), or that does more than reply, set timers and move the conversation (a contact
change, an opt-out change), is also queued for the dispatcher, which knows how to retry, park or
write it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, func, select, update

from smsbot.engine.contract import (
    ConversationKey,
    DispatchEvent,
    EventKind,
    StepHandler,
)
from smsbot.pipeline import claims, contacts, step_rows
from smsbot.pipeline.batch import snapshot_of
from smsbot.pipeline.effects import write_effects
from smsbot.pipeline.inbox import EVENT_KEYS, NEW_EVENT, InboxEntry, event_row
from smsbot.pipeline.step_rows import NewConversation, Stepped
from smsbot.pipeline.stepping import STEP_TIMEOUT, run_step
from smsbot.store.engine import Database
from smsbot.store.models import (
    EventState,
    events_t,
    opt_out_applies,
    opt_outs_t,
    suppressions_t,
)
from smsbot.store.prepared import Prepared, write_dialect

YIELD_EVERY = 100
SOURCE = "api"  # the inbox source of operator starts (the API's and the CLI's)
# Rows an ON CONFLICT skips return nothing: the answers are matched by key, not by position.
_INSERT_EVENTS = Prepared(NEW_EVENT.returning(events_t.c.event_id, events_t.c.id))
_UNFINISH = Prepared(
    update(events_t)
    .where(events_t.c.id == bindparam("b_id"))
    .values(state=EventState.PENDING.value, processed_at=None)
)
_OPTED_OUT = Prepared(
    select(opt_outs_t.c.virtual_number, opt_outs_t.c.phone).where(
        opt_outs_t.c.phone.in_(bindparam("phones", expanding=True)),
        opt_outs_t.c.workspace == bindparam("workspace"),
    )
)
_SUPPRESSED = Prepared(
    select(suppressions_t.c.virtual_number, suppressions_t.c.phone_hash).where(
        suppressions_t.c.phone_hash.in_(bindparam("hashes", expanding=True)),
        suppressions_t.c.workspace == bindparam("workspace"),
    )
)
# a conversation the read did not find: inserted as its step leaves it (claims.insert_conversations)
_FRESH = NewConversation(0, written=True)


def start_event_id(run: str, line: int) -> str:
    """The once-only inbox event id of line `line`'s start in bulk run `run`: bulk:RUN:LINE."""
    return f"{_run_prefix(run)}{line}"


def stored_starts(conn: Connection, run: str) -> int:
    """How many starts of bulk run `run` are stored, started or queued (on the events' unique
    (source, event_id) index: every id of the run sorts between its prefix and the next)."""
    prefix = _run_prefix(run)
    ids = events_t.c.event_id
    query = select(func.count()).where(
        events_t.c.source == SOURCE,
        ids >= prefix,
        ids < prefix[:-1] + ";",  # ";" follows ":"
    )
    return int(conn.execute(query).scalar_one())


def _run_prefix(run: str) -> str:
    return f"bulk:{run}:"


@dataclasses.dataclass(frozen=True, slots=True)
class Start:
    """One start to make: `flow` for `key` with `data`; `event_id` is its once-only id.

    `data` is the flow's Flow.parse_start_data answer: the step does not check it again.
    """

    event_id: str
    key: ConversationKey
    data: dict[str, Any]


@dataclasses.dataclass(slots=True)
class ChunkResult:
    """What one chunk did: stepped here, queued for the dispatcher, skipped, duplicates."""

    stepped: int = 0
    queued: int = 0
    skipped_opted_out: int = 0
    duplicates: int = 0

    def add(self, other: ChunkResult) -> None:
        """Add another chunk's counts to these."""
        self.stepped += other.stepped
        self.queued += other.queued
        self.skipped_opted_out += other.skipped_opted_out
        self.duplicates += other.duplicates


@dataclasses.dataclass(slots=True)
class _Seen:
    """What the read found for one key."""

    row: Any  # the conversation row, None when there is none yet
    pending: bool  # the key has events waiting: its start goes behind them
    opted_out: bool


@dataclasses.dataclass(slots=True)
class Chunk:
    """A chunk read and stepped, waiting to be written (`commit`)."""

    now: dt.datetime
    flow: str
    policy: str
    workspace: str
    # each step with what the read saw and its event's row, bound before the write (commit)
    stepped: list[tuple[Start, _Seen, Stepped, Any]]
    queued: list[Start]
    result: ChunkResult


async def prepare(
    db: Database,
    handler: StepHandler,
    now: dt.datetime,
    flow: str,
    starts: Sequence[Start],
    *,
    workspace: str,
    policy: str = "interrupt",
    step_timeout: float = STEP_TIMEOUT,
) -> Chunk:
    """Read the conversations of `starts` (distinct keys) and step them in memory: no lock."""
    chunk = Chunk(now, flow, policy, workspace, [], [], ChunkResult())
    if not starts:
        return chunk
    keys = [s.key for s in starts]
    seen, people = await db.read(lambda conn: _read(conn, keys, workspace))
    for n, start in enumerate(starts, start=1):
        if n % YIELD_EVERY == 0:
            await asyncio.sleep(0)  # steps are CPU: let webhooks in (the API runs this in serve)
        look = seen[start.key]
        if look.opted_out:
            chunk.result.skipped_opted_out += 1
            continue
        if look.pending:
            chunk.queued.append(start)
            continue
        snapshot = snapshot_of(look.row, start.key, False)
        snapshot.contact = people.get((workspace, start.key.phone))
        # Start.data is checked: enqueue_starts' rows come through Flow.parse_start_data.
        payload = _payload(flow, start, policy)
        event = DispatchEvent(0, EventKind.START, payload, now, data_checked=True)
        try:
            step = await run_step(handler, event, snapshot, now, step_timeout)
        except Exception:  # TimeoutError too: the dispatcher retries it, then parks it
            chunk.queued.append(start)
            continue
        if step.contact is not None or step.opt_out is not None or step.contact_timezone:
            chunk.queued.append(start)  # more than this path writes: the dispatcher's job
            continue
        convo = _FRESH if look.row is None else look.row
        item = Stepped(convo, snapshot, event, step, workspace)
        chunk.stepped.append((start, look, item, None))
    return chunk


async def commit(db: Database, chunk: Chunk) -> ChunkResult:
    """Write a prepared chunk in one transaction: the steps still valid, the rest queued."""

    def write(conn: Connection) -> ChunkResult:
        return _write(conn, chunk)

    def bind() -> None:  # every row the write inserts, built and bound before it begins
        step_rows.bind([item for _, _, item, _ in chunk.stepped], chunk.now, db.binds_ahead)
        events = _INSERT_EVENTS.binder(db.binds_ahead, EVENT_KEYS)
        now, flow, policy, workspace = chunk.now, chunk.flow, chunk.policy, chunk.workspace
        chunk.stepped = [
            (s, look, item, events(_event(workspace, flow, policy, s, now, EventState.DONE)))
            for s, look, item, _ in chunk.stepped
        ]

    result = ChunkResult()
    result.add(chunk.result)
    if chunk.stepped or chunk.queued:
        result.add(await db.write(write, before=bind))
    return result


async def start_chunk(
    db: Database,
    handler: StepHandler,
    now: dt.datetime,
    flow: str,
    starts: Sequence[Start],
    *,
    workspace: str,
    policy: str = "interrupt",
    step_timeout: float = STEP_TIMEOUT,
) -> ChunkResult:
    """Step `starts` (distinct keys) in memory and write them in one transaction; see above."""
    chunk = await prepare(
        db,
        handler,
        now,
        flow,
        starts,
        workspace=workspace,
        policy=policy,
        step_timeout=step_timeout,
    )
    return await commit(db, chunk)


def _payload(flow: str, start: Start, policy: str) -> dict[str, Any]:
    return {"flow": flow, "data": start.data, "policy": policy}


def _read(
    conn: Connection, keys: list[ConversationKey], workspace: str
) -> tuple[dict[ConversationKey, _Seen], dict[tuple[str, str], Any]]:
    """The keys' conversations, pending events and opt-outs, and their contacts: no lock."""
    rows = claims.read_conversations(conn, keys)
    pending = claims.waiting(conn, keys)
    opted = _opted_out(conn, keys, workspace)
    seen = {}
    for k in keys:
        seen[k] = _Seen(rows.get(k), k in pending, k in opted)
    people = contacts.load_contacts(conn, ((workspace, k.phone) for k in keys))
    return seen, people


def _opted_out(
    conn: Connection, keys: list[ConversationKey], workspace: str
) -> set[ConversationKey]:
    """The keys whose phone opted out of a number that stops their sender (opt_out_applies: an
    opt-out from one of our numbers stops our alphanumeric sender IDs too), erased phones'
    hashed opt-outs included."""
    phones = sorted({k.phone for k in keys})
    stopped: dict[str, list[str]] = {}
    for number, phone in _OPTED_OUT.all(conn, {"phones": phones, "workspace": workspace}):
        stopped.setdefault(phone, []).append(number)
    if contacts.keeps_suppressions(conn):  # else no phone to hash (an HMAC each)
        hashes = {contacts.suppression_hash(phone): phone for phone in phones}
        suppressed = _SUPPRESSED.all(conn, {"hashes": list(hashes), "workspace": workspace})
        for number, digest in suppressed:
            stopped.setdefault(hashes[digest], []).append(number)
    return {
        k
        for k in keys
        if any(opt_out_applies(n, k.virtual_number) for n in stopped.get(k.phone, ()))
    }


def _write(conn: Connection, chunk: Chunk) -> ChunkResult:
    """One transaction: keep the steps whose conversation did not move, queue the rest.

    A stepped start's event is inserted already done, and a conversation the read did not find
    is inserted as the step leaves it: no UPDATE of either afterwards (write_effects skips
    them), two statements a start fewer than the dispatcher's path.
    """
    now, flow, policy, workspace = chunk.now, chunk.flow, chunk.policy, chunk.workspace
    stepped, queued = chunk.stepped, list(chunk.queued)
    result = ChunkResult()
    keys = [s.key for s, *_ in stepped]
    free = set(keys) - claims.waiting(conn, keys)
    # Known conversations are locked and must still be at the version the step was computed
    # from; those the read did not find are inserted below (a row someone else made meanwhile
    # is skipped by the insert, and its start queued).
    known = [s.key for s, look, *_ in stepped if look.row is not None and s.key in free]
    versions = claims.versions(conn, known, lock=True)
    kept: list[tuple[Start, Stepped, Any]] = []
    for start, look, item, event in stepped:
        if start.key in free and (look.row is None or versions.get(start.key) == look.row.version):
            kept.append((start, item, event))
        else:
            queued.append(start)  # moved (or held by another process) since the read
    binder = _INSERT_EVENTS.binder(write_dialect(conn), EVENT_KEYS)
    events = [event for *_, event in kept]
    events += [binder(_event(workspace, flow, policy, s, now, EventState.PENDING)) for s in queued]
    ids = {eid: i for eid, i in binder.inserted(conn, events)}
    items: list[Stepped] = []
    for start, item, _ in kept:
        if start.event_id not in ids:
            result.duplicates += 1  # already stored: started before, nothing to write
            continue
        item.event = dataclasses.replace(item.event, id=ids[start.event_id])
        items.append(item)
    fresh = [i for i in items if i.convo is _FRESH]
    created = claims.insert_conversations(conn, fresh, now)
    lost = [i for i in fresh if i.snapshot.key not in created]
    if lost:  # created by someone else since the read: their starts wait for the dispatcher
        _UNFINISH.many(conn, [{"b_id": i.event.id} for i in lost])
        result.queued += len(lost)
        gone = {i.event.id for i in lost}
        items = [i for i in items if i.event.id not in gone]
    for item in items:
        if item.convo is _FRESH:
            item.convo = created[item.snapshot.key]
        item.snapshot.id = item.convo.id
    write_effects(conn, items, now, events_done=True)
    result.stepped = len(items)
    for start in queued:
        if start.event_id in ids:
            result.queued += 1
        else:
            result.duplicates += 1
    return result


def _event(
    workspace: str, flow: str, policy: str, start: Start, now: dt.datetime, state: EventState
) -> Any:
    entry = InboxEntry(
        source=SOURCE,
        event_id=start.event_id,
        kind=EventKind.START,
        payload=_payload(flow, start, policy),
        virtual_number=start.key.virtual_number,
        phone=start.key.phone,
        workspace=workspace,
        state=state,
    )
    return event_row(entry, now)
