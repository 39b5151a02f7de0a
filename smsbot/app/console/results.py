"""Flow results on the console (charts, a CSV download) and the operator API route
GET /api/flows/{name}/results: the same figures (figures.py) three ways. The console's are the
session's workspace's.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from smsbot.app.console import charts, scope
from smsbot.app.console.figures import FlowResults, PeriodError, compute, parse_period
from smsbot.app.console.render import MOUNT, render
from smsbot.app.server.keys import BOT
from smsbot.app.server.responses import problem
from smsbot.engine.runtime import FlowRuntime


def _flow_names(request: web.Request) -> list[str]:
    handler = request.config_dict[BOT].handler
    return sorted(handler.flows) if isinstance(handler, FlowRuntime) else []


async def _results(request: web.Request, name: str, workspace: str | None) -> FlowResults:
    bot = request.config_dict[BOT]
    period = parse_period(request.query, bot.clock.now(), bot.settings.default_timezone)
    return await compute(bot, name, period, workspace)


async def results_page(request: web.Request) -> web.Response:
    """GET /console/results?flow=&from=&to=: charts of one flow's results."""
    flows = list(scope.flows(request))
    name = request.query.get("flow") or (flows[0] if flows else "")
    error = None
    results = None
    if name not in flows:
        error = f"No flow named {name!r}: pick one of {', '.join(flows) or 'none'}"
    else:
        try:
            results = await _results(request, name, scope.workspace_name(request))
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
    if name not in scope.flows(request):
        raise web.HTTPNotFound(reason=f"no flow named {name!r}")
    try:
        results = await _results(request, name, scope.workspace_name(request))
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
        # Every workspace's: only the admin key reaches this route until the operator API
        # knows its caller's workspace (the credentials work of issue 14 passes it here).
        results = await _results(request, name, None)
    except PeriodError as exc:
        return problem(400, str(exc), field="from/to")
    return web.json_response(results.as_json())


def add_routes(router: web.UrlDispatcher) -> None:
    """Register this module's console pages (the API route is registered by create_api)."""
    router.add_get("/results", results_page)
    router.add_get("/results.csv", results_csv)
