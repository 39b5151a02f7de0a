"""One contact at a time, for the operator API: read, search, create and update, on a connection.

Each function runs inside the caller's transaction, on one workspace's contacts: a contact is
its workspace's (unique per workspace and phone), and another workspace's is not found. Every
change sets `updated_at`, the mark
campaigns and exports read. Custom fields keep their declared type (`contact_fields`); a field
named for the first time takes the type of its first value, as a flow's assignment does.
Erasure and the data-subject export are in contacts_erase.py; CSV import/export in contacts_io.py.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, case, delete, func, insert, select, update
from sqlalchemy.sql.elements import ColumnElement

from smsbot.engine.contact import (
    FieldTypeError,
    check_field_name,
    check_value,
    encode,
    infer_type,
    parse_field,
)
from smsbot.pipeline.contacts import field_types
from smsbot.sms.phone import PhoneNumberError, normalize
from smsbot.sms.zones import UnknownTimeZoneError, iana_zone
from smsbot.store.models import contact_fields_t, contact_groups_t, contacts_t
from smsbot.store.upsert import insert_on_conflict
from smsbot.workspaces import DEFAULT

MAX_GROUPS = 100  # group names in one request
MAX_TEXT = 1_000  # characters in one text field value
_JOIN = insert_on_conflict(contact_groups_t, ["contact_id", "name"])
_NEW_FIELD = insert_on_conflict(contact_fields_t, ["workspace", "name"])


class ContactInputError(ValueError):
    """A request value that cannot be stored; names the field (answered 400)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


class ContactNotFoundError(LookupError):
    """No contact has this phone (answered 404)."""


