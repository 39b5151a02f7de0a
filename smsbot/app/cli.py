"""The `smsbot` command: serve, sandbox, send, chat, start, db, events, check, graph, contacts,
campaigns, keys."""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from smsbot.app.campaigns_cli import add_commands as add_campaigns_commands
from smsbot.app.check_cli import GraphError, positive_int
from smsbot.app.check_cli import add_commands as add_check_commands
from smsbot.app.contacts_cli import ContactsCommandError
from smsbot.app.contacts_cli import add_commands as add_contacts_commands
from smsbot.app.keys_cli import add_commands as add_keys_commands
from smsbot.app.operations import OperatorError, operator_sender
from smsbot.config import ConfigError, Settings, port_in_use
from smsbot.engine.loader import FlowLoadError
from smsbot.store.migrate import DatabaseUnavailableError

log = logging.getLogger("smsbot")


class UsageError(Exception):
    """A mistake the user can fix; printed as one line, never a traceback."""


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    changes: dict[str, object] = {}
    if getattr(args, "host", None):
        changes["host"] = args.host
    if getattr(args, "port", None):
        changes["port"] = args.port
    if getattr(args, "insecure_no_signature", False):
        changes["insecure_no_signature"] = True
    return settings.replace(**changes) if changes else settings


def _database(settings: Settings) -> Settings:
    """Reach the database and migrate a fresh one, as `serve` does; say so if it did."""
    from smsbot.app.database import migrate

    if done := migrate(settings):
        print(f"smsbot: {done}", file=sys.stderr)
    return settings


def _cmd_serve(args: argparse.Namespace) -> int:
    from smsbot.app.serve import serve

    settings = _settings(args)
    _logging(settings.log_level)
    serve(settings, echo=args.echo)
    return 0


def _cmd_sandbox(args: argparse.Namespace) -> int:
    from smsbot.channels.sandbox import run_sandbox

    settings = Settings.from_env()
    _logging(settings.log_level)
    secrets = settings.webhook_secrets()
    webhook_url = args.webhook_url or f"http://127.0.0.1:{settings.port}/webhooks/divergent"
    port = settings.sandbox_port if args.port is None else args.port
    failing = [_fail_number(raw, settings.default_region) for raw in args.fail or ()]
    try:
        run_sandbox(
            "127.0.0.1",
            port,
            webhook_url,
            secrets[0] if secrets else None,
            args.api_key,
            failing_numbers=failing,
        )
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise port_in_use(port, "SMSBOT_SANDBOX_PORT (or pass --port)") from None
        raise
    return 0


def _fail_number(raw: str, region: str) -> str:
    """A --fail number in E.164, as the sandbox sees recipients; a typo is an error, not a no-op."""
    from smsbot.sms.phone import PhoneNumberError, normalize

    try:
        return normalize(raw, region)
    except PhoneNumberError as exc:
        raise UsageError(f"--fail: {exc}") from None


def _cmd_send(args: argparse.Namespace) -> int:
    from smsbot.app.operations import check_send, send_now

    settings = Settings.from_env()
    given = {"to": args.to, "text": args.text, "sender": args.sender, "workspace": args.workspace}
    check_send(settings, **given)  # before creating the database
    _database(settings)
    result = asyncio.run(send_now(settings, **given))
    print(result)
    return 0


def _cmd_db_upgrade(args: argparse.Namespace) -> int:
    from smsbot.app.database import migrate
    from smsbot.store.migrate import HEAD

    settings = Settings.from_env()
    print(migrate(settings) or f"nothing to do: the database is at the newest revision, {HEAD}")
    return 0


def _cmd_events_failed(args: argparse.Namespace) -> int:
    from smsbot.app.operations import failed_events, workspace_named

    settings = Settings.from_env()
    workspace = workspace_named(settings, args.workspace).name
    _database(settings)
    rows = asyncio.run(failed_events(settings, limit=args.limit, workspace=workspace))
    if not rows:
        print(f"no failed events in workspace {workspace}")
    for line in rows:
        print(line)
    return 0


def _cmd_events_retry(args: argparse.Namespace) -> int:
    from smsbot.app.operations import retry_event, workspace_named

    settings = Settings.from_env()
    workspace = workspace_named(settings, args.workspace).name
    _database(settings)
    print(asyncio.run(retry_event(settings, args.event_id, workspace)))
    return 0


def run_id(text: str) -> str:
    """An argparse type: a bulk start's run id, as `smsbot start` printed it."""
    from smsbot.app.bulk import RUN_ID

    if not RUN_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"takes the run id a start printed (12 hex digits, as in"
            f" 'smsbot: starting run 3f9c0a1b2d4e'), got {text!r}"
        )
    return text


