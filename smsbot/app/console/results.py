"""Flow results over a period: how its conversations ended or where they are, delivery outcomes
of their messages, and replies per day. One computation serves the console page, its CSV and
the operator API route GET /api/flows/{name}/results.

Which conversations: those the flow started in the period. A start from outside (operator API,
bulk, console) is an inbox START event naming the flow; a conversation a keyword started is
known while it runs. A conversation row is one slot per (number, phone), so a later
conversation on the same phone replaces an earlier one: that earlier one counts as "replaced".
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
from urllib.parse import urlencode

from aiohttp import web
from sqlalchemy import select

from smsbot.app.console import charts
from smsbot.app.console.render import MOUNT, render
from smsbot.app.server.keys import BOT
from smsbot.app.server.responses import problem
from smsbot.engine.contract import EventKind
from smsbot.engine.runtime import FlowRuntime
from smsbot.pipeline.bot import Bot
from smsbot.store.models import Direction, EventState, conversations_t, events_t, messages_t

DEFAULT_DAYS = 30
MAX_DAYS = 366
CHUNK = 500  # phones per IN list


class PeriodError(ValueError):
    """A period the results cannot be computed for; the message says what to give."""


def conversation_outcome(row: Any) -> str:
    """Where one conversation of a flow got to: its state while it runs, its end once ended.

    The one place that reads how a conversation ended: the state it ended in, else the reason.
    """
    if row.flow is not None:
        return f"now in {row.state}"
    return f"ended: {row.end_state or row.end_reason or 'ended'}"


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


async def compute(bot: Bot, flow: str, period: Period) -> FlowResults:
    """Every figure for `flow` over `period`."""
    results = FlowResults(flow, period)
    e, c = events_t, conversations_t
    starts = (
        select(e.c.virtual_number, e.c.phone, e.c.state, e.c.processed_at, e.c.received_at)
        .where(
            e.c.received_at >= period.start,
            e.c.received_at < period.end,
            e.c.kind == EventKind.START.value,
            e.c.payload["flow"].as_string() == flow,
        )
        .order_by(e.c.id)
    )
    running = select(c).where(
        c.c.flow == flow, c.c.started_at >= period.start, c.c.started_at < period.end
    )
    async with bot.db.session() as s:
        start_rows = (await s.execute(starts)).all()
        rows = {(r.virtual_number, r.phone): r for r in (await s.execute(running)).all()}
        keys = {(r.virtual_number, r.phone) for r in start_rows} - rows.keys()
        for vn, phones in _by_number(keys):
            found = select(c).where(c.c.virtual_number == vn, c.c.phone.in_(phones))
            rows.update({(r.virtual_number, r.phone): r for r in (await s.execute(found)).all()})
    spans = _spans(results, start_rows, rows)
    async with bot.db.session() as s:
        for vn, phones in _by_number({(x.virtual_number, x.phone) for x in spans}):
            m = messages_t
            query = select(m.c.phone, m.c.direction, m.c.status, m.c.created_at).where(
                m.c.virtual_number == vn, m.c.phone.in_(phones), m.c.created_at >= period.start
            )
            for row in await s.execute(query):
                _count_message(results, spans, vn, row)
    return results


def _spans(
    results: FlowResults, start_rows: Sequence[Any], rows: dict[tuple[str, str], Any]
) -> list[_Span]:
    """Count each conversation's outcome; return when each ran, for its messages."""
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
        if (span.virtual_number, span.phone) != (vn, m.phone) or m.created_at < span.since:
            continue
        if span.until is not None and m.created_at > span.until:
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


def _flow_names(request: web.Request) -> list[str]:
    handler = request.config_dict[BOT].handler
    return sorted(handler.flows) if isinstance(handler, FlowRuntime) else []


async def _results(request: web.Request, name: str) -> FlowResults:
    bot = request.config_dict[BOT]
    period = parse_period(request.query, bot.clock.now(), bot.settings.default_timezone)
    return await compute(bot, name, period)


async def results_page(request: web.Request) -> web.Response:
    """GET /console/results?flow=&from=&to=: charts of one flow's results."""
    flows = _flow_names(request)
    name = request.query.get("flow") or (flows[0] if flows else "")
    error = None
    results = None
    if name not in flows:
        error = f"No flow named {name!r}: pick one of {', '.join(flows) or 'none'}"
    else:
        try:
            results = await _results(request, name)
        except PeriodError as exc:
            error = str(exc)
    context: dict[str, Any] = {"flows": flows, "chosen": name, "error": error, "r": results}
    if results is not None:
        context["outcome_chart"] = charts.bars(
            results.outcomes.most_common(), title="How conversations ended, or where they are"
        )
        context["delivery_chart"] = charts.bars(
            results.deliveries.most_common(), title="Delivery outcomes of the flow's messages"
        )
        context["replies_chart"] = charts.columns(
            [(d.strftime("%d %b"), n) for d, n in results.replies_per_day()],
            title="Replies per day",
        )
        context["csv_link"] = f"{MOUNT}/results.csv?" + urlencode(
            {"flow": name, "from": results.period.first, "to": results.period.last}
        )
    status = 400 if error else 200
    return render(request, "results.html", status=status, query=request.query, **context)


async def results_csv(request: web.Request) -> web.Response:
    """GET /console/results.csv?flow=&from=&to=: the same figures as a CSV download."""
    name = request.query.get("flow", "")
    if name not in _flow_names(request):
        raise web.HTTPNotFound(reason=f"no flow named {name!r}")
    try:
        results = await _results(request, name)
    except PeriodError as exc:
        raise web.HTTPBadRequest(reason=str(exc)) from None
    filename = f"{name}-results-{results.period.first}-{results.period.last}.csv"
    return web.Response(
        text=results.as_csv(),
        content_type="text/csv",
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


async def results_api(request: web.Request) -> web.Response:
    """GET /api/flows/{name}/results?from=&to=: the figures as JSON (operator API)."""
    name = request.match_info["name"]
    flows = _flow_names(request)
    if name not in flows:
        return problem(404, f"no flow named {name!r}; known flows: {', '.join(flows) or 'none'}")
    # The console's form sends empty fields for "the default"; an API client names a date or
    # leaves the parameter out, as the OpenAPI document says.
    for field in request.query:
        if field not in ("from", "to"):
            return problem(
                400,
                f"{field!r} is not a query parameter of this route; it takes from, to",
                field=field,
            )
        if not request.query[field].strip():
            return problem(
                400, f"{field!r} must be a date such as 2026-01-31, or left out", field=field
            )
    try:
        results = await _results(request, name)
    except PeriodError as exc:
        return problem(400, str(exc), field="from/to")
    return web.json_response(results.as_json())


def add_routes(router: web.UrlDispatcher) -> None:
    """Register this module's console pages (the API route is registered by create_api)."""
    router.add_get("/results", results_page)
    router.add_get("/results.csv", results_csv)
