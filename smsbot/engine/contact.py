"""A contact as a flow sees it (`convo.contact`): typed custom fields and groups; no I/O.

Field types are text, number, datetime and boolean. A value is stored as JSON (a datetime as
an ISO 8601 string in UTC) and handed to flows as the Python value of its type. Every error
names the field, the value and the type, so an import can add the row's line to it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any, Literal

__all__ = ["FIELD_TYPES", "Contact", "FieldTypeError", "FieldValue", "parse_field"]

FieldType = Literal["text", "number", "datetime", "boolean"]
FIELD_TYPES: tuple[FieldType, ...] = ("text", "number", "datetime", "boolean")
FieldValue = str | int | float | bool | dt.datetime

_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_TRUE, _FALSE = {"true", "yes", "y", "1"}, {"false", "no", "n", "0"}
_RESERVED = {"phone", "name", "language", "timezone", "groups"}


class FieldTypeError(ValueError):
    """A value that does not fit its field's type, or a field name that cannot be used."""

    retryable = False  # a flow that sets a bad value would do so again


def check_field_name(name: str) -> str:
    """Return `name` if it can name a field (lower-case letters, digits, _), else raise."""
    if not _NAME.fullmatch(name) or name in _RESERVED:
        raise FieldTypeError(
            f"{name!r} cannot name a contact field: use lower-case letters, digits and _"
            f" (starting with a letter), and none of {', '.join(sorted(_RESERVED))}"
        )
    return name


def parse_field(name: str, kind: str, text: str) -> FieldValue | None:
    """Read a CSV cell as field `name` of type `kind`; an empty cell is None (cleared)."""
    text = text.strip()
    if not text:
        return None
    try:
        if kind == "number":
            number = float(text) if re.search(r"[.eE]", text) else int(text)
            if isinstance(number, float) and not math.isfinite(number):
                raise ValueError
            return number
        if kind == "boolean":
            if text.lower() in _TRUE | _FALSE:
                return text.lower() in _TRUE
            raise ValueError
        if kind == "datetime":
            return _aware(dt.datetime.fromisoformat(text))
    except ValueError:
        example = {"number": "42 or 4.5", "boolean": "true or false"}.get(
            kind, "2026-03-01T09:30:00+00:00"
        )
        raise FieldTypeError(
            f"field {name!r}: {text[:40]!r} is not a {kind} (write it like {example})"
        ) from None
    return text


def check_value(name: str, kind: str, value: object) -> FieldValue:
    """Return `value` if it fits type `kind` (a flow's assignment), else raise FieldTypeError."""
    fits = {
        "text": isinstance(value, str),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
        "datetime": isinstance(value, dt.datetime) and value.utcoffset() is not None,
    }.get(kind, False)
    if not fits:
        hint = " (an aware datetime)" if kind == "datetime" else ""
        raise FieldTypeError(
            f"contact field {name!r} is a {kind}{hint}; got {type(value).__name__} {value!r:.40}"
        )
    assert isinstance(value, str | int | float | bool | dt.datetime)
    return value


