"""The operator API's request shapes, declared once: the OpenAPI document and the checks.

Each field is a small JSON Schema (the subset below) that openapi.py publishes as it is and
`Body.check` / `Field.check` enforce as it is, so the document cannot allow what the server
refuses. What JSON Schema cannot say (a string is a real phone number, a sender is one of ours,
a flow's own rules about its data) is checked after, and documented in the field's description.

Supported keywords: type (string, object, boolean, array), minLength, maxLength, pattern (searched,
as JSON Schema does, so write ^…$ to anchor), enum; on a body: required, additionalProperties
false, and "exactly one of" these fields.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from smsbot.engine.flow import Flow
from smsbot.engine.startschema import start_data_schema as engine_start_data_schema

__all__ = [
    "CONVERSATIONS",
    "IDEMPOTENCY_KEY",
    "MESSAGE",
    "SKIP_INVALID",
    "START_MANY_POLICY",
    "WORKSPACE",
    "Body",
    "Field",
    "FieldError",
    "start_body",
    "start_data_schema",
]


class FieldError(Exception):
    """A request field is missing or wrong; answered 400 naming the field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "object": (dict,),
    "boolean": (bool,),
    "array": (list,),
}
_A = {
    "string": "a string",
    "object": "a JSON object",
    "boolean": "true or false",
    "array": "a list",
}


@dataclasses.dataclass(frozen=True, slots=True)
class Field:
    """One body field or query parameter: its JSON Schema, and what to say when it fails."""

    name: str
    schema: Mapping[str, Any]
    required: bool = False
    hint: str = ""  # said when `pattern` fails: what the value should look like

    def check(self, value: object) -> object:
        """Return `value` if the schema allows it, else raise FieldError naming this field."""
        kind = self.schema["type"]
        # bool is an int, but never a string or an object: the check is exact.
        if type(value) not in _TYPES[kind]:
            raise FieldError(self.name, f"must be {_A[kind]}")
        if isinstance(value, str):
            self._check_text(value)
        return value

    def _check_text(self, value: str) -> None:
        low, high = self.schema.get("minLength", 0), self.schema.get("maxLength")
        if len(value) < low:
            raise FieldError(self.name, "is empty" if low == 1 else f"is shorter than {low}")
        if high is not None and len(value) > high:
            raise FieldError(self.name, f"is longer than {high} characters")
        pattern = self.schema.get("pattern")
        if pattern is not None and not re.search(pattern, value):
            raise FieldError(self.name, self.hint or f"must match {pattern}")
        choices = self.schema.get("enum")
        if choices is not None and value not in choices:
            raise FieldError(self.name, "must be " + " or ".join(repr(c) for c in choices))

    def parameter(self, where: str) -> dict[str, Any]:
        """This field as an OpenAPI parameter `in` a query or header."""
        return {"name": self.name, "in": where, "required": self.required, "schema": self.schema}

    def check_query(self, query: Mapping[str, str]) -> str | bool | None:
        """Read this parameter from a query string (booleans are true / false)."""
        raw = query.get(self.name)
        if raw is None:
            if self.required:
                raise FieldError(self.name, "is required")
            return None
        if self.schema["type"] == "boolean":
            if raw not in ("true", "false"):
                raise FieldError(self.name, "must be true or false")
            return raw == "true"
        self._check_text(raw)
        return raw


@dataclasses.dataclass(frozen=True, slots=True)
class Body:
    """A JSON object body: its fields, none other allowed."""

    fields: tuple[Field, ...]
    exactly_one_of: tuple[str, ...] = ()

    def schema(self) -> dict[str, Any]:
        """The body's JSON Schema."""
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {f.name: dict(f.schema) for f in self.fields},
            "additionalProperties": False,
        }
        if required := [f.name for f in self.fields if f.required]:
            schema["required"] = required
        if self.exactly_one_of:
            schema["oneOf"] = [{"required": [name]} for name in self.exactly_one_of]
        return schema

    def check(self, body: object) -> dict[str, Any]:
        """Return the checked fields that are present, or raise FieldError for the first bad one."""
        if not isinstance(body, dict):
            raise FieldError("body", "must be a JSON object")
        known = {f.name: f for f in self.fields}
        if unknown := sorted(set(body) - set(known)):
            raise FieldError(
                str(unknown[0]), f"is not a field here; known fields: {', '.join(known)}"
            )
        checked = {}
        for field in self.fields:
            if field.name in body:
                checked[field.name] = field.check(body[field.name])
            elif field.required:
                raise FieldError(field.name, "is required")
        if self.exactly_one_of and sum(n in checked for n in self.exactly_one_of) != 1:
            names = self.exactly_one_of
            raise FieldError(names[0], f"give exactly one of {' or '.join(map(repr, names))}")
        return checked


