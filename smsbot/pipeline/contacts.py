"""Contacts inside a step batch: load them into the snapshots, write back what flows changed.

Runs in the dispatcher's transaction, as synchronous Core like claims.py and effects.py: the
batch's contacts with their groups and the field types in three queries, their changes in one
executemany per kind. A contact is created on its first inbound message, in the workspace of
the number it texted: contacts are per (workspace, phone). Erased phones keep their opt-outs as
hashes (`suppressions`); a key that meets one gets its opt-out back here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, delete, select

from smsbot.engine.contact import ContactSnapshot
from smsbot.engine.contract import ConversationKey, EventKind
from smsbot.pipeline.step_rows import Stepped
from smsbot.store.lookup import KeyedRows, Listed, arrays_for, rows_in
from smsbot.store.models import (
    contact_fields_t,
    contact_groups_t,
    contacts_t,
    opt_outs_t,
    suppressions_t,
)
from smsbot.store.prepared import Prepared
from smsbot.store.upsert import insert_on_conflict

log = logging.getLogger(__name__)

# The hash of an erased phone. Keyed so a table of hashes cannot be matched against a list of
# numbers hashed with plain SHA-256; the key is fixed, so the same phone always meets its entry.
_SUPPRESSION_KEY = b"smsbot suppression v1"

_NEW_CONTACT = insert_on_conflict(contacts_t, ["workspace", "phone"])
_UPSERT_CONTACT = insert_on_conflict(
    contacts_t, ["workspace", "phone"], update=("name", "language", "fields", "updated_at")
)
_NEW_FIELD = insert_on_conflict(contact_fields_t, ["workspace", "name"])
_JOIN = insert_on_conflict(contact_groups_t, ["contact_id", "name"])
_RESTORE = insert_on_conflict(opt_outs_t, ["virtual_number", "phone"])
_LEAVE = delete(contact_groups_t).where(
    contact_groups_t.c.contact_id == bindparam("b_id"),
    contact_groups_t.c.name == bindparam("b_name"),
)


def suppression_hash(phone: str) -> str:
    """The keyed hash an erased phone's opt-outs are kept under."""
    return hmac.new(_SUPPRESSION_KEY, phone.encode(), hashlib.sha256).hexdigest()


# A batch's reads, prepared (store/prepared.py): compiled once, run through sqlite3 on SQLite.
_FIELD_TYPES = Prepared(
    select(contact_fields_t.c.name, contact_fields_t.c.type).where(
        contact_fields_t.c.workspace == bindparam("workspace")
    )
)
_CONTACTS = KeyedRows(
    (contacts_t.c.workspace, contacts_t.c.phone),
    lambda where: select(
        contacts_t.c.id,
        contacts_t.c.workspace,
        contacts_t.c.phone,
        contacts_t.c.name,
        contacts_t.c.language,
        contacts_t.c.fields,
    ).where(where),
)
_GROUPS = Listed(
    lambda listed: select(contact_groups_t.c.contact_id, contact_groups_t.c.name).where(
        listed(contact_groups_t.c.contact_id, "ids")
    )
)
_SUPPRESSIONS = Prepared(
    select(
        suppressions_t.c.id,
        suppressions_t.c.workspace,
        suppressions_t.c.virtual_number,
        suppressions_t.c.phone_hash,
        suppressions_t.c.keyword,
        suppressions_t.c.created_at,
    ).where(suppressions_t.c.phone_hash.in_(bindparam("hashes", expanding=True)))
)
_ANY_SUPPRESSION = Prepared(select(suppressions_t.c.id).limit(1))


def field_types(conn: Connection, workspace: str) -> dict[str, str]:
    """Every field `workspace` declared, and its type (each workspace has its own)."""
    return {name: kind for name, kind in _FIELD_TYPES.all(conn, {"workspace": workspace})}


def load_contacts(
    conn: Connection, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], ContactSnapshot]:
    """A snapshot for each (workspace, phone), with its groups and every field's type.

    A contact belongs to one workspace: the same phone is a different contact (or none) in
    another. exists=False: not a contact of that workspace yet.
    """
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    rows = _CONTACTS.all(conn, wanted)
    groups: dict[int, set[str]] = {}
    if rows:
        for contact_id, name in _GROUPS.all(conn, {"ids": [r.id for r in rows]}):
            groups.setdefault(contact_id, set()).add(name)
    # a new contact's first field must fit its type too: its workspace's
    types = {w: field_types(conn, w) for w in {w for w, _ in wanted}}
    found = {
        (r.workspace, r.phone): ContactSnapshot(
            r.phone,
            r.name,
            r.language,
            dict(r.fields or {}),
            frozenset(groups.get(r.id, ())),
            types[r.workspace],
        )
        for r in rows
    }
    return {
        key: found.get(key) or ContactSnapshot(key[1], types=types[key[0]], exists=False)
        for key in wanted
    }