def infer_type(value: object) -> FieldType:
    """The type a new field takes from the first value a flow gives it."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, dt.datetime):
        return "datetime"
    return "text"


def encode(value: FieldValue | None) -> Any:
    """The JSON form of a typed value: datetimes become ISO strings in UTC."""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat()
    return value


def decode(kind: str | None, stored: Any) -> Any:
    """The typed value of a stored JSON value (a datetime field's string becomes a datetime)."""
    if kind == "datetime" and isinstance(stored, str):
        try:
            return _aware(dt.datetime.fromisoformat(stored))
        except ValueError:  # stored before the field was declared a datetime: left as text
            return stored
    return stored


def _aware(when: dt.datetime) -> dt.datetime:
    # A datetime without an offset is read as UTC: a CSV from a spreadsheet rarely has one.
    return when if when.utcoffset() is not None else when.replace(tzinfo=dt.UTC)


@dataclasses.dataclass(slots=True)
class ContactSnapshot:
    """The contact row as the dispatcher loaded it; `fields` hold stored (JSON) values."""

    phone: str
    name: str | None = None
    language: str | None = None
    fields: dict[str, Any] = dataclasses.field(default_factory=dict)
    groups: frozenset[str] = frozenset()
    types: Mapping[str, str] = dataclasses.field(default_factory=dict)  # every declared field
    exists: bool = True  # False: no row yet (created with the step's first inbound message)


@dataclasses.dataclass(slots=True)
class ContactChange:
    """What a step changed on its contact; written with the step's other effects."""

    fields: dict[str, Any]  # the whole JSON object after the step
    new_types: dict[str, str]  # fields first given a value by this step
    join: set[str]
    leave: set[str]
    name: str | None
    language: str | None


class ContactFields(MutableMapping[str, Any]):
    """`convo.contact.fields`: typed values; assigning checks the field's type."""

    def __init__(
        self,
        stored: Mapping[str, Any],
        types: Mapping[str, str],
        declared: Mapping[str, str] | None = None,
    ) -> None:
        self._known = set(types)  # recorded in the database
        self._types = {**types, **(declared or {})}  # smsbot.toml wins
        self._values = {
            k: decode(self._types.get(k), v) for k, v in stored.items() if v is not None
        }
        self.new_types: dict[str, str] = {}
        self.changed = False

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __setitem__(self, name: str, value: Any) -> None:
        if value is None:
            self.__delitem__(name) if name in self._values else None
            return
        kind = self._types.get(name) or infer_type(value)
        self._values[name] = check_value(check_field_name(name), kind, value)
        if name not in self._known:  # first written here: record its type with the step
            self.new_types[name] = self._types[name] = kind
        self.changed = True

    def __delitem__(self, name: str) -> None:
        del self._values[name]
        self.changed = True

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def stored(self) -> dict[str, Any]:
        """The values as JSON, for the contact row."""
        return {k: encode(v) for k, v in self._values.items()}


class ContactGroups:
    """`convo.contact.groups`: the names of the groups the contact is in; add() and remove()."""

    def __init__(self, names: frozenset[str]) -> None:
        self._names = set(names)
        self.joined: set[str] = set()
        self.left: set[str] = set()

    def add(self, name: str) -> None:
        """Put the contact in group `name`."""
        name = _group_name(name)
        if name not in self._names:
            self._names.add(name)
            self.joined.add(name)
            self.left.discard(name)

    def remove(self, name: str) -> None:
        """Take the contact out of group `name` (nothing happens if it is not in it)."""
        if name in self._names:
            self._names.discard(name)
            self.left.add(name)
            self.joined.discard(name)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._names))

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return f"ContactGroups({sorted(self._names)!r})"


def _group_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise FieldTypeError(f"a group name is 1-100 characters of text, got {name!r:.40}")
    return name.strip()


class Contact:
    """`convo.contact`: the person on the other end, their fields and groups."""

    def __init__(self, snap: ContactSnapshot, declared: Mapping[str, str] | None = None) -> None:
        self.phone = snap.phone
        self._name, self._language = snap.name, snap.language
        self._renamed = False
        self.fields = ContactFields(snap.fields, snap.types, declared)
        self.groups = ContactGroups(snap.groups)

    @property
    def name(self) -> str | None:
        """The contact's name, if known."""
        return self._name

    @name.setter
    def name(self, value: str | None) -> None:
        self._name, self._renamed = (value[:200] if value else None), True

    @property
    def language(self) -> str | None:
        """The contact's language (a code such as "en" or "pt-BR"), if known."""
        return self._language

    @language.setter
    def language(self, value: str | None) -> None:
        self._language, self._renamed = (value[:16] if value else None), True

    def change(self) -> ContactChange | None:
        """What this step changed, or None when nothing was."""
        g = self.groups
        if not (self.fields.changed or g.joined or g.left or self._renamed):
            return None
        return ContactChange(
            self.fields.stored(),
            dict(self.fields.new_types),
            set(g.joined),
            set(g.left),
            self._name,
            self._language,
        )

    def __repr__(self) -> str:
        return f"<Contact {len(self.fields)} field(s), groups {list(self.groups)}>"
