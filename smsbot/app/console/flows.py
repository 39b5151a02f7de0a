"""Flows: each flow's states and transitions as a diagram, and its templates for sample data.

The diagram is the graph `smsbot graph` prints (smsbot.engine.graph), drawn as SVG here; the
templates are those the flow's source sends (smsbot.engine.flowsource), rendered with sample
data the operator can edit, each with its encoding and segment count: what one message costs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

from aiohttp import web

from smsbot.app.console import diagram, samples, scope
from smsbot.app.console.render import render
from smsbot.app.server.keys import BOT
from smsbot.engine.flow import Flow
from smsbot.engine.flowsource import read_source
from smsbot.engine.graph import flow_graph, to_mermaid
from smsbot.engine.runtime import FlowRuntime
from smsbot.engine.startdata import start_fields
from smsbot.sms.templates import TemplateError
from smsbot.sms.text import Encoding, analyze

log = logging.getLogger(__name__)

MAX_SAMPLE = 10_000  # characters of sample JSON the form accepts


@dataclasses.dataclass(frozen=True, slots=True)
class Sample:
    """One template of a flow, rendered for sample data (or the reason it could not be)."""

    name: str
    sent_by: tuple[str, ...]  # the flow's methods that send it
    text: str | None = None
    encoding: str = ""
    segments: int = 0
    units: int = 0
    wide: str = ""  # the characters that make it UCS-2
    error: str | None = None


def _runtime(request: web.Request) -> FlowRuntime:
    handler = request.config_dict[BOT].handler
    if not isinstance(handler, FlowRuntime):
        raise web.HTTPNotFound(reason="this server runs no flows (started with --echo)")
    return handler


def _summary(cls: type[Flow]) -> dict[str, Any]:
    graph = flow_graph(cls)
    try:
        fields = [f.name for f in start_fields(cls.start_data)]
    except TypeError:
        fields = []
    doc = (cls.__doc__ or "").strip().splitlines()
    return {
        "name": cls.name,
        "doc": doc[0] if doc else "",
        "graph": graph,
        "svg": diagram.render(graph),
        "mermaid": to_mermaid(graph),
        "triggers": list(cls.triggers),
        "fields": fields or list(cls.required_data),
    }


async def flows_page(request: web.Request) -> web.Response:
    """GET /console/flows: every flow of the session's workspace with its diagram."""
    _runtime(request)
    flows = [_summary(cls) for cls in scope.flows(request).values()]
    return render(request, "flows.html", flows=flows)


def _uses(cls: type[Flow]) -> dict[str, list[str]]:
    """Template name -> the methods of the flow that send it, from the flow's source."""
    found: dict[str, list[str]] = {}
    for method in read_source(cls).methods.values():
        for use in method.templates:
            for name in use.names:
                found.setdefault(name, []).append(method.name)
    return found


def _sample(
    runtime: FlowRuntime, name: str, by: list[str], data: dict[str, Any], now: Any
) -> Sample:
    sent_by = tuple(dict.fromkeys(by))
    try:
        variables = runtime.templates.undeclared_variables(name)
        context = samples.template_context(variables, data, now)
        sms = runtime.templates.render(name, context, timezone=runtime.settings.default_timezone)
    except TemplateError as exc:
        return Sample(name, sent_by, error=str(exc))
    wide = ""
    if sms.encoding is Encoding.UCS2:
        wide = "".join(c for c in dict.fromkeys(sms.text) if analyze(c).encoding is Encoding.UCS2)
    return Sample(
        name, sent_by, sms.text, sms.encoding.value, sms.segments, analyze(sms.text).units, wide
    )


async def flow_page(request: web.Request) -> web.Response:
    """GET /console/flows/{name}?data=JSON: the diagram, the graph's text, templates rendered."""
    runtime = _runtime(request)
    name = request.match_info["name"]
    visible = scope.flows(request)  # another workspace's flow is as unknown as a missing one
    cls = visible.get(name)
    if cls is None:
        known = ", ".join(visible) or "none"
        raise web.HTTPNotFound(reason=f"no flow named {name!r}; known flows: {known}")
    now = request.config_dict[BOT].clock.now()
    problem = None
    data = samples.start_data(cls, now)
    given = request.query.get("data")
    if given is not None:
        try:
            parsed = json.loads(given[:MAX_SAMPLE])
            if not isinstance(parsed, dict):
                raise ValueError("the sample data must be a JSON object")
            data = parsed
        except ValueError as exc:  # JSONDecodeError is a ValueError
            problem = f"Sample data: {exc}"
    rendered = [
        _sample(runtime, template, by, data, now) for template, by in sorted(_uses(cls).items())
    ]
    return render(
        request,
        "flow.html",
        status=400 if problem else 200,
        flow=_summary(cls),
        samples=rendered,
        data=given if problem and given is not None else json.dumps(data, indent=1),
        problem=problem,
        max_segments=runtime.settings.max_segments,
    )


def add_routes(router: web.UrlDispatcher) -> None:
    """Register this module's pages."""
    router.add_get("/flows", flows_page)
    router.add_get("/flows/{name}", flow_page)