# --- the fields ---------------------------------------------------------------------------------

PHONE = {
    "type": "string",
    "format": "phone",  # an annotation: the server checks it with phonenumbers, after the schema
    "minLength": 1,
    "maxLength": 64,
    "description": "The recipient: E.164 (+447700900123), or a national number read in"
    " SMSBOT_DEFAULT_REGION. Must be a possible number there.",
}
SENDER = {
    "type": "string",
    "format": "sender",  # an annotation: one of this deployment's senders, checked after
    "minLength": 1,
    "maxLength": 64,
    "description": "What to send from: one of the workspace's numbers or sender IDs (for"
    " `default`: SMSBOT_DEFAULT_SENDER and the numbers in smsbot.toml); when left out, the"
    " workspace's first number (`default`: SMSBOT_DEFAULT_SENDER). An alphanumeric sender ID is"
    " refused (409) for a phone that opted out of any of the workspace's numbers.",
}
TO = Field("to", PHONE, required=True)
FROM = Field("from", SENDER)
POLICY = {
    "type": "string",
    "enum": ["interrupt", "reject"],
    "default": "interrupt",
    "description": "interrupt: end a conversation already running and start this one;"
    " reject: leave it running and fail this start (see `smsbot events failed`).",
}
TEMPLATE_DATA = {"type": "object", "description": "variables for the template"}


def start_data_schema(flow: type[Flow]) -> dict[str, Any]:
    """The JSON Schema of what `flow` takes in "data" when started from outside.

    The one place a flow's start data enters the document: derived from the flow's start_data
    declaration, which Flow.parse_start_data enforces (a 400 naming the field).
    """
    return engine_start_data_schema(flow.start_data)


def start_body(flow: type[Flow], *, row: bool = False) -> Body:
    """The body of a flow's start route, or (`row`) one row of its start-many list."""
    data = Field("data", start_data_schema(flow))
    if row:  # start-many takes its policy once, in the query
        return Body((TO, FROM, data))
    return Body((TO, FROM, data, Field("policy", POLICY)))


MESSAGE = Body(
    (
        TO,
        FROM,
        Field(
            "text",
            {
                "type": "string",
                "minLength": 1,
                "pattern": r"\S",
                "description": "The message. Checked like a template's output: typographic"
                " characters replaced (SMSBOT_SMART_CHARACTERS), at most SMSBOT_MAX_SEGMENTS"
                " segments under SMSBOT_SEGMENT_POLICY=fail, never more than 255.",
            },
            hint="is empty",
        ),
        Field(
            "template",
            {
                "type": "string",
                "minLength": 1,
                "maxLength": 200,
                "description": "A template under SMSBOT_TEMPLATES_DIR, e.g. keywords/hours.txt",
            },
        ),
        Field("data", TEMPLATE_DATA),
    ),
    exactly_one_of=("text", "template"),
)

SKIP_INVALID = Field(
    "skip_invalid",
    {"type": "boolean", "description": "start the good rows even if some rows are invalid"},
)
START_MANY_POLICY = Field("policy", POLICY)  # once for every row, in the query
IDEMPOTENCY_KEY = Field(
    "Idempotency-Key",
    {"type": "string", "description": "a retried request with the same key is a no-op"},
)
CONVERSATIONS = Field("phone", PHONE, required=True)
WORKSPACE = Field(
    "workspace",
    {
        "type": "string",
        "format": "workspace",  # an annotation: one of this deployment's workspaces
        "pattern": r"^[a-z0-9][a-z0-9_-]{0,63}$",
        "description": "The workspace to act in. A workspace key or OAuth token acts in its"
        " own workspace only: leave this out, or name that one (another is a 403). The admin"
        " key (SMSBOT_API_KEY) acts in any: `default` when left out.",
    },
    hint="must be a workspace name: lower-case letters, digits, - or _",
)
