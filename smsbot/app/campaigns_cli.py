"""`smsbot campaigns`: the campaigns declared beside the flows, and their fires by state."""

from __future__ import annotations

import argparse
import json
from typing import Any

from sqlalchemy import Connection, func, select

from smsbot.config import Settings
from smsbot.engine.campaign import Campaign, campaign_of
from smsbot.pipeline.campaigns import KIND
from smsbot.store.models import timers_t
from smsbot.workspaces import DEFAULT

__all__ = ["add_commands", "describe", "fire_counts"]

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


def fire_counts(conn: Connection, workspace: str = DEFAULT) -> dict[str, dict[str, int]]:
    """Each campaign's fires of `workspace`'s contacts, by state."""
    t = timers_t
    rows = conn.execute(
        select(t.c.name, t.c.state, func.count())
        .where(t.c.workspace == workspace, t.c.contact_id.is_not(None), t.c.kind == KIND)
        .group_by(t.c.name, t.c.state)
    )
    counts: dict[str, dict[str, int]] = {}
    for name, state, n in rows:
        per = counts.setdefault(campaign_of(name) or "?", {})
        per[str(state)] = per.get(str(state), 0) + int(n)
    return counts


def _campaigns(args: argparse.Namespace) -> int:
    from smsbot.app.database import command_engine
    from smsbot.app.operations import workspace_named
    from smsbot.engine.runtime import FlowRuntime

    settings = Settings.from_env()
    workspace = workspace_named(settings, args.workspace).name
    runtime = FlowRuntime.from_settings(settings)  # a FlowLoadError names the campaign
    counts: dict[str, dict[str, int]] | None = None
    if not args.no_database:
        with command_engine(settings) as engine, engine.connect() as conn:
            counts = fire_counts(conn, workspace)
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
    p.add_argument("--workspace", default=DEFAULT, help="count this workspace's fires")
    p.set_defaults(func=_campaigns)
