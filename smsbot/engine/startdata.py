"""Start data: the fields a flow started from outside takes, declared once, checked everywhere.

A flow names a dataclass (or a TypedDict) as its `start_data`::

    @dataclass
    class AppointmentData:
        name: str
        starts_at: Annotated[datetime, Future()]
        location: Annotated[str, Length(max=60)]
        remind_before_minutes: Annotated[int, Range(0, 40_320)] = 1440

    class AppointmentConfirmation(Flow):
        start_data = AppointmentData

From that one declaration the operator API and `smsbot start --csv` refuse bad data with the
field's name before anything is queued, the OpenAPI document describes `data`, and `smsbot
check` knows which template variables a START provides.

Field types are str (not blank, unless Length(min=0)), int, float, bool and datetime (ISO 8601
text with a UTC offset; the data keeps the text). `X | None` also accepts null. A field with a
default (or a NotRequired one) may be left out; the data then holds only what was given, so
read it with `convo.data.get(name, default)`. Markers in `Annotated[...]`: Range (numbers),
Length (str) and Future (datetime). `timezone` (an IANA zone, see Conversation.timezone) is
always accepted. Any other key is refused: a misspelt optional field would otherwise be
silently ignored.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import math
import re
import typing
from collections.abc import Mapping
from typing import Any

from smsbot.hints import did_you_mean
from smsbot.sms.zones import UnknownTimeZoneError, iana_zone

__all__ = [
    "Future",
    "Length",
    "Range",
    "StartDataError",
    "StartField",
    "parse_start_data",
    "start_fields",
]

TYPES: tuple[type, ...] = (str, int, float, bool, dt.datetime)
TIMEZONE = "timezone"  # always accepted: the contact's zone (Conversation.timezone)
_ISO_EXAMPLE = "2026-01-20T10:30:00+00:00"
_INTEGER = re.compile(r"[+-]?\d{1,15}")
_EXACT_FLOAT = 2**53  # beyond it a JSON number is no longer an exact whole number
_MARGIN = dt.timedelta(days=2)  # room to show a time in any zone and to add a day to it
_TRUE, _FALSE = {"true", "yes", "1"}, {"false", "no", "0"}
_NAMES = {str: "text", int: "a whole number", float: "a number", bool: "true or false"}


@dataclasses.dataclass(frozen=True, slots=True)
class Range:
    """Inclusive bounds for an int or float field, e.g. Annotated[int, Range(0, 40_320)]."""

    min: float | None = None
    max: float | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Length:
    """Bounds on a str field's length in characters, e.g. Annotated[str, Length(max=60)]."""

    min: int = 1
    max: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Future:
    """A datetime field must be later than the moment the flow is started."""


class StartDataError(ValueError):
    """A START's data does not fit the flow's start_data; `field` is like "data.starts_at".

    `reason` says what is wrong without the field's name; str() starts with the name.
    """

    def __init__(self, name: str | None, reason: str) -> None:
        self.field = f"data.{name}" if name else "data"
        self.reason = reason
        super().__init__(f"{self.field} {reason}")


@dataclasses.dataclass(frozen=True, slots=True)
class StartField:
    """One declared field of a flow's start data."""

    name: str
    type: type  # one of TYPES
    required: bool
    nullable: bool = False
    has_default: bool = False
    default: Any = None  # a dataclass field's default, shown in the OpenAPI schema
    range: Range | None = None
    length: Length | None = None
    future: bool = False

    def parse(self, value: Any, *, now: dt.datetime | None, from_text: bool) -> Any:
        """Return `value` as this field's type, or raise StartDataError naming the field."""
        if value is None:
            if self.nullable:
                return None
            raise StartDataError(self.name, "must not be null: give a value or leave it out")
        parsed = _PARSERS[self.type](self, value, from_text)
        if self.future and now is not None and _utc(self.name, str(value)) <= now:
            raise StartDataError(
                self.name, f"{value!r} has passed (now is {now.isoformat()}): give a later time"
            )
        return parsed

    def describe(self) -> str:
        """What the field takes, for an error message: "a whole number from 0 to 40320"."""
        if self.type is dt.datetime:
            later = ", in the future" if self.future else ""
            return f"a date and time with a UTC offset such as {_ISO_EXAMPLE}{later}"
        text = _NAMES[self.type]
        if self.range is not None:
            low, high = self.range.min, self.range.max
            if low is not None and high is not None:
                text += f" from {_num(low)} to {_num(high)}"
            elif low is not None:
                text += f" of at least {_num(low)}"
            elif high is not None:
                text += f" of at most {_num(high)}"
        if self.length is not None and self.length.max is not None:
            text += f" of at most {self.length.max} characters"
        return text


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _refuse(field: StartField, value: Any) -> StartDataError:
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    return StartDataError(field.name, f"must be {field.describe()}, got {shown}")


