"""The OpenAPI 3.1 document of the operator API, served at GET /api/openapi.json.

Built from the same declarations the server checks requests with (schema.py), with a start route
per loaded flow, so the document describes this deployment and cannot allow what it refuses.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from smsbot.app.server.api_contacts import CHANGE, CREATE, GROUP, SEARCH
from smsbot.app.server.schema import (
    CONVERSATIONS,
    IDEMPOTENCY_KEY,
    MESSAGE,
    SKIP_INVALID,
    START_MANY_POLICY,
    WORKSPACE,
    start_body,
)
from smsbot.engine.flow import Flow

_ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "field": {"type": "string"}},
    "required": ["error"],
}
_QUEUED_FIELDS: dict[str, Any] = {
    "status": {"type": "string", "enum": ["queued", "duplicate", "conflict"]},
    "to": {"type": "string"},
    "from": {"type": "string"},
}
_QUEUED = {"type": "object", "properties": _QUEUED_FIELDS, "required": list(_QUEUED_FIELDS)}
_SENT = {
    "type": "object",
    "properties": {
        **_QUEUED_FIELDS,
        "segments": {"type": "integer", "minimum": 1},
        "encoding": {"type": "string", "enum": ["GSM-7", "UCS-2"]},
        "warning": {"type": "string", "description": "over SMSBOT_MAX_SEGMENTS, sent anyway"},
    },
    "required": ["status", "to", "from", "segments", "encoding"],
}
_STARTED = {
    "type": "object",
    "properties": {
        "started": {"type": "integer"},
        "skipped_opted_out": {"type": "integer"},
        "duplicates": {"type": "integer"},
        "invalid": {"type": "array", "items": {"type": "object"}},
    },
    "required": ["started", "skipped_opted_out", "duplicates", "invalid"],
}
_ERRORS = {
    "400": "bad input; `field` names the field",
    "401": "missing or wrong bearer credential",
    "403": "a workspace credential named another workspace in ?workspace=",
    "404": "no such flow or template, or this server runs no flows",
    "408": "the body took longer than SMSBOT_BODY_TIMEOUT to arrive",
    "409": "the recipient opted out (texted STOP)",
    "413": "the body is larger than SMSBOT_MAX_BODY_BYTES",
}


def _responses(ok: str, ok_schema: Mapping[str, Any], *errors: str) -> dict[str, Any]:
    err = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    answers: dict[str, Any] = {
        ok: {"description": "done", "content": {"application/json": {"schema": ok_schema}}}
    }
    answers.update({code: {"description": _ERRORS[code], **err} for code in errors})
    return answers


def _json_body(schema: Mapping[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


_WRITE = ("400", "401", "404", "408", "409", "413")


def _row_schema_name(flow: type[Flow]) -> str:
    return f"{flow.name}.StartRow"


def _flow_paths(flow: type[Flow]) -> dict[str, Any]:
    # Any list is a valid request: a row that does not fit the row schema is reported in
    # `invalid` (400, or skipped with ?skip_invalid=true), so the items themselves are open.
    row = {
        "description": "a row like #/components/schemas/"
        f"{_row_schema_name(flow)}; one that is not is listed in `invalid`"
    }
    return {
        f"/api/flows/{flow.name}/start": {
            "post": {
                "summary": f"Start flow {flow.name!r} for one recipient",
                "parameters": [IDEMPOTENCY_KEY.parameter("header")],
                "requestBody": _json_body(start_body(flow).schema()),
                "responses": _responses("202", _QUEUED, *_WRITE),
            }
        },
        f"/api/flows/{flow.name}/start-many": {
            "post": {
                "summary": f"Start flow {flow.name!r} for many recipients (JSON list or CSV)",
                "description": "Every row is checked first; with any bad row nothing starts "
                "unless ?skip_invalid=true. CSV: a header row with `to`, optional `from`; every "
                "other column goes into data. Opted-out phones are skipped and counted.",
                "parameters": [
                    SKIP_INVALID.parameter("query"),
                    START_MANY_POLICY.parameter("query"),
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"type": "array", "items": row}},
                        "text/csv": {"schema": {"type": "string"}},
                    },
                },
                "responses": _responses("202", _STARTED, "400", "401", "404", "408", "413"),
            }
        },
    }


def _any_flow_paths(names: list[str]) -> dict[str, Any]:
    """/api/flows/{name}/…: the same routes for a flow named in the path, for generic clients."""
    name = {"name": "name", "in": "path", "required": True, "schema": {"enum": names}}
    paths = {}
    for route, item in _flow_paths(_AnyFlow).items():
        operation = copy.deepcopy(item["post"])
        operation["summary"] = operation["summary"].replace("flow '{name}'", "a flow")
        operation["parameters"] = [name, *operation["parameters"]]
        paths[route] = {"post": operation}
    return paths


class _AnyFlow(Flow):
    """Stands for whichever flow the path names: its data is described on its own routes."""

    name = "{name}"


_CONTACT = {
    "type": "object",
    "properties": {
        "phone": {"type": "string"},
        "name": {"type": ["string", "null"]},
        "language": {"type": ["string", "null"]},
        "timezone": {"type": ["string", "null"]},
        "fields": {"type": "object"},
        "groups": {"type": "array", "items": {"type": "string"}},
        "created_at": {"type": "string"},
        "updated_at": {"type": ["string", "null"]},
    },
    "required": ["phone", "fields", "groups"],
}
_PAGE = {
    "type": "object",
    "properties": {
        "contacts": {"type": "array", "items": _CONTACT},
        "next": {"type": ["string", "null"], "description": "pass as `after` for the next page"},
    },
    "required": ["contacts", "next"],
}
_IMPORTED = {
    "type": "object",
    "properties": {
        "imported": {"type": "integer"},
        "bad_rows": {"type": "integer"},
        "bad": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"line": {"type": "integer"}, "reason": {"type": "string"}},
            },
            "description": "the first 1,000 bad rows: line number in the CSV and why",
        },
        "new_fields": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["imported", "bad_rows", "bad", "new_fields"],
}
_ERASED = {
    "type": "object",
    "properties": {"phone": {"type": "string"}, "erased": {"type": "object"}},
    "required": ["phone", "erased"],
}


def _contacts_paths() -> dict[str, Any]:
    phone = {"name": "phone", "in": "path", "required": True, "schema": SEARCH[0].schema}
    csv = {"text/csv": {"schema": {"type": "string"}}}
    return {
        "/api/campaigns": {
            "get": {
                "summary": "The campaigns declared beside the flows, and their fires by state",
                "description": "As `smsbot campaigns --json`; see docs/campaigns.md.",
                "responses": _responses("200", {"type": "object"}, "401"),
            }
        },
        "/api/contacts": {
            "get": {
                "summary": "Search contacts, a page at a time (in the order they were created)",
                "description": "Filters combine. `next` is null on the last page; otherwise"
                " pass it as `after` to get the next one. Contacts added meanwhile appear on"
                " a later page; none is skipped or repeated.",
                "parameters": [f.parameter("query") for f in SEARCH],
                "responses": _responses("200", _PAGE, "400", "401"),
            },
            "post": {
                "summary": "Create a contact",
                "requestBody": _json_body(CREATE.schema()),
                "responses": _responses("201", _CONTACT, "400", "401", "408", "409", "413"),
            },
        },
        "/api/contacts/import": {
            "post": {
                "summary": "Import contacts from CSV (as `smsbot contacts import`), streamed",
                "description": "Upserts by phone; every bad row is reported with its line"
                " number and the rest are imported. Columns as in docs/contacts.md.",
                "parameters": [GROUP.parameter("query")],
                "requestBody": {"required": True, "content": csv},
                "responses": _responses("200", _IMPORTED, "400", "401", "408", "413"),
            }
        },
        "/api/contacts/export": {
            "get": {
                "summary": "Every contact (of ?group=) as CSV, streamed",
                "parameters": [GROUP.parameter("query")],
                "responses": _responses("200", {}, "400", "401")
                | {"200": {"description": "the CSV", "content": csv}},
            }
        },
        "/api/contacts/{phone}": {
            "get": {
                "summary": "One contact, with its fields and groups",
                "parameters": [phone],
                "responses": _responses("200", _CONTACT, "400", "401", "404"),
            },
            "patch": {
                "summary": "Change a contact: only what the body names",
                "parameters": [phone],
                "requestBody": _json_body(CHANGE.schema()),
                "responses": _responses("200", _CONTACT, "400", "401", "404", "408", "413"),
            },
            "delete": {
                "summary": "Erase everything stored about a phone; an earlier STOP still holds",
                "parameters": [phone],
                "responses": _responses("200", _ERASED, "400", "401"),
            },
        },
        "/api/contacts/{phone}/data": {
            "get": {
                "summary": "Everything stored about a phone, as JSON (a data-subject export)",
                "parameters": [phone],
                "responses": _responses("200", {"type": "object"}, "400", "401"),
            }
        },
    }


def _scoped(paths: dict[str, Any]) -> None:
    """Every operation takes ?workspace=, and may answer 400, 401 or 403 for it."""
    errors = _responses("200", {}, "400", "401", "403")
    del errors["200"]
    for item in paths.values():
        for operation in item.values():
            operation["parameters"] = [
                *operation.get("parameters", []),
                WORKSPACE.parameter("query"),
            ]
            operation["responses"] = {**errors, **operation["responses"]}


def build_openapi(flows: Mapping[str, type[Flow]]) -> dict[str, Any]:
    """The document for a server running `flows` (none with --echo)."""
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {"Error": _ERROR}
    for name in sorted(flows):
        paths.update(_flow_paths(flows[name]))
        schemas[_row_schema_name(flows[name])] = start_body(flows[name], row=True).schema()
    if flows:
        paths.update(_any_flow_paths(sorted(flows)))
    paths["/api/messages"] = {
        "post": {
            "summary": "Send one message (plain text or a template)",
            "parameters": [IDEMPOTENCY_KEY.parameter("header")],
            "requestBody": _json_body(MESSAGE.schema()),
            "responses": _responses("202", _SENT, *_WRITE),
        }
    }
    if flows:
        paths["/api/flows/{name}/results"] = {
            "get": {
                "summary": "A flow's results over a period (the console's Results page)",
                "description": "Conversations the flow started from `from` to `to` (whole days "
                "in SMSBOT_DEFAULT_TIMEZONE; default the last 30): how they ended or where they "
                "are now, delivery outcomes of their messages, replies per day.",
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": {"enum": sorted(flows)},
                    },
                    {"name": "from", "in": "query", "schema": {"type": "string", "format": "date"}},
                    {"name": "to", "in": "query", "schema": {"type": "string", "format": "date"}},
                ],
                "responses": _responses("200", {"type": "object"}, "400", "401", "404"),
            }
        }
    paths["/api/conversations"] = {
        "get": {
            "summary": "A phone's conversations: state, data, messages and their statuses",
            "parameters": [CONVERSATIONS.parameter("query")],
            "responses": _responses("200", {"type": "object"}, "400", "401"),
        }
    }
    paths.update(_contacts_paths())
    _scoped(paths)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "smsbot operator API",
            "version": "1",
            "description": "Start flows, send messages and read conversations. Every request"
            " needs `Authorization: Bearer <credential>`: the admin key SMSBOT_API_KEY, a"
            " workspace key (`smsbot keys create`) or an OAuth 2.0 access token from POST"
            " /oauth/token (client credentials: the key's id and the key). Every request acts in"
            " one workspace (`?workspace=`) and sees nothing of another. Writes are queued and"
            " answered 202; an `Idempotency-Key` header makes a retried request a no-op. No"
            " string anywhere in a body may contain U+0000 or a lone surrogate (the database"
            " cannot store them): such a request is a 400 naming where.",
        },
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "SMSBOT_API_KEY (every workspace), or a workspace key",
                },
                "oauth2": {
                    "type": "oauth2",
                    "description": "client credentials: client_id is a workspace key's id,"
                    " client_secret the key; tokens last 15 minutes",
                    "flows": {"clientCredentials": {"tokenUrl": "/oauth/token", "scopes": {}}},
                },
            },
            "schemas": schemas,
        },
        "security": [{"bearer": []}, {"oauth2": []}],
        "paths": paths,
    }
