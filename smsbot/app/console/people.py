"""Contacts and opt-outs: search contacts by phone, name, group or a custom field's value; each
contact's typed fields and groups (engine/contact.py); the opt-out list every STOP adds; one
contact's page. All of it within the session's workspace: contacts and opt-outs are per
workspace (a STOP to one client's number does not silence another's).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from aiohttp import web
from sqlalchemy import ColumnElement, or_, select

from smsbot.app.console import scope
from smsbot.app.console.render import render, when
from smsbot.app.server.keys import BOT
from smsbot.engine.contact import FieldTypeError, decode, parse_field
from smsbot.store.engine import Database
from smsbot.store.models import (
    contact_fields_t,
    contact_groups_t,
    contacts_t,
    conversations_t,
    opt_outs_t,
)

MAX_SEARCH = 100
LIMIT = 100  # contacts and opt-outs shown, newest first
CHOICES = 200  # groups offered in the filter


@dataclasses.dataclass(frozen=True, slots=True)
class PeopleFilter:
    """The page's search: text in the phone or name, a group, a field and its value."""

    search: str = ""
    group: str = ""
    field: str = ""
    value: str = ""


@dataclasses.dataclass(slots=True)
class Person:
    """One contact as the page shows it: its row, its fields (typed, as text) and groups."""

    row: Any
    fields: list[tuple[str, str, str]]  # (name, type, value shown)
    groups: list[str]


def shown(kind: str | None, stored: Any) -> str:
    """A stored field value as text: dates in UTC, booleans as yes/no."""
    value = decode(kind, stored)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dt.datetime):
        return when(value)
    return str(value)


def field_condition(name: str, kind: str, text: str) -> ColumnElement[bool]:
    """SQL: the contact's field `name` (of type `kind`) matches `text`; empty text: it is set.

    Text and dates match what they contain (any case); numbers and booleans match exactly.
    FieldTypeError names the field and the form a value of its type takes.
    """
    column: Any = contacts_t.c.fields[name]
    value = parse_field(name, kind, text)
    condition: ColumnElement[bool]
    if value is None:
        condition = column.as_string().is_not(None)
    elif kind == "number":
        condition = column.as_float() == value
    elif kind == "boolean":
        condition = column.as_boolean() == value
    else:
        condition = column.as_string().icontains(text.strip(), autoescape=True)
    return condition


async def people(
    db: Database, workspace: str, f: PeopleFilter, types: dict[str, str]
) -> tuple[list[Person], list[Any]]:
    """The workspace's contacts matching every part of `f`, and its opt-outs whose phone
    contains f.search."""
    c, g, o = contacts_t, contact_groups_t, opt_outs_t
    contacts = select(c).where(c.c.workspace == workspace).order_by(c.c.id.desc()).limit(LIMIT)
    opt_outs = select(o).where(o.c.workspace == workspace).order_by(o.c.id.desc()).limit(LIMIT)
    if f.search:
        contacts = contacts.where(
            or_(
                c.c.phone.contains(f.search, autoescape=True),
                c.c.name.icontains(f.search, autoescape=True),
            )
        )
        opt_outs = opt_outs.where(opt_outs_t.c.phone.contains(f.search, autoescape=True))
    if f.group:
        contacts = contacts.where(c.c.id.in_(select(g.c.contact_id).where(g.c.name == f.group)))
    if f.field:
        contacts = contacts.where(field_condition(f.field, types[f.field], f.value))
    async with db.session() as s:
        rows = (await s.execute(contacts)).all()
        groups: dict[int, list[str]] = {}
        ids = [r.id for r in rows]
        if ids:
            found = select(g.c.contact_id, g.c.name).where(g.c.contact_id.in_(ids))
            for contact_id, name in await s.execute(found.order_by(g.c.name)):
                groups.setdefault(contact_id, []).append(name)
        opted = list((await s.execute(opt_outs)).all())
    found_people = [
        Person(
            r,
            _fields(r, types),
            groups.get(r.id, []),
        )
        for r in rows
    ]
    return found_people, opted


async def field_types(db: Database, workspace: str) -> dict[str, str]:
    """Every custom field `workspace` declared, and its type (no other workspace's)."""
    f = contact_fields_t
    async with db.session() as s:
        found = await s.execute(select(f.c.name, f.c.type).where(f.c.workspace == workspace))
        return dict(sorted(found.tuples()))


