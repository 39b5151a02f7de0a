"""The OpenAPI 3.1 document of the operator API, served at GET /api/openapi.json."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from smsbot.engine.flow import Flow
from smsbot.engine.startdata import start_data_schema

_ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "field": {"type": "string"}},
    "required": ["error"],
}
_QUEUED = {
    "type": "object",
    "properties": {
        "status": {"type": "string", "enum": ["queued", "duplicate", "conflict"]},
        "to": {"type": "string"},
        "from": {"type": "string"},
    },
}
_PHONE = {"type": "string", "description": "E.164, or a national number in SMSBOT_DEFAULT_REGION"}


def _responses(ok: str, ok_schema: dict[str, Any]) -> dict[str, Any]:
    err = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return {
        ok: {"description": "accepted", "content": {"application/json": {"schema": ok_schema}}},
        "400": {"description": "bad input; `field` names the field", **err},
        "401": {"description": "missing or wrong bearer token", **err},
        "404": {"description": "no such flow", **err},
        "409": {"description": "the recipient opted out (texted STOP)", **err},
    }


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


_START = {
    "type": "object",
    "required": ["to"],
    "properties": {
        "to": _PHONE,
        "from": {
            "type": "string",
            "description": "virtual number; SMSBOT_DEFAULT_SENDER if absent",
        },
        "data": {"type": "object", "description": "the conversation's initial data"},
        "policy": {"type": "string", "enum": ["interrupt", "reject"], "default": "interrupt"},
    },
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "smsbot operator API",
        "version": "1",
        "description": "Start flows, send messages and read conversations. Every request needs "
        "`Authorization: Bearer <SMSBOT_API_KEY>`. Writes are queued and answered 202; an "
        "`Idempotency-Key` header makes a retried request a no-op.",
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {"Error": _ERROR},
    },
    "security": [{"bearer": []}],
    "paths": {
        "/api/flows/{name}/start": {
            "post": {
                "summary": "Start a flow for one recipient",
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "requestBody": _body(_START),
                "responses": _responses("202", _QUEUED),
            }
        },
        "/api/flows/{name}/start-many": {
            "post": {
                "summary": "Start a flow for many recipients (JSON list or CSV upload)",
                "description": "Every row is validated first; with any bad row nothing starts "
                "unless ?skip_invalid=true. CSV: a header row with `to`, optional `from`; other "
                "columns become data. Opted-out phones are skipped and counted.",
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"name": "skip_invalid", "in": "query", "schema": {"type": "boolean"}},
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"type": "array", "items": _START}},
                        "text/csv": {"schema": {"type": "string"}},
                    },
                },
                "responses": _responses(
                    "202",
                    {
                        "type": "object",
                        "properties": {
                            "started": {"type": "integer"},
                            "skipped_opted_out": {"type": "integer"},
                            "duplicates": {"type": "integer"},
                            "invalid": {"type": "array", "items": {"type": "object"}},
                        },
                    },
                ),
            }
        },
        "/api/flows/{name}/results": {
            "get": {
                "summary": "A flow's results over a period (the console's Results page)",
                "description": "Conversations the flow started from `from` to `to` (whole days "
                "in SMSBOT_DEFAULT_TIMEZONE; default the last 30): how they ended or where they "
                "are now, delivery outcomes of their messages, replies per day.",
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"name": "from", "in": "query", "schema": {"type": "string", "format": "date"}},
                    {"name": "to", "in": "query", "schema": {"type": "string", "format": "date"}},
                ],
                "responses": _responses("200", {"type": "object"}),
            }
        },
        "/api/messages": {
            "post": {
                "summary": "Send one message (plain text or a template)",
                "requestBody": _body(
                    {
                        "type": "object",
                        "required": ["to"],
                        "properties": {
                            "to": _PHONE,
                            "from": {"type": "string"},
                            "text": {"type": "string"},
                            "template": {
                                "type": "string",
                                "description": "e.g. keywords/hours.txt",
                            },
                            "data": {"type": "object"},
                        },
                    }
                ),
                "responses": _responses("202", _QUEUED),
            }
        },
        "/api/conversations": {
            "get": {
                "summary": "A phone's conversations: state, data, messages and their statuses",
                "parameters": [
                    {"name": "phone", "in": "query", "required": True, "schema": {"type": "string"}}
                ],
                "responses": _responses("200", {"type": "object"}),
            }
        },
    },
}


def openapi_document(flows: Mapping[str, type[Flow]]) -> dict[str, Any]:
    """OPENAPI plus, per loaded flow, its start routes with `data` described by its start_data."""
    document = copy.deepcopy(OPENAPI)
    for name, cls in sorted(flows.items()):
        data = start_data_schema(cls.start_data)
        for route in ("start", "start-many"):
            item = copy.deepcopy(OPENAPI["paths"][f"/api/flows/{{name}}/{route}"])
            for operation in item.values():
                operation["summary"] += f": {name}"
                operation["parameters"] = [
                    p for p in operation.get("parameters", []) if p.get("in") != "path"
                ]
                _set_data(operation["requestBody"], data)
            document["paths"][f"/api/flows/{name}/{route}"] = item
    return document


def _set_data(node: Any, data: dict[str, Any]) -> None:
    """Replace every `data` property under `node` (a request body) with the flow's schema."""
    if isinstance(node, dict):
        for child in node.values():
            _set_data(child, data)
        if isinstance(node.get("properties"), dict) and "data" in node["properties"]:
            node["properties"]["data"] = data
    elif isinstance(node, list):
        for child in node:
            _set_data(child, data)