def write_contacts(conn: Connection, items: Sequence[Stepped], now: dt.datetime) -> None:
    """Create the contacts of first inbound messages; write what steps changed on contacts.

    Each in the step's workspace: a contact is found and created per (workspace, phone).
    """
    created: dict[tuple[str, str], dict[str, Any]] = {}
    changed: dict[tuple[str, str], dict[str, Any]] = {}
    types: dict[tuple[str, str], str] = {}  # (workspace, field) -> type
    joins: dict[tuple[str, str], set[str]] = {}
    leaves: dict[tuple[str, str], set[str]] = {}
    for item in items:
        phone, change = item.snapshot.key.phone, item.result.contact
        key = (item.workspace, phone)
        if change is not None:
            changed[key] = {
                "workspace": item.workspace,
                "phone": phone,
                "name": change.name,
                "language": change.language,
                "fields": change.fields,
                "created_at": now,
                "updated_at": now,
            }
            types.update({(item.workspace, n): k for n, k in change.new_types.items()})
            joins.setdefault(key, set()).update(change.join)
            leaves.setdefault(key, set()).update(change.leave)
        elif item.event.kind is EventKind.INBOUND and not (
            item.snapshot.contact and item.snapshot.contact.exists
        ):
            created[key] = {
                "workspace": item.workspace,
                "phone": phone,
                "fields": {},
                "created_at": now,
            }
    if types:
        conn.execute(
            _NEW_FIELD,
            [
                {"workspace": w, "name": n, "type": k, "created_at": now}
                for (w, n), k in types.items()
            ],
        )
    if created:
        conn.execute(_NEW_CONTACT, list(created.values()))
    if changed:
        conn.execute(_UPSERT_CONTACT, list(changed.values()))
    members = {key for key, names in [*joins.items(), *leaves.items()] if names}
    if not members:
        return
    c = contacts_t
    found = conn.execute(
        select(c.c.workspace, c.c.phone, c.c.id).where(
            rows_in((c.c.workspace, c.c.phone), members, arrays=arrays_for(conn))
        )
    )
    ids: dict[tuple[str, str], int] = {(w, phone): i for w, phone, i in found.all()}
    join = [
        {"contact_id": ids[k], "name": n, "created_at": now} for k, ns in joins.items() for n in ns
    ]
    leave = [{"b_id": ids[k], "b_name": n} for k, ns in leaves.items() for n in ns]
    if join:
        conn.execute(_JOIN, join)
    if leave:
        conn.execute(_LEAVE, leave)


def restore_suppressed(conn: Connection, keys: Iterable[tuple[str, ConversationKey]]) -> int:
    """Give erased phones that are back their opt-outs again; return how many.

    `keys` are the batch's (workspace, conversation key) pairs. A phone's erased opt-outs of
    that workspace come back, and the opt-out from the conversation's own number whichever
    workspace it was kept under (a STOP to a number holds, whoever owns it now); another
    workspace's stay hashed. Run before the opt-out check: whatever rule decides which opt-out
    stops which sender then sees these rows as it sees any other, and START can lift them.
    """
    rows, phones = _suppressed(conn, keys)
    if not rows:
        return 0
    conn.execute(
        _RESTORE,
        [
            {
                "workspace": r.workspace,
                "virtual_number": r.virtual_number,
                "phone": phones[r.phone_hash],
                "keyword": r.keyword,
                "created_at": r.created_at,
            }
            for r in rows
        ],
    )
    conn.execute(delete(suppressions_t).where(suppressions_t.c.id.in_([r.id for r in rows])))
    return len(rows)


def keeps_suppressions(conn: Connection) -> bool:
    """Whether the database keeps any erased phone's opt-out (most keep none: hash nothing)."""
    return bool(_ANY_SUPPRESSION.all(conn))


def any_suppressed(conn: Connection, keys: Iterable[tuple[str, ConversationKey]]) -> bool:
    """In a read: whether restore_suppressed would give any of these keys an opt-out back."""
    return bool(_suppressed(conn, keys)[0])


def _suppressed(
    conn: Connection, keys: Iterable[tuple[str, ConversationKey]]
) -> tuple[list[Any], dict[str, str]]:
    """The suppressions rows restore_suppressed restores for `keys`, and each hash's phone."""
    # Most databases keep no erased phone: then no phone of the batch is hashed (an HMAC each,
    # about 2 µs; a step batch's read and its write both ask).
    if not keeps_suppressions(conn):
        return [], {}
    wanted: dict[str, list[tuple[str, str]]] = {}  # hash -> [(workspace, virtual number)]
    phones: dict[str, str] = {}
    for workspace, key in keys:
        digest = suppression_hash(key.phone)
        phones[digest] = key.phone
        wanted.setdefault(digest, []).append((workspace, key.virtual_number))
    if not wanted:
        return [], phones
    found = _SUPPRESSIONS.all(conn, {"hashes": list(wanted)})
    rows = [
        r
        for r in found
        if any(r.workspace == w or r.virtual_number == vn for w, vn in wanted[r.phone_hash])
    ]
    return rows, phones
