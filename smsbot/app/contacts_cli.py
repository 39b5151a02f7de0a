"""`smsbot contacts import|export|erase|show`: contacts from the command line (docs/contacts.md)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from smsbot.app.database import command_engine
from smsbot.clock import SystemClock
from smsbot.config import Settings
from smsbot.sms.phone import PhoneNumberError, normalize
from smsbot.workspaces import DEFAULT, Workspace

SHOWN_ERRORS = 20


class ContactsCommandError(Exception):
    """A contacts command refused its input; printed as one line."""


def _workspace(settings: Settings, name: str) -> Workspace:
    from smsbot.app.operations import OperatorError, workspace_named

    try:
        return workspace_named(settings, name)
    except OperatorError as exc:
        raise ContactsCommandError(str(exc)) from None


def _phone(settings: Settings, raw: str, region: str | None = None) -> str:
    try:
        return normalize(raw, region or settings.default_region)
    except PhoneNumberError as exc:
        raise ContactsCommandError(
            f"{exc}; pass the contact's number, e.g. +447700900123"
        ) from None


def _cmd_import(args: argparse.Namespace) -> int:
    from smsbot.app.bulk_cli import progress
    from smsbot.app.contacts_io import ContactsError, import_csv

    settings = Settings.from_env()
    workspace = _workspace(settings, args.workspace)
    path: Path = args.file
    if not path.is_file():
        raise ContactsCommandError(f"{path} is not a file: pass the CSV to import")
    try:
        with command_engine(settings) as engine:
            report = import_csv(
                engine,
                path,
                region=workspace.default_region,
                config_fields=settings.contact_fields,
                now=SystemClock().now(),
                group=args.group,
                progress=progress if sys.stderr.isatty() else None,
                workspace=workspace.name,
            )
    except ContactsError as exc:
        raise ContactsCommandError(str(exc)) from None
    for line in report.bad[:SHOWN_ERRORS]:
        print(f"{path}:{line}", file=sys.stderr)
    if len(report.bad) > SHOWN_ERRORS:
        print(f"… and {len(report.bad) - SHOWN_ERRORS:,} more bad row(s)", file=sys.stderr)
    print(report.summary(path))
    return 1 if report.bad else 0


def _cmd_export(args: argparse.Namespace) -> int:
    from smsbot.app.contacts_io import export_csv

    settings = Settings.from_env()
    workspace = _workspace(settings, args.workspace).name
    with command_engine(settings) as engine:
        if args.output is None:
            try:
                export_csv(engine, sys.stdout, args.group, workspace)
                sys.stdout.flush()
            except BrokenPipeError:  # `smsbot contacts export | head`: the reader had enough
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        else:
            with args.output.open("w", newline="", encoding="utf-8") as out:
                count = export_csv(engine, out, args.group, workspace)
            print(f"exported {count:,} contact(s) to {args.output}", file=sys.stderr)
    return 0


def _cmd_erase(args: argparse.Namespace) -> int:
    from smsbot.app.contacts_erase import erase

    settings = Settings.from_env()
    workspace = _workspace(settings, args.workspace)
    phone = _phone(settings, args.phone, workspace.default_region)
    with command_engine(settings) as engine:
        done = erase(engine, phone, workspace.name)
    print(
        f"erased {phone}: {done['contact']} contact, {done['conversations']} conversation(s),"
        f" {done['messages']} message(s) blanked, {done['opt_outs']} opt-out(s) kept as"
        " hashed suppressions"
    )
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from smsbot.app.contacts_erase import subject_data

    settings = Settings.from_env()
    workspace = _workspace(settings, args.workspace)
    phone = _phone(settings, args.phone, workspace.default_region)
    with command_engine(settings) as engine:
        data: dict[str, Any] = subject_data(engine, phone, workspace.name)
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return 0
    contact = data["contact"] or {}
    print(f"{phone}: {'a contact' if contact else 'no contact'}")
    for key in ("name", "language", "timezone", "fields", "groups"):
        if contact.get(key):
            print(f"  {key}: {contact[key]}")
    for key in ("conversations", "messages", "opt_outs", "timers"):
        print(f"  {key}: {len(data[key])}")
    return 0


def add_commands(sub: Any) -> None:
    """Add `contacts` and its sub-commands to the `smsbot` parser."""
    contacts = sub.add_parser("contacts", help="import, export, show and erase contacts")
    cmds = contacts.add_subparsers(
        dest="contacts_command", metavar="{import,export,show,erase}", required=True
    )
    p = cmds.add_parser("import", help="upsert contacts from a CSV file (header: phone,…)")
    p.add_argument("file", type=Path, help="the CSV: phone[,name,language,timezone,groups,fields…]")
    p.add_argument("--group", help="also put every imported contact in this group")
    _workspace_option(p, "import into this workspace")
    p.set_defaults(func=_cmd_import)
    p = cmds.add_parser("export", help="write contacts as CSV")
    p.add_argument("--group", help="only the contacts in this group")
    p.add_argument("-o", "--output", type=Path, help="the file to write (default: stdout)")
    _workspace_option(p, "this workspace's contacts")
    p.set_defaults(func=_cmd_export)
    p = cmds.add_parser("show", help="everything stored about one phone")
    p.add_argument("phone")
    p.add_argument("--json", action="store_true", help="all of it, as JSON (data-subject export)")
    _workspace_option(p, "what this workspace stores")
    p.set_defaults(func=_cmd_show)
    p = cmds.add_parser("erase", help="erase one phone's contact, conversations and bodies")
    p.add_argument("phone")
    _workspace_option(p, "erase what this workspace stores")
    p.set_defaults(func=_cmd_erase)


def _workspace_option(parser: Any, what: str) -> None:
    parser.add_argument("--workspace", default=DEFAULT, help=f"{what} (default: default)")
