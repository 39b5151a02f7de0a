"""Flow results on the console: charts and a CSV download of the session's workspace's figures
(figures.py; the operator API's GET /api/flows/{name}/results is app/server/api_reads.py).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from smsbot.app.console import charts, scope
from smsbot.app.console.figures import FlowResults, PeriodError, compute, parse_period
from smsbot.app.console.render import MOUNT, render
from smsbot.app.server.keys import BOT


async def _results(request: web.Request, name: str, workspace: str | None) -> FlowResults:
    bot = request.config_dict[BOT]
    period = parse_period(request.query, bot.clock.now(), bot.settings.default_timezone)
    return await compute(bot, name, period, workspace=workspace)


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


def add_routes(router: web.UrlDispatcher) -> None:
    """Register this module's console pages."""
    router.add_get("/results", results_page)
    router.add_get("/results.csv", results_csv)