def _parse_str(field: StartField, value: Any, from_text: bool) -> str:
    if not isinstance(value, str):
        raise _refuse(field, value)
    bounds = field.length or Length()
    if bounds.min and len(value.strip()) < bounds.min:
        reason = "is empty" if not value.strip() else f"is shorter than {bounds.min} characters"
        raise StartDataError(field.name, f"{reason}: give a value or leave it out")
    if bounds.max is not None and len(value) > bounds.max:
        raise StartDataError(field.name, f"is longer than {bounds.max} characters: shorten it")
    return value


def _parse_int(field: StartField, value: Any, from_text: bool) -> int:
    number: int
    if from_text and isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        number = int(value.strip())
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer() and abs(value) < _EXACT_FLOAT:
        number = int(value)  # JSON Schema counts 90.0 as an integer too
    else:
        raise _refuse(field, value)
    _check_range(field, number)
    return number


def _parse_float(field: StartField, value: Any, from_text: bool) -> float:
    number: float
    if from_text and isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise _refuse(field, value) from None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    else:
        raise _refuse(field, value)
    if not math.isfinite(number):
        raise _refuse(field, value)
    _check_range(field, number)
    return number


def _parse_bool(field: StartField, value: Any, from_text: bool) -> bool:
    if isinstance(value, bool):
        return value
    if from_text and isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _refuse(field, value)


def _parse_datetime(field: StartField, value: Any, from_text: bool) -> str:
    if not isinstance(value, str):
        raise _refuse(field, value)
    _utc(field.name, value)
    return value


def _utc(name: str, text: str) -> dt.datetime:
    """Read ISO 8601 text with an offset as UTC; refuse a time too near the calendar's ends."""
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        moment = None
    if moment is None or moment.utcoffset() is None:
        missing = "has no UTC offset" if moment is not None else "is not a date and time"
        raise StartDataError(
            name, f"{text!r} {missing}: write it as ISO 8601 with a UTC offset, like {_ISO_EXAMPLE}"
        )
    try:
        utc = moment.astimezone(dt.UTC)
        # Raise here, not later in a step that shows the time in a zone or adds a day to it.
        utc - _MARGIN, utc + _MARGIN
    except OverflowError:
        raise StartDataError(
            name, f"{text!r} is out of range: give a date between the years 1 and 9999"
        ) from None
    return utc


def _check_range(field: StartField, number: float) -> None:
    bounds = field.range
    if bounds is None:
        return
    if (bounds.min is not None and number < bounds.min) or (
        bounds.max is not None and number > bounds.max
    ):
        raise _refuse(field, number)


_PARSERS: dict[type, Any] = {
    str: _parse_str,
    int: _parse_int,
    float: _parse_float,
    bool: _parse_bool,
    dt.datetime: _parse_datetime,
}