def _cmd_start(args: argparse.Namespace) -> int:
    from smsbot.app.bulk_cli import start_from_csv
    from smsbot.app.operations import workspace_named

    settings = Settings.from_env()
    workspace = workspace_named(settings, args.workspace).name
    sender = None
    if args.sender:  # one of the workspace's senders, like a row's "from" (or a one-line error)
        sender = operator_sender(settings, args.sender, given_as="--from", workspace=workspace)
    print(
        asyncio.run(
            start_from_csv(
                settings,
                args.flow,
                args.csv,
                args.skip_invalid,
                workspace=workspace,
                sender=sender,
                jobs=args.jobs,
                resume=args.resume,
            )
        )
    )
    return 0


def _cmd_chat(args: argparse.Namespace) -> int:
    from smsbot.app.chat import run_chat

    settings = Settings.from_env()
    asyncio.run(run_chat(settings, flow=args.flow, phone=args.phone, data=args.data))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="smsbot",
        description="Two-way SMS conversational bots on the PureSMS / Divergent Connect API.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("serve", help="run the webhook server, dispatcher and sender")
    p.add_argument("--host", help="address to listen on (SMSBOT_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (SMSBOT_PORT, default 8080)")
    p.add_argument(
        "--insecure-no-signature",
        action="store_true",
        help="accept unsigned webhooks: local experiments only",
    )
    p.add_argument("--echo", action="store_true", help="answer every SMS with 'You said: …'")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("sandbox", help="run the local fake of the Divergent Connect API")
    p.add_argument("--port", type=int, help="port to listen on (SMSBOT_SANDBOX_PORT, default 8081)")
    p.add_argument("--webhook-url", help="where to post receipts and inbound SMS")
    p.add_argument("--api-key", default="sandbox", help="the X-Api-Key it accepts")
    p.add_argument("--fail", action="append", metavar="NUMBER", help="a number whose SMS fail")
    p.set_defaults(func=_cmd_sandbox)

    p = sub.add_parser("send", help="send one SMS now through the configured provider")
    p.add_argument("--to", required=True, help="recipient phone number")
    p.add_argument("--text", required=True, help="message text")
    p.add_argument("--from", dest="sender", help="sender (default: the workspace's first number)")
    _workspace_option(p, "send from this workspace's account and numbers")
    p.set_defaults(func=_cmd_send)

    db = sub.add_parser("db", help="database schema").add_subparsers(
        dest="db_command", metavar="{upgrade}", required=True
    )
    p = db.add_parser("upgrade", help="apply every pending migration")
    p.set_defaults(func=_cmd_db_upgrade)

    ev = sub.add_parser("events", help="inspect the inbox").add_subparsers(
        dest="events_command", metavar="{failed,retry}", required=True
    )
    p = ev.add_parser("failed", help="list events parked after their retries")
    p.add_argument("--limit", type=int, default=50)
    _workspace_option(p, "this workspace's events")
    p.set_defaults(func=_cmd_events_failed)
    p = ev.add_parser("retry", help="put a failed event back in the queue")
    p.add_argument("event_id", type=int)
    _workspace_option(p, "the workspace the event belongs to")
    p.set_defaults(func=_cmd_events_retry)

    p = sub.add_parser("start", help="start a flow for every row of a CSV file")
    p.add_argument("flow", help="the flow's name, e.g. appointment")
    p.add_argument("--csv", required=True, type=Path, help="header row: to[,from],data columns…")
    p.add_argument("--from", dest="sender", help="sender for rows without a 'from' column")
    p.add_argument("--skip-invalid", action="store_true", help="start the good rows anyway")
    p.add_argument(
        "--jobs",
        type=positive_int,
        help="processes that start the rows (default: one per core, up to 4, for 20,000+ rows)",
    )
    p.add_argument(
        "--resume",
        type=run_id,
        metavar="RUN",
        help="the run id a start that stopped part-way printed: start the rest of the same file",
    )
    _workspace_option(p, "start from this workspace's numbers")
    p.set_defaults(func=_cmd_start)

    p = sub.add_parser("chat", help="talk to your flows from the terminal, through the sandbox")
    p.add_argument("--flow", help="start this flow first (as the operator API would)")
    p.add_argument("--as", dest="phone", default="+447700900123", help="your phone number")
    p.add_argument("--data", default="{}", help="JSON data for --flow")
    p.set_defaults(func=_cmd_chat)

    add_check_commands(sub)  # check, graph
    add_contacts_commands(sub)  # contacts import|export|show|erase
    add_campaigns_commands(sub)  # campaigns
    add_keys_commands(sub)  # keys create|list|revoke
    return parser


def _workspace_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--workspace", default="default", help=f"{what} (default: default)")


def _logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `smsbot` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code: int = args.func(args)
        return code
    except (
        ConfigError,
        UsageError,
        OperatorError,
        FlowLoadError,
        GraphError,
        ContactsCommandError,
    ) as exc:
        print(f"smsbot: {exc}", file=sys.stderr)
        return 2
    except DatabaseUnavailableError as exc:
        print(f"smsbot: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"smsbot: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
