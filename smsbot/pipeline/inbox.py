"""The durable inbox: webhooks are stored (deduplicated by event id) before they are answered.

Concurrent webhook handlers share one writer task that commits everything waiting in one
transaction (group commit): each request still gets its 2xx only after its row is durable,
but SQLite pays one fsync for many requests instead of one each.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import enum
import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, select

from smsbot.clock import Clock
from smsbot.engine.contract import EventKind
from smsbot.store.engine import Database
from smsbot.store.lookup import KeyedRows
from smsbot.store.models import DEFAULT_WORKSPACE, EventState, events_t
from smsbot.store.prepared import Prepared
from smsbot.store.upsert import insert_on_conflict

log = logging.getLogger(__name__)

MAX_GROUP = 500


class AcceptOutcome(enum.StrEnum):
    """What the inbox did with one event."""

    NEW = "new"
    DUPLICATE = "duplicate"  # same id, same body: answered 2xx, no second effect
    CONFLICT = "conflict"  # same id, different body: answered 2xx, warned, ignored


@dataclasses.dataclass(frozen=True, slots=True)
class InboxEntry:
    """One event to store.

    `workspace` is the workspace the event belongs to (smsbot/workspaces.py): the owner of
    its virtual number, the workspace a receipt came from, the timer's, the caller's. None:
    not known (a receipt several workspaces could have sent) or no workspace at all (an
    inbound SMS for a number none owns, stored UNMATCHED for reconciliation, never run).
    """

    source: str
    event_id: str
    kind: EventKind
    payload: dict[str, Any]
    virtual_number: str | None = None
    phone: str | None = None
    body_sha256: str | None = None
    workspace: str | None = DEFAULT_WORKSPACE
    state: EventState = EventState.PENDING  # UNMATCHED: kept for reconciliation, never run


# An event already stored under the same (source, event id) is left as it is.
NEW_EVENT = insert_on_conflict(events_t, ["source", "event_id"])
_INSERTED = Prepared(NEW_EVENT.returning(events_t.c.source, events_t.c.event_id))
_STORED = KeyedRows(
    (events_t.c.source, events_t.c.event_id),
    lambda where: select(events_t.c.source, events_t.c.event_id, events_t.c.body_sha256).where(
        where
    ),
)


EVENT_KEYS = (  # the keys of every event_row
    "source", "event_id", "kind", "virtual_number", "phone", "body_sha256", "payload",
    "received_at", "attempts", "workspace", "state", "processed_at",
)  # fmt: skip


def event_row(entry: InboxEntry, now: dt.datetime) -> dict[str, Any]:
    """The webhook_events row for `entry`, received `now`: pending (or as `entry.state` says)."""
    return {
        "source": entry.source,
        "event_id": entry.event_id,
        "kind": entry.kind.value,
        "virtual_number": entry.virtual_number,
        "phone": entry.phone,
        "body_sha256": entry.body_sha256,
        "payload": entry.payload,
        "received_at": now,
        "attempts": 0,
        "workspace": entry.workspace,
        "state": entry.state.value,
        "processed_at": None if entry.state is EventState.PENDING else now,
    }


class Inbox:
    """Stores events durably and exactly once per (source, event id)."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock
        self._queue: asyncio.Queue[tuple[InboxEntry, asyncio.Future[AcceptOutcome]]] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        """Start the group-commit writer; without it, accept() writes directly."""
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._writer = asyncio.create_task(self._write_loop(), name="smsbot-inbox-writer")

    async def stop(self) -> None:
        """Flush what is waiting, then stop the writer."""
        if self._writer is None or self._queue is None:
            return
        await self._queue.join()
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
        self._writer = None
        self._queue = None  # accept() writes directly again
        self._loop = None

    async def accept(self, entry: InboxEntry, give_up_after: float | None = None) -> AcceptOutcome:
        """Store one event; returns once it is committed (raises if the database fails).

        `give_up_after`: seconds to wait at most, then TimeoutError. The event may still be
        committed after that (the provider's retry is then a duplicate); one not yet written
        is dropped.
        """
        if self._queue is None or self._loop is None:
            async with asyncio.timeout(give_up_after):
                return (await self.accept_many([entry]))[0]
        loop = self._loop
        future: asyncio.Future[AcceptOutcome] = loop.create_future()
        self._queue.put_nowait((entry, future))  # unbounded: never waits
        if give_up_after is None:
            return await future
        # One timer on the future, not asyncio.timeout(): that costs a webhook a Timeout, the
        # current task and two running-loop lookups (each a getpid() on Python 3.11), about
        # 4 % of the event loop's time in the turns profile.
        expiry = loop.call_at(loop.time() + give_up_after, _expire, future)
        try:
            return await future
        finally:
            expiry.cancel()

    async def accept_many(self, entries: Sequence[InboxEntry]) -> list[AcceptOutcome]:
        """Store several events in one transaction; outcomes are in the same order."""
        if not entries:
            return []
        now = self.clock.now()
        first: dict[tuple[str, str], InboxEntry] = {}
        for e in entries:
            first.setdefault((e.source, e.event_id), e)
        rows = [event_row(e, now) for e in first.values()]
        # One statement a group, compiled once (store/prepared.py: multi-row VALUES on SQLite).
        inserted, known = await self.db.write(
            lambda conn: self._insert_rows(conn, rows, first), urgent=True
        )
        outcomes: list[AcceptOutcome] = []
        claimed: set[tuple[str, str]] = set()
        for e in entries:
            k = (e.source, e.event_id)
            if k in inserted and k not in claimed and first[k] is e:
                claimed.add(k)
                outcomes.append(AcceptOutcome.NEW)
                continue
            stored_hash = first[k].body_sha256 if k in inserted else known.get(k)
            if (
                stored_hash is not None
                and e.body_sha256 is not None
                and stored_hash != e.body_sha256
            ):
                log.warning("event %s:%s redelivered with a different body; ignored", *k)
                outcomes.append(AcceptOutcome.CONFLICT)
            else:
                outcomes.append(AcceptOutcome.DUPLICATE)
        return outcomes

    def _insert_rows(
        self, conn: Connection, rows: list[dict[str, Any]], first: dict[tuple[str, str], Any]
    ) -> tuple[set[tuple[str, str]], dict[tuple[str, str], str | None]]:
        """Insert; return the keys that were new and the stored digests of those that were not."""
        # On PostgreSQL one array a column: one SQL text at any group size (Prepared.inserted).
        found = _INSERTED.inserted(conn, rows)
        inserted = {(r[0], r[1]) for r in found}
        missing = [k for k in first if k not in inserted]
        known = {(src, eid): digest for src, eid, digest in _STORED.all(conn, missing)}
        return inserted, known

    async def _write_loop(self) -> None:
        assert self._queue is not None
        queue = self._queue
        while True:
            batch = [await queue.get()]
            live: list[tuple[InboxEntry, asyncio.Future[AcceptOutcome]]] = []
            try:
                # Gather the group once the writer's turn has come (a step batch's write may
                # hold it): what arrived meanwhile joins this commit instead of waiting for
                # one of its own.
                async with self.db.turn(urgent=True):
                    while len(batch) < MAX_GROUP and not queue.empty():
                        batch.append(queue.get_nowait())
                    live = [(entry, fut) for entry, fut in batch if not fut.done()]  # not given up
                    outcomes = await self.accept_many([entry for entry, _ in live])
            except Exception as exc:  # the database is down: every waiter answers 503
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
            else:
                for (_, fut), outcome in zip(live, outcomes, strict=True):
                    if not fut.done():
                        fut.set_result(outcome)
            finally:
                for _ in batch:
                    queue.task_done()


def _expire(future: asyncio.Future[AcceptOutcome]) -> None:
    if not future.done():
        future.set_exception(TimeoutError("the event was not stored in time"))
