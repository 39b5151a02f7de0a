"""`smsbot campaigns`: the campaigns declared beside the flows, and their fires by state."""

from __future__ import annotations

import argparse
import json
from typing import Any

from smsbot.config import Settings
from smsbot.engine.campaign import Campaign

__all__ = ["add_commands", "describe"]

STATES = ("scheduled", "fired", "skipped", "cancelled", "missed")


def describe(campaign: Campaign, counts: dict[str, int] | None) -> dict[str, Any]:
    """One campaign as JSON: what, for whom, when, and its fires by state (None: not read)."""
    return {
        "name": campaign.name,
        "group": campaign.group,
        "field": campaign.field,
        "offset_seconds": int(campaign.offset.total_seconds()),
        "at_hour": campaign.at_hour,
        "send": campaign.send,
        "start": campaign.start,
        "when": campaign.when,
        "fires": None if counts is None else {s: counts.get(s, 0) for s in STATES},
    }


def _campaigns(args: argparse.Namespace) -> int:
    from smsbot.app.contacts_cli import _engine
    from smsbot.engine.runtime import FlowRuntime
    from smsbot.pipeline.campaigns import fire_counts

    settings = Settings.from_env()
    runtime = FlowRuntime.from_settings(settings)  # a FlowLoadError names the campaign
    counts: dict[str, dict[str, int]] | None = None
    if not args.no_database:
        with _engine(settings) as engine, engine.connect() as conn:
            counts = fire_counts(conn)
    found = [
        describe(c, None if counts is None else counts.get(c.name, {}))
        for c in sorted(runtime.campaigns.values(), key=lambda c: c.name)
    ]
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    if not found:
        print(f"no campaigns in {settings.flows_dir}: declare Campaign(...) in a flow module")
        return 0
    for item in found:
        print(
            f"{item['name']}: group {item['group']}, {item['when']},"
            f" {'send ' + item['send'] if item['send'] else 'start ' + item['start']}"
        )
        if item["fires"] is not None:
            print("  fires: " + ", ".join(f"{n} {s}" for s, n in item["fires"].items()))
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `campaigns` on the `smsbot` command's subparsers."""
    p = sub.add_parser(
        "campaigns",
        help="list the campaigns declared in the flows and their fires",
        description="List the campaigns (docs/campaigns.md) and their fires by state.",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--no-database", action="store_true", help="only the declarations; no fire counts"
    )
    p.set_defaults(func=_campaigns)