@functools.lru_cache(maxsize=256)
def start_fields(declaration: type | None) -> tuple[StartField, ...]:
    """The fields of a start_data declaration; TypeError names what is not supported."""
    # Cached: reading the type hints is ~200 µs, and every start checks its data twice (when
    # it is queued and when it runs): a quarter of a bulk start's CPU before this.
    if declaration is None:
        return ()
    if not isinstance(declaration, type) or not (
        dataclasses.is_dataclass(declaration) or typing.is_typeddict(declaration)
    ):
        raise TypeError(f"start_data must be a dataclass or a TypedDict class, got {declaration!r}")
    try:
        hints = typing.get_type_hints(declaration, include_extras=True)
    except (NameError, TypeError) as exc:
        name = declaration.__name__
        raise TypeError(f"start_data {name}: cannot read its fields: {exc}") from None
    if dataclasses.is_dataclass(declaration):
        defaults = {
            f.name: f.default
            for f in dataclasses.fields(declaration)
            if f.default is not dataclasses.MISSING
        }
        optional = set(defaults) | {
            f.name
            for f in dataclasses.fields(declaration)
            if f.default_factory is not dataclasses.MISSING
        }
        names = [f.name for f in dataclasses.fields(declaration)]
    else:
        defaults = {}
        optional = set(getattr(declaration, "__optional_keys__", ()))
        names = list(hints)
    return tuple(
        _field(declaration.__name__, name, hints[name], name not in optional, defaults)
        for name in names
    )


def _field(
    owner: str, name: str, hint: Any, required: bool, defaults: Mapping[str, Any]
) -> StartField:
    markers: list[Any] = []
    nullable = False
    while True:
        origin = typing.get_origin(hint)
        if origin is typing.Annotated:
            markers += list(hint.__metadata__)
            hint = hint.__origin__
        elif origin in (typing.Required, typing.NotRequired):
            required = origin is typing.Required
            hint = typing.get_args(hint)[0]
        else:
            args = typing.get_args(hint)
            if type(None) in args and len(args) == 2:  # X | None, Optional[X]
                nullable = True
                hint = next(a for a in args if a is not type(None))
                continue
            break
    where = f"start_data {owner}.{name}"
    if hint not in TYPES:
        raise TypeError(
            f"{where} is {getattr(hint, '__name__', hint)!r}: use str, int, float, bool or"
            " datetime (a list or a nested object cannot be checked)"
        )
    found = StartField(
        name,
        hint,
        required,
        nullable=nullable,
        has_default=name in defaults,
        default=defaults.get(name),
        range=next((m for m in markers if isinstance(m, Range)), None),
        length=next((m for m in markers if isinstance(m, Length)), None),
        future=any(isinstance(m, Future) or m is Future for m in markers),
    )
    if found.range is not None and hint not in (int, float):
        raise TypeError(f"{where}: Range() bounds numbers; this field is {hint.__name__}")
    if found.length is not None and hint is not str:
        raise TypeError(f"{where}: Length() bounds text; this field is {hint.__name__}")
    if found.future and hint is not dt.datetime:
        raise TypeError(f"{where}: Future() is for datetime fields; this one is {hint.__name__}")
    return found


def parse_start_data(
    declaration: type | None,
    data: Mapping[str, Any],
    *,
    now: dt.datetime | None = None,
    from_text: bool = False,
) -> dict[str, Any]:
    """Check `data` against `declaration`; return it with its values as declared.

    `now` enables Future(); `from_text` reads numbers and booleans written as text (CSV).
    Without a declaration the data is returned as given.
    """
    if not isinstance(data, Mapping):
        raise StartDataError(None, "must be a JSON object")
    if declaration is None:
        return dict(data)
    fields = {f.name: f for f in start_fields(declaration)}
    parsed: dict[str, Any] = {}
    for key, value in data.items():
        field = fields.get(key)
        if field is not None:
            parsed[key] = field.parse(value, now=now, from_text=from_text)
        elif key == TIMEZONE:
            parsed[key] = _timezone(value)
        else:
            hint = did_you_mean(str(key), fields, "{!r}")
            known = ", ".join(fields) or "none"
            raise StartDataError(
                str(key),
                f"is not a start field of this flow{f' ({hint})' if hint else ''}; its fields:"
                f" {known}",
            )
    for field in fields.values():
        if field.required and field.name not in data:
            raise StartDataError(field.name, f"is required: give {field.describe()}")
    return parsed


def _timezone(value: Any) -> str:
    try:
        iana_zone(value)
    except UnknownTimeZoneError as exc:
        raise StartDataError(TIMEZONE, str(exc)) from None
    return str(value)
