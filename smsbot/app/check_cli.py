"""`smsbot check` and `smsbot graph`: a flow author's look at the flows before anything is sent."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from smsbot.config import Settings
from smsbot.engine.campaign import campaign_problems, campaigns_in
from smsbot.engine.checks import CheckOptions, Finding, Report, check_project
from smsbot.engine.graph import flow_graph, to_dot, to_mermaid
from smsbot.engine.loader import FlowLoadError, load_flows
from smsbot.hints import did_you_mean
from smsbot.pipeline.campaigns import campaign_sender, no_sender
from smsbot.sms.templates import SmsTemplates

__all__ = ["GraphError", "add_commands"]

DEFAULTS = CheckOptions()


class GraphError(Exception):
    """`smsbot graph` cannot draw what was asked for; the message says what to give instead."""


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1, or a message that says so."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value


def _words(text: str) -> tuple[str, ...]:
    words = tuple(w.strip() for w in text.split(",") if w.strip())
    if not words:
        raise argparse.ArgumentTypeError("give words separated by commas, e.g. STOP,UNSUBSCRIBE")
    return words


def _check(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    flows_dir = args.flows or settings.flows_dir
    templates_dir = args.templates or settings.templates_dir
    options = CheckOptions(
        segment_limit=args.segment_limit,
        text_length=args.text_length,
        opt_out_words=args.opt_out_words or DEFAULTS.opt_out_words,
        smart_characters=settings.smart_characters,
        conversation_expiry=settings.conversation_expiry,
    )
    campaigns: list[str] = []
    try:
        report = check_project(flows_dir, templates_dir, settings, options)
        found = campaigns_in(flows_dir)  # the modules check_project imported
        campaigns = sorted(c.name for c, _ in found)
        # without a templates directory the one "load" finding says so; not one per campaign
        checked = found if Path(templates_dir).is_dir() else []
        for problem in campaign_problems(checked, report.flows, SmsTemplates(templates_dir)):
            report.findings.append(
                Finding("error", "campaign", problem.file, problem.line, problem.message)
            )
        for camp, file in found:
            if campaign_sender(settings, camp) is None:
                report.findings.append(Finding("warning", "campaign", file, None, no_sender(camp)))
    except FlowLoadError as exc:  # no flows directory: nothing else can be checked
        report = Report([Finding("error", "load", str(flows_dir), None, str(exc))], [], [])
    if args.format == "json":
        print(json.dumps(report.as_json(), indent=2))
    else:
        names = ", ".join(report.flows) or "none"
        print(report.text(), end="")
        print(f"flows: {names}")
        if campaigns:
            print(f"campaigns: {', '.join(campaigns)}")
    return 1 if report.errors else 0


def _graph(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    flows_dir = args.flows or settings.flows_dir
    templates = SmsTemplates(args.templates or settings.templates_dir)
    flows = load_flows(flows_dir, templates)
    if args.flow not in flows:
        hint = did_you_mean(args.flow, flows, "{!r}")
        known = ", ".join(sorted(flows)) or "none"
        hint = f" ({hint})" if hint else ""
        raise GraphError(f"no flow named {args.flow!r}{hint}; flows: {known}")
    graph = flow_graph(flows[args.flow])
    print(to_dot(graph) if args.format == "dot" else to_mermaid(graph), end="")
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `check` and `graph` on the `smsbot` command's subparsers."""
    p = sub.add_parser(
        "check",
        help="check flows and templates before anything is sent (exit 1 on an error)",
        description="Check flows and templates: errors fail (exit 1), warnings do not."
        " docs/writing-flows.md lists every check.",
    )
    _dirs(p)
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument(
        "--segment-limit",
        type=positive_int,
        default=DEFAULTS.segment_limit,
        metavar="N",
        help="warn when a template can take more than N segments (default"
        f" {DEFAULTS.segment_limit})",
    )
    p.add_argument(
        "--text-length",
        type=positive_int,
        default=DEFAULTS.text_length,
        metavar="N",
        help="characters assumed for a text value without Length(max=...) (default"
        f" {DEFAULTS.text_length})",
    )
    p.add_argument(
        "--opt-out-words",
        type=_words,
        metavar="WORDS",
        help="what counts as opt-out wording in a first message (default"
        f" {','.join(DEFAULTS.opt_out_words)})",
    )
    p.set_defaults(func=_check)

    p = sub.add_parser(
        "graph", help="draw a flow's states and transitions (Mermaid or Graphviz DOT)"
    )
    p.add_argument("flow", help="the flow's name, e.g. appointment")
    _dirs(p)
    p.add_argument("--format", choices=("mermaid", "dot"), default="mermaid")
    p.set_defaults(func=_graph)


def _dirs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--flows", type=Path, metavar="DIR", help="flows directory (SMSBOT_FLOWS_DIR)")
    p.add_argument(
        "--templates", type=Path, metavar="DIR", help="templates directory (SMSBOT_TEMPLATES_DIR)"
    )
