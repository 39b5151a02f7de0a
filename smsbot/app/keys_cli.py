"""`smsbot keys create|list|revoke`: a workspace's operator API keys (docs/workspaces.md).

A key is shown once, when it is created; only its SHA-256 is stored (credentials.py). A key
acts in its workspace only, as a bearer token or as the client_secret of the OAuth 2.0
client-credentials grant (client_id: its id). Revoking a key refuses it and its tokens at once.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from sqlalchemy import Connection, insert, select, update

from smsbot.app.credentials import new_key
from smsbot.app.operations import OperatorError, workspace_named
from smsbot.clock import SystemClock
from smsbot.config import Settings
from smsbot.store.models import operator_keys_t

__all__ = ["add_commands", "create_key", "list_keys", "revoke_key"]


def create_key(conn: Connection, workspace: str, name: str | None) -> dict[str, Any]:
    """Store a new key of `workspace`; return it, with the key itself (shown this once)."""
    key_id, key, digest = new_key()
    now = SystemClock().now()
    conn.execute(
        insert(operator_keys_t).values(
            id=key_id, workspace=workspace, name=name, key_hash=digest, created_at=now
        )
    )
    return {
        "id": key_id,
        "workspace": workspace,
        "name": name,
        "key": key,
        "created_at": now.isoformat(),
    }


def list_keys(conn: Connection, workspace: str | None = None) -> list[dict[str, Any]]:
    """Every key (of `workspace`), oldest first: id, workspace, name, dates; never the key."""
    k = operator_keys_t
    query = select(k.c.id, k.c.workspace, k.c.name, k.c.created_at, k.c.revoked_at)
    if workspace is not None:
        query = query.where(k.c.workspace == workspace)
    rows = conn.execute(query.order_by(k.c.created_at, k.c.id)).all()
    return [
        {
            "id": r.id,
            "workspace": r.workspace,
            "name": r.name,
            "created_at": r.created_at.isoformat(),
            "revoked_at": r.revoked_at.isoformat() if r.revoked_at else None,
        }
        for r in rows
    ]


def revoke_key(conn: Connection, key_id: str) -> str:
    """Revoke the key `key_id`; return what was done, or raise OperatorError if there is none."""
    k = operator_keys_t
    row = conn.execute(select(k).where(k.c.id == key_id)).first()
    if row is None:
        raise OperatorError(f"no key {key_id!r}: `smsbot keys list` shows the keys and their ids")
    label = f"{key_id} (workspace {row.workspace}{', ' + row.name if row.name else ''})"
    if row.revoked_at is not None:
        return f"{label} was revoked already, at {row.revoked_at:%Y-%m-%d %H:%M:%S} UTC"
    conn.execute(update(k).where(k.c.id == key_id).values(revoked_at=SystemClock().now()))
    return f"revoked {label}: it and the OAuth tokens issued for it are refused from now on"


def _cmd_create(args: argparse.Namespace) -> int:
    from smsbot.app.database import command_engine

    settings = Settings.from_env()
    workspace = workspace_named(settings, args.workspace).name
    name = (args.name or "").strip() or None
    if name is not None and len(name) > 100:
        raise OperatorError("--name is longer than 100 characters: a short label will do")
    with command_engine(settings) as engine, engine.begin() as conn:
        created = create_key(conn, workspace, name)
    if args.format == "json":
        print(json.dumps(created, indent=2))
    elif args.format == "env":  # for `eval "$(smsbot keys create … --format env)"`
        print(f"OPERATOR_KEY_ID={created['id']}\nOPERATOR_KEY={created['key']}")
    else:
        print(
            f"created key {created['id']} for workspace {workspace}"
            f"{f' ({name})' if name else ''}. Keep the key now: it is not stored and is not"
            " shown again.\n"
            f"key id: {created['id']}   (the OAuth client_id)\n"
            f"key:    {created['key']}   (a bearer token, and the OAuth client_secret)"
        )
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from smsbot.app.database import command_engine

    settings = Settings.from_env()
    workspace = workspace_named(settings, args.workspace).name if args.workspace else None
    with command_engine(settings) as engine, engine.connect() as conn:
        keys = list_keys(conn, workspace)
    if args.json:
        print(json.dumps(keys, indent=2))
        return 0
    if not keys:
        where = f" in workspace {workspace}" if workspace else ""
        print(f"no keys{where}: make one with `smsbot keys create --workspace NAME`")
        return 0
    for k in keys:
        state = f"revoked {k['revoked_at'][:19]}" if k["revoked_at"] else "active"
        print(
            f"{k['id']}  {k['workspace']}  {state}  created {k['created_at'][:19]}"
            f"  {k['name'] or ''}".rstrip()
        )
    return 0


def _cmd_revoke(args: argparse.Namespace) -> int:
    from smsbot.app.database import command_engine

    settings = Settings.from_env()
    with command_engine(settings) as engine, engine.begin() as conn:
        print(revoke_key(conn, args.key_id.strip()))
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `keys` and its sub-commands on the `smsbot` command's subparsers."""
    keys = sub.add_parser(
        "keys",
        help="create, list and revoke a workspace's operator API keys",
        description="A workspace's operator API keys (docs/workspaces.md, Operator credentials).",
    )
    cmds = keys.add_subparsers(dest="keys_command", metavar="{create,list,revoke}", required=True)
    p = cmds.add_parser("create", help="make a key for one workspace; it is shown once")
    p.add_argument("--workspace", required=True, help="the workspace it acts in, e.g. default")
    p.add_argument("--name", help="a label saying what uses it, e.g. crm-sync")
    p.add_argument(
        "--format",
        choices=("text", "json", "env"),
        default="text",
        help="env: OPERATOR_KEY_ID=… and OPERATOR_KEY=… lines for a shell's eval",
    )
    p.set_defaults(func=_cmd_create)
    p = cmds.add_parser("list", help="the keys and whether they are active (never the keys)")
    p.add_argument("--workspace", help="only this workspace's keys")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_list)
    p = cmds.add_parser("revoke", help="refuse a key, and its OAuth tokens, from now on")
    p.add_argument("key_id", help="the key's id, as `smsbot keys list` shows it")
    p.set_defaults(func=_cmd_revoke)
