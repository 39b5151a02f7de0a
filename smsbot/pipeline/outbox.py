"""One workspace's outbox in SQL: what a claim takes (two lanes), lapsed claims, outcomes.

The Sender (sender.py) decides when to claim and what an error means; this is the SQL it runs,
each function inside the one transaction (Database.read / Database.write) the Sender opens. Every
query is filtered by the outbox state and the workspace, the first two columns of
ix_messages_outbox and ix_messages_lane (migration 0013): one workspace's backlog is never
read by another's claim.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Integer,
    Select,
    Update,
    and_,
    bindparam,
    case,
    exists,
    or_,
    select,
    update,
)

from smsbot.engine.contract import Origin
from smsbot.pipeline.receipts import enqueue_send_failed
from smsbot.sms.status import DeliveryStatus
from smsbot.store.lookup import Listed
from smsbot.store.models import (
    DEFAULT_WORKSPACE,
    OutboxState,
    is_value,
    messages_t,
    opt_out_blocks,
)
from smsbot.store.prepared import Prepared
from smsbot.store.types import utc_param

# Answers to a person: the outbox's interactive lane (see Outbox.due).
INTERACTIVE = (Origin.REPLY.value, Origin.COMPLIANCE.value)


def _send_order(row: Any) -> tuple[dt.datetime, dt.datetime]:
    """A claimed row's place in send order (Outbox.due's ORDER BY)."""
    return row.send_after, row.created_at


@dataclasses.dataclass(frozen=True, slots=True)
class Claimed:
    """One outbound message claimed for sending."""

    id: str
    sender: str
    recipient: str
    body: str
    encoding: str
    attempts: int
    created_at: dt.datetime
    origin: str | None = None
    workspace: str = DEFAULT_WORKSPACE


# (message ids, the provider's batch or message id) of one accepted call
Sent = tuple[list[str], str | None]


def _sent(which: ColumnElement[bool]) -> Update:
    """Mark messages sent. A receipt may have arrived before this answer: never move status
    back (nor wipe the error it recorded; only an earlier attempt's error goes)."""
    m = messages_t
    queued = m.c.status == DeliveryStatus.QUEUED.value
    now = utc_param("b_now")
    return (
        update(m)
        .where(which)
        .values(
            outbox=OutboxState.DONE.value,
            sent_at=now,
            batch_id=bindparam("b_batch"),
            provider_message_id=bindparam("b_provider_id"),
            status=case((queued, DeliveryStatus.ACCEPTED.value), else_=m.c.status),
            status_at=case((queued, now), else_=m.c.status_at),
            error=case((queued, None), else_=m.c.error),
        )
    )


# Prepared (store/prepared.py): single sends in one executemany, a bulk call's ids in one IN.
_SENT_ONE = Prepared(_sent(messages_t.c.id == bindparam("b_id")))
_SENT_MANY = Listed(lambda listed: _sent(listed(messages_t.c.id, "b_ids")))
# The sender's look and claim statements, built once per outbox (Outbox._statements).
_STATEMENTS: dict[Outbox, _Statements] = {}
_NOW, _CUTOFF = utc_param("b_now"), utc_param("b_cutoff")
# (the message, the error's text, the columns to set: retry later or failed for good)
Failed = tuple[Claimed, str, dict[str, Any]]


@dataclasses.dataclass(frozen=True, slots=True)
class _Statements:
    """One outbox's look and claim statements (Outbox._statements), Prepared."""

    senders_due: Prepared  # the look: the senders of its due messages
    lapsed: Prepared  # the look: one claim whose lease lapsed, if any
    half: int  # the interactive lane's share of a batch
    lanes: tuple[Prepared, ...]  # the interactive lane: one query for each of INTERACTIVE
    rest: Prepared  # the send-order lane (b_room rows)
    rest_past: Prepared  # the same past the ids the first lane took (b_taken)
    take: Prepared  # the UPDATE that claims them (b_ids) until b_lease


@dataclasses.dataclass(frozen=True, slots=True)
class Outbox:
    """The statements of one workspace's sender."""

    workspace: str
    batch_size: int
    lease: dt.timedelta
    resend_grace: dt.timedelta
    postgres: bool

    def look(self, conn: Connection, now: dt.datetime, sweep: bool) -> tuple[set[str], bool]:
        """In a read: the senders of the messages a claim would take now; any lapsed claim?"""
        looks = self._statements()
        senders = {vn for (vn,) in looks.senders_due.all(conn, {"b_now": now})}
        if not sweep:
            return senders, False
        cutoff = now - self.resend_grace
        return senders, bool(looks.lapsed.all(conn, {"b_now": now, "b_cutoff": cutoff}))

    def due(
        self,
        now: dt.datetime | ColumnElement[dt.datetime],
        *columns: ColumnElement[Any],
        origin: str | None = None,
        limit: int | ColumnElement[int] | None = None,
    ) -> Select[Any]:
        """This workspace's messages a claim takes, oldest first: due, and none to the same phone
        in flight (ix_messages_outbox: other workspaces' backlog is not read).

        `origin` (one of INTERACTIVE): the interactive lane, answers to a person of that origin
        that are the oldest pending message of their conversation, so the lane never reorders
        a conversation; on ix_messages_lane, in send order, past any campaign's backlog.
        """
        m = messages_t
        # One send at a time per conversation, across processes: a message waits while
        # another to the same phone from the same number is in flight. So a reply claimed
        # just before a STOP reaches the provider before the STOP's confirmation, never after.
        other = m.alias("other")
        in_flight = exists().where(
            and_(
                other.c.virtual_number == m.c.virtual_number,
                other.c.phone == m.c.phone,
                is_value(other.c.outbox, OutboxState.INFLIGHT),  # on ix_messages_open
                other.c.lease_until >= now,
            )
        )
        query = select(*columns).where(
            m.c.workspace == self.workspace,
            is_value(m.c.outbox, OutboxState.PENDING),
            m.c.send_after <= now,
            ~in_flight,
        )
        if origin is not None:
            older = m.alias("older")
            query = query.where(
                m.c.origin == origin,  # on ix_messages_lane, past any bulk backlog
                ~exists().where(
                    and_(
                        older.c.virtual_number == m.c.virtual_number,
                        older.c.phone == m.c.phone,
                        is_value(older.c.outbox, OutboxState.PENDING),
                        older.c.id != m.c.id,
                        # written earlier, or in the same instant and not an answer itself
                        # (one step's messages share a time): left to the send-order lane
                        or_(
                            older.c.created_at < m.c.created_at,
                            and_(
                                older.c.created_at == m.c.created_at,
                                older.c.origin.not_in(INTERACTIVE),
                            ),
                        ),
                    )
                ),
            )
        return query.order_by(m.c.send_after, m.c.created_at).limit(
            self.batch_size if limit is None else limit
        )

    def claim(
        self, conn: Connection, now: dt.datetime, sweep: bool, take: Callable[[str], bool]
    ) -> tuple[set[str], list[Any], int]:
        """In the claim's transaction: (the senders of what was due, the rows taken, how many
        were blocked by an opt-out). `take(sender)` is the rate limit: False leaves it pending."""
        m = messages_t
        if sweep:
            self.recover_lapsed(conn, now)
        claims = self._statements()
        # Two lanes: answers to people first, up to half the batch, so a reply never waits
        # behind a campaign's backlog; then everything in send order, so bulk keeps moving.
        # The first lane is one query an origin, each on ix_messages_lane in send order: with
        # `origin IN (…)` SQLite (no ANALYZE) took ix_messages_outbox for its order instead and
        # read the whole pending backlog to find no answer in it, 22-40 ms a claim at 100,000
        # pending messages (bench/README.md, session 21).
        params: dict[str, Any] = {"b_now": now}
        rows = [r for lane in claims.lanes for r in lane.all(conn, params)]
        if len(rows) > 1:
            rows = sorted(rows, key=_send_order)[: claims.half]
        if (room := self.batch_size - len(rows)) > 0:
            if rows:
                params = {"b_now": now, "b_room": room, "b_taken": [r.id for r in rows]}
                rows += claims.rest_past.all(conn, params)
            else:
                rows = claims.rest.all(conn, {"b_now": now, "b_room": room})
        # Opt-out is checked as the message is claimed: only the STOP confirmation itself
        # goes to a phone that opted out; everything else is marked suppressed, never sent.
        blocked = {r.id for r in rows if r.opted_out and r.origin != Origin.COMPLIANCE.value}
        if blocked:
            conn.execute(
                update(m)
                .where(m.c.id.in_(blocked))
                .values(
                    outbox=OutboxState.DONE.value,
                    status=DeliveryStatus.SUPPRESSED.value,
                    status_at=now,
                )
            )
            rows = [r for r in rows if r.id not in blocked]
        taken = [r for r in rows if take(r.virtual_number)]
        if taken:
            lease = now + self.lease
            claims.take.all(conn, {"b_ids": [r.id for r in taken], "b_lease": lease})
        return {r.virtual_number for r in rows}, taken, len(blocked)

    def _statements(self) -> _Statements:
        """This outbox's statements, built and compiled once (prepared.py): Core statement
        building and its cache key were about a third of a claim's CPU at every claim."""
        if (built := _STATEMENTS.get(self)) is None:
            built = _STATEMENTS[self] = self._build()
        return built

    def _build(self) -> _Statements:
        m = messages_t
        # a number's own STOP, and for an alphanumeric sender any of the phone's in this
        # workspace (opt_out_blocks): another client's STOP never silences this one
        opted_out = exists().where(opt_out_blocks(m.c.virtual_number, m.c.phone, self.workspace))
        columns = (
            m.c.id,
            m.c.virtual_number,
            m.c.phone,
            m.c.body,
            m.c.encoding,
            m.c.attempts,
            m.c.created_at,
            m.c.origin,
            m.c.send_after,
            opted_out.label("opted_out"),
        )

        def locked(query: Select[Any]) -> Prepared:
            if self.postgres:
                query = query.with_for_update(of=m, skip_locked=True)
            return Prepared(query)

        half = max(1, self.batch_size // 2)
        room = bindparam("b_room", type_=Integer())
        rest = self.due(_NOW, *columns, limit=room)
        return _Statements(
            senders_due=Prepared(self.due(_NOW, m.c.virtual_number)),
            lapsed=Prepared(select(m.c.id).where(self.lapsed(_NOW, _CUTOFF)).limit(1)),
            half=half,
            lanes=tuple(
                locked(self.due(_NOW, *columns, origin=o, limit=half)) for o in INTERACTIVE
            ),
            rest=locked(rest),
            rest_past=locked(rest.where(m.c.id.not_in(bindparam("b_taken", expanding=True)))),
            take=Prepared(
                update(m)
                .where(m.c.id.in_(bindparam("b_ids", expanding=True)))
                .values(
                    outbox=OutboxState.INFLIGHT.value,
                    lease_until=utc_param("b_lease"),
                    attempts=m.c.attempts + 1,
                )
            ),
        )

    @staticmethod
    def write_outcomes(
        conn: Connection,
        sent: list[Sent],
        failed: list[Failed],
        now: dt.datetime,
    ) -> int:
        """Record each send's outcome; return how many messages failed for good."""
        m = messages_t
        one = [
            {"b_id": ids[0], "b_provider_id": provider_id, "b_batch": None, "b_now": now}
            for ids, provider_id in sent
            if len(ids) == 1
        ]
        _SENT_ONE.many(conn, one)
        for ids, batch_id in sent:
            if len(ids) > 1:
                params = {"b_ids": ids, "b_batch": batch_id, "b_provider_id": None, "b_now": now}
                _SENT_MANY.all(conn, params)
        gave_up = 0
        for claimed, reason, values in failed:
            conn.execute(update(m).where(m.c.id == claimed.id).values(error=reason, **values))
            if values.get("status") == DeliveryStatus.FAILED.value:
                gave_up += 1
                # In this transaction: the flow hears of it exactly once, crash or not.
                enqueue_send_failed(conn, claimed, reason, now)
        return gave_up

    @staticmethod
    def release(conn: Connection, ids: list[str]) -> None:
        """Give claimed messages that were never sent back to the outbox (a stopping sender)."""
        m = messages_t
        conn.execute(
            update(m)
            .where(m.c.id.in_(ids), m.c.outbox == OutboxState.INFLIGHT.value)
            .values(outbox=OutboxState.PENDING.value, attempts=m.c.attempts - 1)
        )

    def lapsed(
        self,
        now: dt.datetime | ColumnElement[dt.datetime],
        cutoff: dt.datetime | ColumnElement[dt.datetime] | None = None,
    ) -> ColumnElement[bool]:
        """Claims whose process died (their lease lapsed) that recover_lapsed settles now.

        If a receipt (matched by clientReference) has moved the status on, the provider has
        the message: it is done and must not go again. With no receipt we cannot tell whether
        the call got through, so it waits `resend_grace` for one (the provider retries
        receipts) before it is sent again.
        """
        m = messages_t
        return and_(
            m.c.workspace == self.workspace,
            m.c.outbox == OutboxState.INFLIGHT.value,
            m.c.lease_until < now,
            or_(
                m.c.status != DeliveryStatus.QUEUED.value,
                m.c.lease_until < (now - self.resend_grace if cutoff is None else cutoff),
            ),
        )

    def recover_lapsed(self, conn: Connection, now: dt.datetime) -> None:
        m = messages_t
        moved_on = m.c.status != DeliveryStatus.QUEUED.value
        conn.execute(
            update(m)
            .where(self.lapsed(now))
            .values(
                outbox=case((moved_on, OutboxState.DONE.value), else_=OutboxState.PENDING.value)
            )
        )
