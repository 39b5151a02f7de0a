"""A flow's start data as JSON Schema (OpenAPI 3.1), from the declaration startdata.py checks."""

from __future__ import annotations

import datetime as dt
from typing import Any

from smsbot.engine.startdata import TIMEZONE, Length, StartField, start_fields


def start_data_schema(declaration: type | None) -> dict[str, Any]:
    """The JSON Schema of `data` for a flow with this declaration (OpenAPI 3.1)."""
    if declaration is None:
        return {"type": "object", "description": "the conversation's initial data"}
    properties: dict[str, Any] = {}
    for field in start_fields(declaration):
        properties[field.name] = _property(field)
    properties[TIMEZONE] = {
        "type": "string",
        "description": "the contact's IANA time zone, e.g. Europe/London",
    }
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if required := [f.name for f in start_fields(declaration) if f.required]:
        schema["required"] = required
    if declaration.__doc__ and not declaration.__doc__.startswith(declaration.__name__ + "("):
        schema["description"] = declaration.__doc__.strip().splitlines()[0]
    return schema


def _property(field: StartField) -> dict[str, Any]:
    prop: dict[str, Any]
    if field.type is dt.datetime:
        prop = {"type": "string", "format": "date-time", "description": field.describe()}
    elif field.type is str:
        bounds = field.length or Length()
        prop = {"type": "string"}
        if bounds.min >= 1:
            prop["pattern"] = r"\S"  # not blank
        if bounds.min > 1:
            prop["minLength"] = bounds.min
        if bounds.max is not None:
            prop["maxLength"] = bounds.max
    else:
        prop = {"type": {int: "integer", float: "number", bool: "boolean"}[field.type]}
        if field.range is not None and field.range.min is not None:
            prop["minimum"] = field.range.min
        if field.range is not None and field.range.max is not None:
            prop["maximum"] = field.range.max
    if field.nullable:
        prop["type"] = [prop["type"], "null"]
    if field.has_default and isinstance(field.default, str | int | float | bool):
        prop["default"] = field.default
    return prop
