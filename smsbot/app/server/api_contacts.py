"""The operator API's contacts (create, read, update, erase, search, CSV import and export)
and the campaigns timed from them, each within the request's workspace (scope.py).

Reads and single-contact writes run through the bot's database (its writer on SQLite). The CSV
import spools the request body to a temporary file as it arrives (constant memory, bounded in
size and in time per chunk) and then runs the same streaming importer as `smsbot contacts
import`; export writes the CSV to a temporary file and streams it out. Both, and erasure, run in
a worker thread on a synchronous engine, so the event loop never waits for them.
"""

from __future__ import annotations

import asyncio
import functools
import io
import tempfile
from collections.abc import Awaitable, Callable
from typing import IO, Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from sqlalchemy import Engine, create_engine, pool

from smsbot.app import contacts_ops as ops
from smsbot.app.contacts_erase import erase, subject_data
from smsbot.app.contacts_io import ContactsError, export_csv, import_file
from smsbot.app.server import scope
from smsbot.app.server.bodies import read_json
from smsbot.app.server.keys import BOT
from smsbot.app.server.responses import problem
from smsbot.app.server.schema import PHONE, Body, Field
from smsbot.engine.runtime import FlowRuntime
from smsbot.pipeline.bot import Bot

MAX_IMPORT_BYTES = 1 << 30  # 1 GiB of CSV (some 10 million rows): split a larger file
MAX_BAD_SHOWN = 1_000  # bad rows listed in an import's answer (all are counted)
CHUNK = 1 << 16


class _EngineHolder:
    """The synchronous engine of the worker-thread jobs, made on first use (settings known)."""

    engine: Engine | None = None


_ENGINE = web.AppKey("contacts_engine", _EngineHolder)


def _string(**schema: Any) -> dict[str, Any]:
    return {"type": "string", **schema}


_FIELD_NAME = r"^[a-z][a-z0-9_]{0,63}$"
FIELDS = {
    "type": "object",
    "description": "custom fields by name; a new name takes the type of its first value;"
    " a datetime is ISO 8601 text; on update, null removes the field",
    "propertyNames": {"pattern": _FIELD_NAME},
    "additionalProperties": {"type": ["string", "number", "boolean", "null"], "maxLength": 1000},
}


def _groups_schema(what: str) -> dict[str, Any]:
    return {
        "type": "array",
        "maxItems": ops.MAX_GROUPS,
        "items": {"type": "string", "minLength": 1, "maxLength": 100, "pattern": r"\S"},
        "description": what,
    }