class ContactExistsError(ValueError):
    """A contact with this phone exists already (answered 409)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Search:
    """A page of contacts: filters, where the last page ended, and how many."""

    workspace: str = DEFAULT
    phone: str | None = None
    name: str | None = None  # contained in the name, any case
    group: str | None = None
    field: str | None = None
    value: str | None = None  # the field's value, written as in a CSV cell
    after: int | None = None  # the cursor: the last id of the previous page
    limit: int = 100


def phone_of(raw: str, region: str, field: str = "phone") -> str:
    """`raw` in E.164, or ContactInputError naming `field`."""
    try:
        return normalize(raw, region)
    except PhoneNumberError as exc:
        raise ContactInputError(field, str(exc)) from None


def _rows_json(conn: Connection, rows: list[Any]) -> list[dict[str, Any]]:
    groups: dict[int, list[str]] = {r.id: [] for r in rows}
    if rows:
        g = contact_groups_t
        found = conn.execute(
            select(g.c.contact_id, g.c.name)
            .where(g.c.contact_id.in_(list(groups)))
            .order_by(g.c.name)
        )
        for contact_id, name in found.all():
            groups[contact_id].append(name)
    return [
        {
            "phone": r.phone,
            "name": r.name,
            "language": r.language,
            "timezone": r.timezone,
            "fields": r.fields or {},
            "groups": groups[r.id],
            "created_at": r.created_at.isoformat(),
            "updated_at": r.updated_at.isoformat() if r.updated_at else None,
        }
        for r in rows
    ]


def _key(phone: str, workspace: str) -> list[ColumnElement[bool]]:
    return [contacts_t.c.workspace == workspace, contacts_t.c.phone == phone]


def get(conn: Connection, phone: str, workspace: str = DEFAULT) -> dict[str, Any]:
    """The contact of `workspace` with `phone` (E.164) as JSON, or ContactNotFoundError."""
    rows = conn.execute(select(contacts_t).where(*_key(phone, workspace))).all()
    if not rows:
        raise ContactNotFoundError(phone)
    return _rows_json(conn, list(rows))[0]


def _field_match(conn: Connection, field: str, value: str, workspace: str) -> ColumnElement[bool]:
    kind = field_types(conn, workspace).get(field)
    if kind is None:
        raise ContactInputError("field", f"no contact field is named {field!r}")
    try:
        typed = parse_field(field, kind, value)
    except FieldTypeError as exc:
        raise ContactInputError("value", str(exc)) from None
    stored = contacts_t.c.fields[field]
    match: ColumnElement[bool]
    if typed is None:  # an empty value: contacts that have the field at all
        match = stored.as_string().is_not(None)
    elif kind in ("number", "boolean"):
        cell: Any = stored.as_float() if kind == "number" else stored.as_boolean()
        if conn.dialect.name == "postgresql":
            # PostgreSQL's cast fails the whole query on a value stored before the field had
            # this type (text in a field smsbot.toml later declared a number): skip those.
            json_type = "number" if kind == "number" else "boolean"
            cell = case((func.json_typeof(stored) == json_type, cell))
        match = cell == typed
    else:  # text, and datetimes stored as ISO text in UTC (encode): compared as stored
        match = stored.as_string() == encode(typed)
    return match


def search(conn: Connection, q: Search) -> tuple[list[dict[str, Any]], int | None]:
    """One page of contacts in id order and the cursor of the next page (None: the last)."""
    c = contacts_t
    where: list[ColumnElement[bool]] = [c.c.workspace == q.workspace]
    if q.after is not None:
        where.append(c.c.id > q.after)
    if q.phone is not None:
        where.append(c.c.phone == q.phone)
    if q.name:
        where.append(func.lower(c.c.name).contains(q.name.lower(), autoescape=True))
    if q.group is not None:
        members = select(contact_groups_t.c.contact_id).where(contact_groups_t.c.name == q.group)
        where.append(c.c.id.in_(members))
    if q.field is not None:
        where.append(_field_match(conn, q.field, q.value or "", q.workspace))
    elif q.value is not None:
        raise ContactInputError("value", "give the field it is a value of in 'field'")
    stmt = select(c).where(*where).order_by(c.c.id).limit(q.limit + 1)
    rows = list(conn.execute(stmt).all())
    cursor = rows[q.limit - 1].id if len(rows) > q.limit else None
    return _rows_json(conn, rows[: q.limit]), cursor


def _typed_fields(
    conn: Connection, given: Mapping[str, Any], now: dt.datetime, workspace: str
) -> dict[str, Any | None]:
    """Check `given` against `workspace`'s declared types (declaring new fields there); None
    clears a field."""
    types = field_types(conn, workspace)
    out: dict[str, Any | None] = {}
    for name, value in given.items():
        where = f"fields.{name}"
        try:
            check_field_name(name)
        except FieldTypeError as exc:
            raise ContactInputError(where, str(exc)) from None
        if value is None:
            out[name] = None
            continue
        if isinstance(value, str) and len(value) > MAX_TEXT:
            raise ContactInputError(where, f"is longer than {MAX_TEXT} characters")
        if not isinstance(value, str | int | float | bool):
            raise ContactInputError(where, "must be text, a number, true/false or null")
        kind = types.get(name)
        if kind is None:
            kind = infer_type(value)
            new = {"workspace": workspace, "name": name, "type": kind, "created_at": now}
            conn.execute(_NEW_FIELD, [new])
            types[name] = kind
        try:
            if kind == "datetime" and isinstance(value, str):
                out[name] = encode(parse_field(name, kind, value))
            else:
                out[name] = encode(check_value(name, kind, value))
        except FieldTypeError as exc:
            raise ContactInputError(where, str(exc)) from None
    return out


def _groups(value: object, field: str) -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_GROUPS:
        raise ContactInputError(field, f"must be a list of at most {MAX_GROUPS} group names")
    names = []
    for item in value:
        if not isinstance(item, str) or not item.strip() or len(item) > 100:
            raise ContactInputError(field, "each group name is text of 1 to 100 characters")
        names.append(item.strip())
    return names


def _zone(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return iana_zone(value).key
    except UnknownTimeZoneError as exc:
        raise ContactInputError("timezone", str(exc)) from None


def create(
    conn: Connection,
    body: Mapping[str, Any],
    region: str,
    now: dt.datetime,
    workspace: str = DEFAULT,
) -> str:
    """Insert a contact of `workspace` from a checked request body; return its phone (E.164)."""
    phone = phone_of(body["phone"], region)
    if conn.execute(select(contacts_t.c.id).where(*_key(phone, workspace))).first():
        raise ContactExistsError(phone)
    # None (and empty text) means no value; false and 0 are values
    typed = _typed_fields(conn, body.get("fields", {}), now, workspace)
    fields = {k: v for k, v in typed.items() if v is not None and v != ""}
    groups = _groups(body.get("groups", []), "groups")
    contact_id = conn.execute(
        insert(contacts_t)
        .values(
            workspace=workspace,
            phone=phone,
            name=body.get("name") or None,
            language=body.get("language") or None,
            timezone=_zone(body.get("timezone")),
            fields=fields,
            created_at=now,
            updated_at=now,
        )
        .returning(contacts_t.c.id)
    ).scalar_one()
    if groups:
        conn.execute(
            _JOIN, [{"contact_id": contact_id, "name": g, "created_at": now} for g in groups]
        )
    return phone


def change(
    conn: Connection,
    phone: str,
    body: Mapping[str, Any],
    now: dt.datetime,
    workspace: str = DEFAULT,
) -> None:
    """Apply a checked partial update: "" clears a text setting, a null field is removed."""
    row = conn.execute(select(contacts_t).where(*_key(phone, workspace))).first()
    if row is None:
        raise ContactNotFoundError(phone)
    values: dict[str, Any] = {"updated_at": now}  # group changes count as changes too
    for key in ("name", "language"):
        if key in body:
            values[key] = body[key] or None
    if "timezone" in body:
        values["timezone"] = _zone(body["timezone"])
    if "fields" in body:
        merged = dict(row.fields or {})
        for name, value in _typed_fields(conn, body["fields"], now, workspace).items():
            if value is None:
                merged.pop(name, None)
            else:
                merged[name] = value
        values["fields"] = merged
    add = _groups(body.get("groups_add", []), "groups_add")
    remove = _groups(body.get("groups_remove", []), "groups_remove")
    conn.execute(update(contacts_t).where(contacts_t.c.id == row.id).values(**values))
    if add:
        conn.execute(_JOIN, [{"contact_id": row.id, "name": g, "created_at": now} for g in add])
    if remove:
        g = contact_groups_t
        conn.execute(delete(g).where(g.c.contact_id == row.id, g.c.name.in_(remove)))
