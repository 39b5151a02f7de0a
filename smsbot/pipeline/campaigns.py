"""Campaign fires kept in step with contacts: one timer per contact, campaign and field value.

The contract with every writer of contacts (CLI import, flows through `convo.contact`, the
operator API): any change to a contact, its fields or its groups sets contacts.updated_at in the
same transaction. The sync reads contacts changed since its cursor, in (updated_at, id) order a
page at a time, and for each one works out the fires it should have:

- in the campaign's group with a datetime in its field: a fire named campaign:<name>@<value>,
  due at campaign.due_at(value, the contact's zone); a new one whose time has passed is stored
  SKIPPED (not sent), a FIRED one is left alone (at most once per contact and value);
- every other SCHEDULED fire of the contact (old value, left the group, field cleared,
  campaign gone) is CANCELLED.

It is idempotent, so reading a contact twice is harmless: the cursor lags SETTLE behind the
clock (a transaction that commits late with an earlier updated_at is still seen), and the
leader re-reads everything at start and every FULL_INTERVAL. Erasure deletes a contact's fires
in its own transaction (cancel_contact_fires); a fire whose contact is gone is cancelled by the
scheduler instead of fired.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import logging
import os
import time
import zoneinfo
from collections.abc import Collection, Iterator, Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, select, tuple_, update

from smsbot.engine.campaign import campaign_of, timer_name
from smsbot.engine.contact import decode
from smsbot.engine.quiet_hours import recipient_zone
from smsbot.pipeline.campaign_plan import Plan as Plan
from smsbot.pipeline.campaign_plan import campaign_sender as campaign_sender
from smsbot.pipeline.campaign_plan import campaign_workspace as campaign_workspace
from smsbot.pipeline.campaign_plan import no_sender as no_sender
from smsbot.pipeline.timer_claims import BY_ID, reads_by_id, scheduled_by_id
from smsbot.sms.phone import PhoneNumberError
from smsbot.store.engine import Database
from smsbot.store.lookup import Listed
from smsbot.store.models import TimerState, contact_groups_t, contacts_t, timers_t
from smsbot.store.prepared import Prepared
from smsbot.store.upsert import insert_on_conflict

log = logging.getLogger(__name__)

PAGE = 2000  # contacts per transaction
SETTLE = dt.timedelta(seconds=5)  # the cursor stays this far behind the clock
# How often the leader re-reads every contact, in real (monotonic) seconds: a virtual clock that
# jumps a week must not turn every sync into a full pass.
FULL_INTERVAL = 3600.0
KIND = "campaign"  # the timers.kind of a campaign fire

_RESCHEDULE = (
    update(timers_t)
    .where(timers_t.c.id == bindparam("b_id"))
    .values(
        state=TimerState.SCHEDULED.value,
        token=bindparam("b_token"),
        due_at=bindparam("b_due"),
        payload=bindparam("b_payload"),
        created_at=bindparam("b_now"),
        fired_at=None,
    )
)


# A page's groups and fires, by its contacts' ids: one statement text at any page size (a
# PostgreSQL array; an expanding IN of 2,000 ids rendered 2,000 bind casts a page: a sixth of
# the sync's CPU there, bench/README.md, session 19).
_GROUPS_OF = Listed(
    lambda is_in: select(contact_groups_t.c.contact_id, contact_groups_t.c.name).where(
        is_in(contact_groups_t.c.contact_id, "ids"), is_in(contact_groups_t.c.name, "names")
    )
)
_FIRES_OF = Listed(
    lambda is_in: select(
        timers_t.c.id, timers_t.c.contact_id, timers_t.c.name, timers_t.c.state, timers_t.c.due_at
    ).where(is_in(timers_t.c.contact_id, "ids"))
)
_STATES = reads_by_id()  # a fire's id and state
_END = Prepared(update(timers_t).where(BY_ID).values(state=bindparam("b_state")))

# A page's new fires, skipping any another sync stored first: sqlite3's executemany on SQLite;
# on PostgreSQL one statement over arrays (Prepared.many). asyncpg's executemany ran the INSERT
# once per row (its plan's start-up, its own index probes, a message each way), and the sync was
# bound by the server: 100,000 fires took 8-10 s, the Python side mostly waiting.
_NEW_FIRES = Prepared(insert_on_conflict(timers_t, ["contact_id", "name"]))


def _tokens() -> Iterator[str]:
    """Fresh timer tokens: 128 random bits each, as hex (uuid4().hex's length and alphabet),
    drawn 256 at a time: a UUID object per token took 7 % of the sync's CPU."""
    while True:
        text = os.urandom(16 * 256).hex()
        for at in range(0, len(text), 32):
            yield text[at : at + 32]


@dataclasses.dataclass(slots=True)
class PageResult:
    """What one page of the sync did."""

    contacts: int = 0
    scheduled: int = 0
    skipped: int = 0
    cancelled: int = 0
    last: tuple[dt.datetime, int] | None = None  # the last contact read; None: nothing read


def _changed(after: tuple[dt.datetime, int] | None) -> Any:
    c = contacts_t
    query = select(c.c.id).where(c.c.updated_at.is_not(None))
    if after is not None:
        query = query.where(tuple_(c.c.updated_at, c.c.id) > after)
    return query


def changed_since(conn: Connection, after: tuple[dt.datetime, int] | None) -> bool:
    """Whether any contact changed after the cursor `after` (None: whether there are any)."""
    return conn.execute(_changed(after).limit(1)).first() is not None


def sync_page(
    conn: Connection, plan: Plan, now: dt.datetime, after: tuple[dt.datetime, int] | None
) -> PageResult:
    """(Re)schedule and cancel the fires of the next PAGE contacts changed after `after`."""
    c = contacts_t
    query = _changed(after).with_only_columns(
        c.c.id, c.c.workspace, c.c.phone, c.c.timezone, c.c.fields, c.c.updated_at
    )
    rows = conn.execute(query.order_by(c.c.updated_at, c.c.id).limit(PAGE)).all()
    result = PageResult(contacts=len(rows))
    if not rows:
        return result
    result.last = (rows[-1].updated_at, rows[-1].id)
    apply(conn, plan, now, rows, result)
    return result


def apply(
    conn: Connection, plan: Plan, now: dt.datetime, rows: Sequence[Any], result: PageResult
) -> None:
    """Bring the fires of these contact rows (id, workspace, phone, timezone, fields) in line."""
    ids = [r.id for r in rows]
    tokens = _tokens()
    groups: dict[int, set[str]] = {}
    wanted_groups = sorted({camp.group for camp in plan.campaigns.values()})
    if wanted_groups:
        for contact_id, name in _GROUPS_OF.all(conn, {"ids": ids, "names": wanted_groups}):
            groups.setdefault(contact_id, set()).add(name)
    have: dict[int, dict[str, Any]] = {}
    for found in _FIRES_OF.all(conn, {"ids": ids}):
        have.setdefault(found.contact_id, {})[found.name] = found
    inserts: list[dict[str, Any]] = []
    moves: list[dict[str, Any]] = []
    skips: list[int] = []
    cancels: list[int] = []
    for row in rows:
        want = _wanted(plan, row, groups.get(row.id, set()))
        mine = have.get(row.id, {})
        cancels += [
            timer.id
            for name, timer in mine.items()
            if name not in want and timer.state == TimerState.SCHEDULED.value
        ]
        for name, (due, payload) in want.items():
            timer = mine.get(name)
            if timer is None:
                inserts.append(
                    {
                        "contact_id": row.id,
                        "workspace": row.workspace,
                        "name": name,
                        "kind": KIND,
                        "token": next(tokens),
                        "due_at": due,
                        "payload": payload,
                        "state": (
                            TimerState.SCHEDULED.value if due > now else TimerState.SKIPPED.value
                        ),
                        "created_at": now,
                    }
                )
                result.scheduled += due > now
                result.skipped += due <= now
            elif timer.state == TimerState.FIRED.value:
                continue  # at most once per contact and value
            elif timer.state == TimerState.SCHEDULED.value and timer.due_at == due:
                continue
            elif due > now:  # moved (zone, campaign changed), or back in the group
                moves.append(
                    {
                        "b_id": timer.id,
                        "b_token": next(tokens),
                        "b_due": due,
                        "b_payload": payload,
                        "b_now": now,
                    }
                )
                result.scheduled += 1
            elif timer.state == TimerState.SCHEDULED.value:
                skips.append(timer.id)  # moved into the past: skipped, not blasted
                result.skipped += 1
    if inserts:  # another process's sync may have just added the same fire: one is kept
        _NEW_FIRES.many(conn, inserts)
    if moves:
        conn.execute(_RESCHEDULE, moves)
    if skips:
        _end_scheduled(conn, skips, TimerState.SKIPPED)
    if cancels:
        result.cancelled += len(cancels)
        _end_scheduled(conn, cancels, TimerState.CANCELLED)


def _end_scheduled(conn: Connection, ids: Collection[int], state: TimerState) -> int:
    """Move the fires among `ids` still scheduled to `state`; return how many.

    By primary key alone (timer_claims.scheduled_by_id): next to `id IN (…)`, a `state = ?`
    let SQLite's planner read every scheduled timer on ix_timers_due, 945,000 instructions a
    call at 100,000 scheduled (tests/test_query_plans.py).
    """
    live, _ = scheduled_by_id(conn, ids, _STATES, mark=_END, b_state=state.value)
    return len(live)


def _wanted(
    plan: Plan, row: Any, groups: Collection[str]
) -> dict[str, tuple[dt.datetime, dict[str, Any]]]:
    """The fires a contact row should have: timer name -> (due, payload)."""
    want: dict[str, tuple[dt.datetime, dict[str, Any]]] = {}
    zone: zoneinfo.ZoneInfo | None = None
    fields = row.fields or {}
    for camp in plan.campaigns.values():
        stored = fields.get(camp.field)
        sender = plan.sender(camp)
        if camp.group not in groups or not isinstance(stored, str) or sender is None:
            continue
        if plan.workspace(camp) != row.workspace:
            continue  # another workspace's contact: a campaign reaches its own workspace's only
        value = decode("datetime", stored)
        if not isinstance(value, dt.datetime):
            continue  # not a datetime (a text field that never held one)
        if zone is None:
            zone = _zone(row.phone, row.timezone, plan.default_timezone)
        payload = {
            "campaign": camp.name,
            "value": stored,
            "timezone": zone.key,
            "number": sender,
        }
        want[timer_name(camp.name, stored)] = (camp.due_at(value, zone), payload)
    return want


def _zone(phone: str, timezone: str | None, default: str) -> zoneinfo.ZoneInfo:
    try:
        return recipient_zone(phone, timezone, default)
    except PhoneNumberError:
        return zoneinfo.ZoneInfo(default)


def cancel_contact_fires(conn: Connection, contact_ids: Collection[int]) -> int:
    """Delete the fires of these contacts (erased or deleted); return how many."""
    if not contact_ids:
        return 0
    gone = conn.execute(delete(timers_t).where(timers_t.c.contact_id.in_(contact_ids)))
    return int(gone.rowcount)


def cancel_fires(conn: Connection, ids: Collection[int]) -> int:
    """Cancel these scheduled fires (their contact was deleted); return how many."""
    done = _end_scheduled(conn, ids, TimerState.CANCELLED)
    if done:
        log.info("cancelled %d campaign fire(s) whose contact was deleted", done)
    return done


def fire_counts(conn: Connection) -> dict[str, dict[str, int]]:
    """Each campaign's fires by state (for `smsbot campaigns`)."""
    t = timers_t
    rows = conn.execute(
        select(t.c.name, t.c.state, func.count())
        .where(t.c.contact_id.is_not(None), t.c.kind == KIND)
        .group_by(t.c.name, t.c.state)
    )
    counts: dict[str, dict[str, int]] = {}
    for name, state, n in rows:
        campaign = campaign_of(name) or "?"
        per = counts.setdefault(campaign, {})
        per[str(state)] = per.get(str(state), 0) + int(n)
    return counts


class CampaignSync:
    """The leader's sync: a cursor over contacts.updated_at, and a full pass now and then."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.cursor: tuple[dt.datetime, int] | None = None
        self.full_at: float | None = None  # time.monotonic() of the last full pass
        self._lock = asyncio.Lock()  # one run at a time (the leader's loop, next_due)

    @property
    def active(self) -> bool:
        """True when there are campaigns to keep."""
        return bool(self.plan.campaigns)

    def reset(self) -> None:
        """Read every contact on the next run (a new leader, or campaigns changed)."""
        self.cursor, self.full_at = None, None

    def due_full(self) -> bool:
        """Whether the next run should re-read every contact."""
        return self.full_at is None or time.monotonic() - self.full_at >= FULL_INTERVAL

    def settle(self, now: dt.datetime, last: tuple[dt.datetime, int] | None) -> None:
        """Move the cursor after a run that read up to `last`, keeping SETTLE behind `now`."""
        if last is None:
            return
        limit = now - SETTLE
        self.cursor = last if last[0] <= limit else (limit, 0)

    async def run(self, db: Database, now: dt.datetime) -> PageResult:
        """Sync the contacts changed since the cursor (every one, when a full pass is due)."""
        total = PageResult()
        if not self.active:
            return total
        async with self._lock:
            return await self._run(db, now, total)

    async def _run(self, db: Database, now: dt.datetime, total: PageResult) -> PageResult:
        full, started = self.due_full(), time.monotonic()
        after = None if full else self.cursor
        last: tuple[dt.datetime, int] | None = None
        if not await db.read(functools.partial(changed_since, after=after)):
            self.full_at = started if full else self.full_at
            return total  # no write transaction when nothing changed
        while True:
            page = await db.write(
                functools.partial(sync_page, plan=self.plan, now=now, after=after)
            )
            total.contacts += page.contacts
            total.scheduled += page.scheduled
            total.skipped += page.skipped
            total.cancelled += page.cancelled
            if page.last is None:
                break
            after = last = page.last
            if page.contacts < PAGE:
                break
        if full:
            self.full_at = started
        self.settle(now, last)
        if total.scheduled or total.skipped or total.cancelled:
            log.info(
                "campaigns: %d contact(s) read, %d fire(s) scheduled, %d skipped (past due),"
                " %d cancelled",
                total.contacts, total.scheduled, total.skipped, total.cancelled,
            )  # fmt: skip
        return total