_NAME = Field("name", _string(maxLength=200, description="'' clears it"))
_LANGUAGE = Field("language", _string(maxLength=16, description="e.g. en, cy; '' clears it"))
_TIMEZONE = Field(
    "timezone",
    _string(maxLength=64, description="an IANA zone such as Europe/London; '' clears it"),
)
CREATE = Body(
    (
        Field("phone", PHONE, required=True),
        _NAME,
        _LANGUAGE,
        _TIMEZONE,
        Field("fields", FIELDS),
        Field("groups", _groups_schema("the groups it belongs to")),
    )
)
CHANGE = Body(
    (
        _NAME,
        _LANGUAGE,
        _TIMEZONE,
        Field("fields", FIELDS),
        Field("groups_add", _groups_schema("groups to add it to")),
        Field("groups_remove", _groups_schema("groups to take it out of")),
    )
)
# Short enough that every parameter at its longest, percent-encoded (up to 12 bytes a character),
# fits aiohttp's 8,190-byte request line; a longer line is refused before it reaches a route.
SEARCH = (
    Field("phone", {**PHONE, "description": "exactly this number (E.164 or national)"}),
    Field(
        "name", _string(minLength=1, maxLength=100, description="contained in the name, any case")
    ),
    Field("group", _string(minLength=1, maxLength=100, description="members of this group")),
    Field("field", _string(pattern=_FIELD_NAME, description="a custom field, with `value`")),
    Field(
        "value",
        _string(maxLength=200, description="the field's value as in a CSV cell; empty: has it"),
    ),
    Field(
        "after",
        _string(pattern=r"^[0-9]{1,18}$", description="the `next` cursor of the previous page"),
        hint="must be the `next` value of a previous page",
    ),
    Field(
        "limit",
        _string(pattern=r"^(1000|[1-9][0-9]{0,2})$", description="contacts per page, 1 to 1000"),
        hint="must be a whole number from 1 to 1000",
    ),
)
GROUP = Field("group", _string(minLength=1, maxLength=100, pattern=r"\S"))


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _answers(handler: Handler) -> Handler:
    """Turn the contact errors into 400 / 404 / 409 answers that say what to fix."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ops.ContactInputError as exc:
            return problem(400, exc.reason, field=exc.field)
        except ops.ContactNotFoundError:
            return problem(404, "no contact has this phone number")
        except ops.ContactExistsError:
            return problem(409, "a contact with this phone number exists: update it with PATCH")
        except ContactsError as exc:
            return problem(400, str(exc))

    return wrapped


def _bot(request: web.Request) -> Bot:
    return request.config_dict[BOT]


def _ws(request: web.Request) -> str:
    return scope.workspace(request).name


def _region(request: web.Request) -> str:
    return scope.workspace(request).default_region


def _phone(request: web.Request) -> str:
    raw = request.match_info["phone"]
    if not 1 <= len(raw) <= 64:
        raise ops.ContactInputError("phone", "must be 1 to 64 characters")
    return ops.phone_of(raw, _region(request))


def _sync_engine(request: web.Request) -> Engine:
    """The engine the worker-thread jobs use (import, export, erase), made on first use."""
    holder = request.app[_ENGINE]
    if holder.engine is None:
        url = _bot(request).settings.sync_database_url
        holder.engine = create_engine(url, poolclass=pool.NullPool)
    return holder.engine


@_answers
async def list_contacts(request: web.Request) -> web.Response:
    """GET /api/contacts: one page of contacts, filtered; `next` is the cursor of the next."""
    q = {f.name: f.check_query(request.query) for f in SEARCH}
    bot = _bot(request)
    phone = q["phone"]
    search = ops.Search(
        workspace=_ws(request),
        phone=ops.phone_of(phone, _region(request)) if isinstance(phone, str) else None,
        name=_text(q["name"]),
        group=_text(q["group"]),
        field=_text(q["field"]),
        value=_text(q["value"]),
        after=int(q["after"]) if isinstance(q["after"], str) else None,
        limit=int(q["limit"]) if isinstance(q["limit"], str) else 100,
    )
    contacts, cursor = await bot.db.read(lambda conn: ops.search(conn, search))
    return web.json_response(
        {"contacts": contacts, "next": str(cursor) if cursor is not None else None}
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


@_answers
async def create_contact(request: web.Request) -> web.Response:
    """POST /api/contacts: a new contact (409 if its phone has one already)."""
    body = CREATE.check(await read_json(request))
    bot = _bot(request)
    now, region, ws = bot.clock.now(), _region(request), _ws(request)

    def write(conn: Any) -> dict[str, Any]:
        return ops.get(conn, ops.create(conn, body, region, now, ws), ws)

    return web.json_response(await bot.db.write(write), status=201)


@_answers
async def get_contact(request: web.Request) -> web.Response:
    """GET /api/contacts/{phone}: one contact with its fields and groups."""
    phone, ws = _phone(request), _ws(request)
    return web.json_response(await _bot(request).db.read(lambda conn: ops.get(conn, phone, ws)))


@_answers
async def change_contact(request: web.Request) -> web.Response:
    """PATCH /api/contacts/{phone}: change what the body names, nothing else."""
    phone = _phone(request)
    body = CHANGE.check(await read_json(request))
    bot = _bot(request)
    now, ws = bot.clock.now(), _ws(request)

    def write(conn: Any) -> dict[str, Any]:
        ops.change(conn, phone, body, now, ws)
        return ops.get(conn, phone, ws)

    return web.json_response(await bot.db.write(write))


@_answers
async def erase_contact(request: web.Request) -> web.Response:
    """DELETE /api/contacts/{phone}: erase everything about the phone; a STOP still holds."""
    phone = _phone(request)
    done = await asyncio.to_thread(erase, _sync_engine(request), phone, _ws(request))
    return web.json_response({"phone": phone, "erased": done})


@_answers
async def contact_data(request: web.Request) -> web.Response:
    """GET /api/contacts/{phone}/data: everything stored about the phone (a subject access)."""
    phone = _phone(request)
    found = await asyncio.to_thread(subject_data, _sync_engine(request), phone, _ws(request))
    return web.json_response(found)


async def _spool(request: web.Request, out: IO[bytes]) -> None:
    """Copy the body to `out` chunk by chunk: bounded in size, and in time per chunk."""
    settings = _bot(request).settings
    size = 0
    try:
        while True:
            async with asyncio.timeout(settings.body_timeout):
                chunk = await request.content.read(CHUNK)
            if not chunk:
                return
            size += len(chunk)
            if size > MAX_IMPORT_BYTES:
                raise web.HTTPRequestEntityTooLarge(max_size=MAX_IMPORT_BYTES, actual_size=size)
            out.write(chunk)
    except TimeoutError:
        raise web.HTTPRequestTimeout(
            reason=f"the body stalled for more than {settings.body_timeout:g} s",
            headers={"Connection": "close"},
        ) from None
    except RequestPayloadError:
        raise web.HTTPBadRequest(reason="the body could not be read or decoded") from None


@_answers
async def import_contacts(request: web.Request) -> web.Response:
    """POST /api/contacts/import: a CSV body, as `smsbot contacts import`; bad rows by line."""
    group = _text(GROUP.check_query(request.query))
    bot = _bot(request)
    settings, now, ws = bot.settings, bot.clock.now(), scope.workspace(request)
    engine = _sync_engine(request)
    with tempfile.TemporaryFile() as spool:
        await _spool(request, spool)
        spool.seek(0)

        def run() -> Any:
            text = io.TextIOWrapper(spool, encoding="utf-8-sig", newline="")
            try:
                return import_file(
                    engine,
                    text,
                    "the body",
                    region=ws.default_region,
                    config_fields=settings.contact_fields,
                    now=now,
                    group=group,
                    workspace=ws.name,
                )
            finally:
                text.detach()

        report = await asyncio.to_thread(run)
    bad = []
    for entry in report.bad[:MAX_BAD_SHOWN]:
        where, _, reason = entry.partition(": ")
        bad.append({"line": int(where.removeprefix("line ")), "reason": reason})
    return web.json_response(
        {
            "imported": report.imported,
            "bad_rows": len(report.bad),
            "bad": bad,
            "new_fields": report.new_fields,
        }
    )


async def export_contacts(request: web.Request) -> web.StreamResponse:
    """GET /api/contacts/export: every contact (of ?group=) as CSV, streamed."""
    group = _text(GROUP.check_query(request.query))  # a FieldError is a 400 (bearer_auth)
    engine = _sync_engine(request)
    with tempfile.TemporaryFile("w+", newline="", encoding="utf-8") as out:
        await asyncio.to_thread(export_csv, engine, out, group, _ws(request))
        out.seek(0)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/csv; charset=utf-8",
                "Content-Disposition": 'attachment; filename="contacts.csv"',
            }
        )
        await response.prepare(request)
        while chunk := await asyncio.to_thread(out.read, CHUNK):
            await response.write(chunk.encode("utf-8"))
        await response.write_eof()
        return response


async def list_campaigns(request: web.Request) -> web.Response:
    """GET /api/campaigns: the declared campaigns and their fires by state (`smsbot campaigns`)."""
    from smsbot.app.campaigns_cli import describe, fire_counts

    bot = _bot(request)
    handler = bot.handler
    declared = handler.campaigns if isinstance(handler, FlowRuntime) else {}
    ws = _ws(request)
    counts = await bot.db.read(lambda conn: fire_counts(conn, ws))
    found = [
        describe(c, counts.get(c.name, {})) for c in sorted(declared.values(), key=lambda c: c.name)
    ]
    return web.json_response({"campaigns": found})


def add_routes(api: web.Application) -> None:
    """Mount the contacts routes on the operator API's application."""
    api.router.add_get("/campaigns", list_campaigns)
    api.router.add_get("/contacts", list_contacts)
    api.router.add_post("/contacts", create_contact)
    api.router.add_get("/contacts/export", export_contacts)
    api.router.add_post("/contacts/import", import_contacts)
    api.router.add_get("/contacts/{phone}", get_contact)
    api.router.add_patch("/contacts/{phone}", change_contact)
    api.router.add_delete("/contacts/{phone}", erase_contact)
    api.router.add_get("/contacts/{phone}/data", contact_data)
    api[_ENGINE] = _EngineHolder()
    api.on_cleanup.append(_dispose)


async def _dispose(app: web.Application) -> None:
    if (engine := app[_ENGINE].engine) is not None:
        engine.dispose()
