"""The figures of flow results over a period: how its conversations ended or where they are,
delivery outcomes of their messages, and replies per day. One computation (`compute`) serves
the console page, its CSV and the operator API route GET /api/flows/{name}/results (results.py).

Which conversations: those the flow started in the period, as the state history records them
(pipeline/history.py): every run, whether a START event (operator API, bulk, console) or a
keyword began it, with how it ended. A START event that began no run counts too (parked, still
queued). For runs from before the history was kept (migration 0007) the conversation row is all
there is: one slot per (number, phone), so a later conversation on the same phone replaces an
earlier one, which then counts as "replaced", and a keyword-started run is known while it runs.

The figures are one workspace's (the console's session's), or every workspace's together for
the admin key on the operator API (workspace None).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import zoneinfo
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import select

from smsbot.engine.contract import EventKind
from smsbot.pipeline.bot import Bot
from smsbot.store.models import (
    Direction,
    EventState,
    conversations_t,
    events_t,
    messages_t,
    state_changes_t,
)

DEFAULT_DAYS = 30
MAX_DAYS = 366
CHUNK = 500  # phones per IN list


class PeriodError(ValueError):
    """A period the results cannot be computed for; the message says what to give."""


def conversation_outcome(row: Any) -> str:
    """Where one conversation of a flow got to: its state while it runs, its end once ended."""
    if row.flow is not None:
        return f"now in {row.state}"
    return ended(row.end_state, row.end_reason)


def ended(end_state: str | None, reason: str | None) -> str:
    """How a run ended, as the results say it: the final state it completed in ("ended:
    cancelled"), else why it stopped ("ended: opted out", "ended: expired", "ended: timed out").
    The one place that reads how a conversation ended.
    """
    if reason in (None, "completed") and end_state:
        return f"ended: {end_state}"
    return f"ended: {reason or 'ended'}"


@dataclasses.dataclass(frozen=True, slots=True)
class Period:
    """Whole days, first to last inclusive, in one time zone."""

    first: dt.date
    last: dt.date
    zone: zoneinfo.ZoneInfo

    @property
    def start(self) -> dt.datetime:
        """The first instant of the period, UTC."""
        return dt.datetime.combine(self.first, dt.time(), self.zone).astimezone(dt.UTC)

    @property
    def end(self) -> dt.datetime:
        """The first instant after the period, UTC."""
        after = self.last + dt.timedelta(days=1)
        return dt.datetime.combine(after, dt.time(), self.zone).astimezone(dt.UTC)

    def days(self) -> list[dt.date]:
        """Every day of the period."""
        return [self.first + dt.timedelta(days=n) for n in range((self.last - self.first).days + 1)]


def parse_period(query: Any, now: dt.datetime, zone_name: str) -> Period:
    """The period in ?from=YYYY-MM-DD&to=YYYY-MM-DD (default: the last 30 days to today)."""
    zone = zoneinfo.ZoneInfo(zone_name)
    today = now.astimezone(zone).date()

    def day(field: str, default: dt.date) -> dt.date:
        text = str(query.get(field) or "").strip()
        if not text:
            return default
        try:
            return dt.date.fromisoformat(text)
        except ValueError:
            raise PeriodError(
                f"{field!r} must be a date such as 2026-01-31, got {text[:40]!r}"
            ) from None

    last = day("to", today)
    first = day("from", last - dt.timedelta(days=DEFAULT_DAYS - 1))
    if first > last:
        raise PeriodError("'from' is after 'to': swap them")
    if (last - first).days >= MAX_DAYS:
        raise PeriodError(f"a period is at most {MAX_DAYS} days: narrow 'from' and 'to'")
    return Period(first, last, zone)


@dataclasses.dataclass(slots=True)
class FlowResults:
    """The figures for one flow over one period."""

    flow: str
    period: Period
    started: int = 0
    outcomes: Counter[str] = dataclasses.field(default_factory=Counter)
    deliveries: Counter[str] = dataclasses.field(default_factory=Counter)
    replies: Counter[dt.date] = dataclasses.field(default_factory=Counter)

    def replies_per_day(self) -> list[tuple[dt.date, int]]:
        """Replies on each day of the period, days without any included."""
        return [(d, self.replies[d]) for d in self.period.days()]

    def as_json(self) -> dict[str, Any]:
        """The figures as the operator API returns them."""
        return {
            "flow": self.flow,
            "from": self.period.first.isoformat(),
            "to": self.period.last.isoformat(),
            "timezone": self.period.zone.key,
            "started": self.started,
            "outcomes": dict(self.outcomes.most_common()),
            "deliveries": dict(self.deliveries.most_common()),
            "replies_per_day": [
                {"date": d.isoformat(), "replies": n} for d, n in self.replies_per_day()
            ],
        }

    def as_csv(self) -> str:
        """The same figures as CSV: one row per (section, label, value)."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["section", "label", "value"])
        writer.writerow(
            ["period", f"{self.period.first} to {self.period.last}", self.period.zone.key]
        )
        writer.writerow(["conversations", "started", self.started])
        writer.writerows(["outcome", k, v] for k, v in self.outcomes.most_common())
        writer.writerows(["delivery", k, v] for k, v in self.deliveries.most_common())
        writer.writerows(["replies", d.isoformat(), n] for d, n in self.replies_per_day())
        return out.getvalue()


@dataclasses.dataclass(frozen=True, slots=True)
class _Span:
    """One conversation: its key and when it ran (until None: still running)."""

    virtual_number: str
    phone: str
    since: dt.datetime
    until: dt.datetime | None
    # By step, for a clock that stood still: the messages of the step that began the run are
    # its own; those of the step that replaced it are the next run's.
    first_event: int | None = None
    next_event: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class _Run:
    """One run of the flow from the state history: its start row, its end row (if it ended)."""

    start: Any
    end: Any | None
    convo: Any


def run_outcome(run: _Run) -> str:
    """Where one recorded run got to: as conversation_outcome says it, from its history."""
    if run.end is None:
        if run.convo.flow == run.start.flow:
            return f"now in {run.convo.state}"
        return "replaced by a later conversation"
    if run.end.reason == "interrupted":
        return "replaced by a later start"
    return ended(run.end.from_state, run.end.reason)


async def compute(bot: Bot, flow: str, period: Period, workspace: str | None) -> FlowResults:
    """Every figure for `flow` over `period`, in `workspace` (None: in every workspace)."""
    results = FlowResults(flow, period)
    e, c = events_t, conversations_t
    ws = _Within(workspace)
    starts = (
        select(e.c.id, e.c.virtual_number, e.c.phone, e.c.state, e.c.processed_at, e.c.received_at)
        .where(
            e.c.received_at >= period.start,
            e.c.received_at < period.end,
            e.c.kind == EventKind.START.value,
            e.c.payload["flow"].as_string() == flow,
            *ws(e),
        )
        .order_by(e.c.id)
    )
    running = select(c).where(
        c.c.flow == flow, c.c.started_at >= period.start, c.c.started_at < period.end, *ws(c)
    )
    async with bot.db.session() as s:
        start_rows = (await s.execute(starts)).all()
        runs = await _recorded_runs(s, flow, period, ws)
        recorded = {r.start.event_id for r in runs}
        legacy_starts = [x for x in start_rows if x.id not in recorded]
        run_convos = {r.start.conversation_id for r in runs}
        rows = {
            (r.virtual_number, r.phone): r
            for r in (await s.execute(running)).all()
            if r.id not in run_convos
        }
        keys = {(r.virtual_number, r.phone) for r in legacy_starts} - rows.keys()
        for vn, phones in _by_number(keys):
            found = select(c).where(c.c.virtual_number == vn, c.c.phone.in_(phones), *ws(c))
            rows.update({(r.virtual_number, r.phone): r for r in (await s.execute(found)).all()})
    spans = _recorded_spans(results, runs) + _spans(results, legacy_starts, rows)
    async with bot.db.session() as s:
        for vn, phones in _by_number({(x.virtual_number, x.phone) for x in spans}):
            m = messages_t
            query = select(m.c.phone, m.c.direction, m.c.status, m.c.created_at, m.c.event_id)
            query = query.where(
                m.c.virtual_number == vn,
                m.c.phone.in_(phones),
                m.c.created_at >= period.start,
                *ws(m),
            )
            for row in await s.execute(query):
                _count_message(results, spans, vn, row)
    return results


@dataclasses.dataclass(frozen=True, slots=True)
class _Within:
    """The condition that keeps a query in one workspace (none: every workspace)."""

    workspace: str | None

    def __call__(self, table: Any) -> list[Any]:
        return [] if self.workspace is None else [table.c.workspace == self.workspace]


async def _recorded_runs(s: Any, flow: str, period: Period, ws: _Within) -> list[_Run]:
    """The flow's runs that began in the period, by the state history (migration 0007 on).

    Every run is there, whichever way it started: a START event, or a keyword, whose
    conversation row no longer names the flow once it has ended.
    """
    h, c = state_changes_t, conversations_t
    starts = (
        await s.execute(
            select(h)
            .where(h.c.flow == flow, h.c.at >= period.start, h.c.at < period.end)
            .where(h.c.from_state.is_(None), *ws(h))
            .order_by(h.c.id)
        )
    ).all()
    ids = sorted({x.conversation_id for x in starts})
    ends: dict[int, list[Any]] = {}
    convos: dict[int, Any] = {}
    for i in range(0, len(ids), CHUNK):
        chunk = ids[i : i + CHUNK]
        found = select(h).where(
            h.c.conversation_id.in_(chunk),
            h.c.flow == flow,
            h.c.to_state.is_(None),
            h.c.at >= period.start,
            *ws(h),
        )
        for row in await s.execute(found.order_by(h.c.id)):
            ends.setdefault(row.conversation_id, []).append(row)
        rows = await s.execute(select(c).where(c.c.id.in_(chunk), *ws(c)))
        convos.update({row.id: row for row in rows})
    runs = []
    for start in starts:
        convo = convos.get(start.conversation_id)
        if convo is None:
            continue
        end = next((x for x in ends.get(start.conversation_id, []) if x.id > start.id), None)
        runs.append(_Run(start, end, convo))
    return runs


def _recorded_spans(results: FlowResults, runs: list[_Run]) -> list[_Span]:
    """Count each recorded run and its outcome; return when each ran, for its messages."""
    spans = []
    for run in runs:
        results.started += 1
        results.outcomes[run_outcome(run)] += 1
        until = run.end.at if run.end is not None else None
        replaced = run.end if run.end is not None and run.end.reason == "interrupted" else None
        spans.append(
            _Span(
                run.convo.virtual_number,
                run.convo.phone,
                run.start.at,
                until,
                first_event=run.start.event_id,
                next_event=replaced.event_id if replaced is not None else None,
            )
        )
    return spans


def _spans(
    results: FlowResults, start_rows: Sequence[Any], rows: dict[tuple[str, str], Any]
) -> list[_Span]:
    """Count each conversation's outcome; return when each ran, for its messages.

    For what the state history does not hold: runs from before it (migration 0007), and
    START events that began no run (parked, still queued, or finished in their first step).
    """
    spans: list[_Span] = []
    latest: dict[tuple[str, str], Any] = {}
    for event in start_rows:
        key = (event.virtual_number, event.phone)
        results.started += 1
        if event.state == EventState.FAILED.value:
            results.outcomes["could not start (parked)"] += 1
        elif event.state != EventState.DONE.value:
            results.outcomes["start queued"] += 1
        else:
            if key in latest:
                results.outcomes["replaced by a later start"] += 1
            latest[key] = event
    for key, event in latest.items():
        row = rows.get(key)
        if row is None or row.started_at is None or row.started_at > event.processed_at:
            results.outcomes["replaced by a later conversation"] += 1
            continue
        results.outcomes[conversation_outcome(row)] += 1
        spans.append(_Span(*key, row.started_at, row.ended_at if row.flow is None else None))
    for key, row in rows.items():
        if key not in latest and row.flow == results.flow:  # started by a keyword
            results.started += 1
            results.outcomes[conversation_outcome(row)] += 1
            spans.append(_Span(*key, row.started_at, None))
    return spans


def _count_message(results: FlowResults, spans: list[_Span], vn: str, m: Any) -> None:
    for span in spans:
        if (span.virtual_number, span.phone) != (vn, m.phone):
            continue
        if m.created_at < span.since and m.event_id != span.first_event:
            continue
        if span.until is not None and m.created_at > span.until:
            continue
        if span.next_event is not None and m.event_id == span.next_event:
            continue
        if m.direction == Direction.INBOUND.value:
            if m.created_at < results.period.end:
                results.replies[m.created_at.astimezone(results.period.zone).date()] += 1
        else:
            results.deliveries[m.status or "unknown"] += 1
        return


def _by_number(keys: Iterable[tuple[str, str]]) -> Iterable[tuple[str, list[str]]]:
    """Group keys by number, in chunks, for `number = ? AND phone IN (...)` (index-friendly)."""
    grouped: dict[str, list[str]] = {}
    for vn, phone in sorted(keys):
        grouped.setdefault(vn, []).append(phone)
    for vn, phones in grouped.items():
        for i in range(0, len(phones), CHUNK):
            yield vn, phones[i : i + CHUNK]
