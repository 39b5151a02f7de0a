"""Writing a batch of imported contacts: one upsert by (workspace, phone), then their groups.

Every row written gets updated_at = the batch's `now`, in the batch's transaction (campaigns
reschedule from it). SQLite merges with what is stored in Python (one read, one executemany);
PostgreSQL merges in the upsert itself, fed by COPY into a temporary table, because psycopg's
executemany sends one statement per row and dumps arrays element by element in Python.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

from sqlalchemy import Connection, select, text

from smsbot.store.models import contact_groups_t, contacts_t
from smsbot.store.types import utc_param
from smsbot.store.upsert import insert_on_conflict
from smsbot.workspaces import DEFAULT

_UPSERT = insert_on_conflict(
    contacts_t,
    ["workspace", "phone"],
    update=("name", "language", "timezone", "fields", "updated_at"),
)
_JOIN = insert_on_conflict(contact_groups_t, ["contact_id", "name"])


@dataclasses.dataclass(slots=True)
class ImportRow:
    """One good CSV row, parsed: empty cells are None (or absent from fields)."""

    phone: str
    name: str | None
    language: str | None
    timezone: str | None
    fields: dict[str, Any]
    groups: set[str]


def write_batch(
    conn: Connection,
    batch: dict[str, ImportRow],
    group: str | None,
    now: dt.datetime,
    workspace: str = DEFAULT,
) -> None:
    """Upsert a batch of `workspace`'s rows by phone, in the caller's transaction; join groups."""
    members = {p: r.groups | ({group} if group else set()) for p, r in batch.items()}
    if conn.dialect.name == "postgresql":
        ids = _upsert_postgres(conn, batch, now, workspace)
    else:
        ids = _upsert_sqlite(conn, batch, now, any(members.values()), workspace)
    joins = [
        {"contact_id": ids[phone], "name": name, "created_at": now}
        for phone, names in members.items()
        for name in names
    ]
    if joins:
        conn.execute(_JOIN, joins)


def _upsert_sqlite(
    conn: Connection, batch: dict[str, ImportRow], now: dt.datetime, ids: bool, workspace: str
) -> dict[str, int]:
    """Merge with what is stored in Python, then one executemany; return {phone: id} if `ids`."""
    c = contacts_t
    found = conn.execute(
        select(c.c.phone, c.c.name, c.c.language, c.c.timezone, c.c.fields).where(
            c.c.workspace == workspace, c.c.phone.in_(list(batch))
        )
    )
    old = {r.phone: r for r in found.all()}
    rows = []
    for phone, row in batch.items():
        was = old.get(phone)
        rows.append(
            {
                "workspace": workspace,
                "phone": phone,
                "name": row.name or (was.name if was else None),
                "language": row.language or (was.language if was else None),
                "timezone": row.timezone or (was.timezone if was else None),
                "fields": {**(was.fields if was else {}), **row.fields},
                "created_at": now,
                "updated_at": now,
            }
        )
    conn.execute(_UPSERT, rows)
    if not ids:
        return {}
    found = conn.execute(
        select(c.c.phone, c.c.id).where(c.c.workspace == workspace, c.c.phone.in_(list(batch)))
    )
    return {phone: contact_id for phone, contact_id in found.all()}


# On PostgreSQL the merge with what is stored happens in the upsert itself: an empty cell is
# NULL (COALESCE keeps the stored value) and fields merge as jsonb, so no query reads first.
_MERGE = (
    " ON CONFLICT (workspace, phone) DO UPDATE SET name = COALESCE(excluded.name, c.name),"
    " language = COALESCE(excluded.language, c.language),"
    " timezone = COALESCE(excluded.timezone, c.timezone),"
    " fields = (c.fields::jsonb || excluded.fields::jsonb)::json,"
    " updated_at = excluded.updated_at RETURNING c.phone, c.id"
)
_INSERT = (
    "INSERT INTO contacts AS c"
    " (workspace, phone, name, language, timezone, fields, created_at, updated_at)"
)
# COPY the batch into a temporary table, then one INSERT … SELECT from it.
_STAGE = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS smsbot_contacts_import (phone text, name text,"
    " language text, timezone text, fields text) ON COMMIT DELETE ROWS"
)
_COPY = "COPY smsbot_contacts_import (phone, name, language, timezone, fields) FROM STDIN"
_FROM_STAGE = text(
    f"{_INSERT} SELECT :workspace, phone, name, language, timezone, fields::json, :now, :now"  # noqa: S608
    f" FROM smsbot_contacts_import{_MERGE}"
).bindparams(utc_param("now"))


def _upsert_postgres(
    conn: Connection, batch: dict[str, ImportRow], now: dt.datetime, workspace: str
) -> dict[str, int]:
    """One upsert for the batch, merging in SQL; return {phone: id}."""
    # the engines that import are synchronous ones: Settings.sync_database_url is psycopg's
    if "smsbot_import_stage" not in conn.connection.info:
        conn.exec_driver_sql(_STAGE)
        conn.connection.info["smsbot_import_stage"] = True
    raw: Any = conn.connection.driver_connection
    with raw.cursor() as cursor, cursor.copy(_COPY) as copy:
        for phone, r in batch.items():
            copy.write_row((phone, r.name, r.language, r.timezone, json.dumps(r.fields)))
    found = conn.execute(_FROM_STAGE, {"now": now, "workspace": workspace})
    return {phone: contact_id for phone, contact_id in found.all()}
