"""Column types shared by the tables: aware UTC datetimes on every backend; JSON's text."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import orjson
from sqlalchemy import BindParameter, DateTime, bindparam
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

_KNOWN_TEXTS = 4096  # UTC datetimes whose stored text each processor remembers
# What orjson writes natively but the standard library refuses goes to json.dumps, which
# refuses it as before (a datetime, a dataclass); dict keys that are not strings are written as
# the standard library writes them ({1: "a"} -> {"1":"a"}).
_ORJSON = (
    orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
)


def json_text(value: Any) -> str:
    """A JSON column's text (the engines' json_serializer): orjson, else the standard library.

    orjson writes a step's JSON values (a conversation's data, an event's payload, a timer's)
    about 15 times faster than json.dumps: 0.2 against 3.0 µs for start data, four of them a
    bulk start (bench/README.md, session 15). Its text is compact and keeps non-ASCII
    characters as they are; reading it back gives the same values. What it refuses (an int
    beyond 64 bits) goes to json.dumps, as everything did before. Reading stays with the
    standard library: orjson reads such an int as a float, silently.
    """
    try:
        return orjson.dumps(value, option=_ORJSON).decode()
    except TypeError:
        return json.dumps(value)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Store naive UTC, return aware UTC: SQLite keeps no zone, PostgreSQL's timestamptz does."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        """Convert an aware datetime to naive UTC for storage."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("smsbot stores only timezone-aware datetimes")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def bind_processor(self, dialect: Dialect) -> Any:
        """On SQLite, one step to the text SQLAlchemy stores (its DATETIME's format)."""
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)
        utc = dt.UTC
        # Texts of UTC datetimes already converted: a batch binds the same few values (its
        # `now`, due times) in many rows and columns, and a conversion costs ~1.5 µs against
        # 40 ns for a lookup. Only UTC values: two equal datetimes of another zone can be
        # different instants (the repeated hour of a DST change compares equal, fold aside).
        # Dict operations are atomic: the threads that share this processor need no lock.
        known: dict[dt.datetime, str] = {}

        # The same text as process_bind_param followed by SQLite's DATETIME processor
        # ("YYYY-MM-DD HH:MM:SS.ffffff"), in one C call instead of two Python ones and a
        # %-format of seven fields: a fifth of a bulk start's database thread went there.
        def process(value: dt.datetime | None) -> str | None:
            if value is None:
                return None
            if value.tzinfo is utc:
                text = known.get(value)
                if text is not None:
                    return text
            elif value.tzinfo is None:
                raise ValueError("smsbot stores only timezone-aware datetimes")
            text = value.astimezone(utc).replace(tzinfo=None).isoformat(" ", "microseconds")
            if value.tzinfo is utc:
                if len(known) >= _KNOWN_TEXTS:
                    known.clear()
                known[value] = text
            return text

        return process

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        """Attach UTC to what the database returns."""
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        return value.replace(tzinfo=dt.UTC)


def utc_param(name: str) -> BindParameter[dt.datetime]:
    """A statement parameter holding an aware UTC datetime (stored as UTCDateTime stores it)."""
    return bindparam(name, type_=UTCDateTime())