async def group_names(db: Database, workspace: str) -> list[str]:
    """The groups the workspace's contacts are in (for the filter's choices)."""
    g, c = contact_groups_t, contacts_t
    query = (
        select(g.c.name)
        .join(c, c.c.id == g.c.contact_id)
        .where(c.c.workspace == workspace)
        .distinct()
        .order_by(g.c.name)
    )
    async with db.session() as s:
        return list((await s.execute(query.limit(CHOICES))).scalars())


async def person(
    db: Database, workspace: str, phone: str | None = None, contact_id: int | None = None
) -> Person | None:
    """The workspace's contact with this phone (or id), its fields and groups; None if it has
    none (another workspace's contact is none of its)."""
    types = await field_types(db, workspace)
    c = contacts_t
    found = select(c).where(c.c.workspace == workspace)
    found = (
        found.where(c.c.phone == phone) if contact_id is None else found.where(c.c.id == contact_id)
    )
    async with db.session() as s:
        row = (await s.execute(found)).first()
        if row is None:
            return None
        g = contact_groups_t
        query = select(g.c.name).where(g.c.contact_id == row.id).order_by(g.c.name)
        groups = list((await s.execute(query)).scalars())
    return Person(row, _fields(row, types), groups)


def _fields(row: Any, types: dict[str, str]) -> list[tuple[str, str, str]]:
    items = sorted(row.fields.items())
    return [(k, types.get(k, "text"), shown(types.get(k), v)) for k, v in items]


def _filter(request: web.Request, types: dict[str, str]) -> tuple[PeopleFilter, list[str]]:
    q = request.query
    f = PeopleFilter(
        search=q.get("search", "").strip()[:MAX_SEARCH],
        group=q.get("group", "").strip()[:MAX_SEARCH],
        field=q.get("field", "").strip()[:MAX_SEARCH],
        value=q.get("value", "").strip()[:MAX_SEARCH],
    )
    problems = []
    if f.field and f.field not in types:
        known = ", ".join(types) or "none yet (smsbot contacts import declares them)"
        problems.append(f"Field: no custom field named {f.field!r}; the fields are {known}")
    elif f.field:
        try:
            parse_field(f.field, types[f.field], f.value)
        except FieldTypeError as exc:
            problems.append(f"Value: {exc}")
    elif f.value:
        problems.append("Value: pick the field it is a value of")
    return f, problems


async def people_page(request: web.Request) -> web.Response:
    """GET /console/people?search=&group=&field=&value=: contacts, their fields and groups,
    and the opt-outs."""
    db, workspace = request.config_dict[BOT].db, scope.workspace_name(request)
    types = await field_types(db, workspace)
    f, problems = _filter(request, types)
    contacts: list[Person] = []
    opt_outs: list[Any] = []
    if not problems:
        contacts, opt_outs = await people(db, workspace, f, types)
    return render(
        request,
        "people.html",
        status=400 if problems else 200,
        f=f,
        problems=problems,
        filtering=bool(f.search or f.group or f.field),
        contacts=contacts,
        opt_outs=opt_outs,
        types=types,
        groups=await group_names(db, workspace),
    )


async def contact_page(request: web.Request) -> web.Response:
    """GET /console/people/{id}: one contact, its fields, groups, conversations and opt-outs."""
    db, workspace = request.config_dict[BOT].db, scope.workspace_name(request)
    text = request.match_info["id"]
    found = None
    if text.isdecimal() and len(text) < 18:
        found = await person(db, workspace, contact_id=int(text))
    if found is None:
        raise web.HTTPNotFound(reason=f"no contact #{text}: pick one from the list")
    c, o = conversations_t, opt_outs_t
    phone = found.row.phone
    async with db.session() as s:
        convos = await s.execute(
            select(c)
            .where(c.c.phone == phone, c.c.workspace == workspace)
            .order_by(c.c.last_activity_at.desc().nulls_last(), c.c.id.desc())
            .limit(LIMIT)
        )
        opted = await s.execute(
            select(o).where(o.c.phone == phone, o.c.workspace == workspace).order_by(o.c.id)
        )
        conversations, opt_outs = list(convos.all()), list(opted.all())
    return render(request, "contact.html", p=found, conversations=conversations, opt_outs=opt_outs)


def add_routes(router: web.UrlDispatcher) -> None:
    """Register this module's pages."""
    router.add_get("/people", people_page)
    router.add_get("/people/{id}", contact_page)
