"""IANA time zones by name, with one rule for what a bad name is.

`zoneinfo.ZoneInfo` fails in four ways for a name that is not a zone: ZoneInfoNotFoundError (a
KeyError), ValueError (a malformed key), TypeError (not a string) and OSError (a name too long
for the file system, e.g. 300 characters). Every caller gets one ValueError instead.
"""

from __future__ import annotations

import zoneinfo


class UnknownTimeZoneError(ValueError):
    """A name that is no IANA time zone; its message says what a good one looks like."""


def iana_zone(name: object) -> zoneinfo.ZoneInfo:
    """Return the zone called `name`, or raise UnknownTimeZoneError naming it (shortened)."""
    try:
        return zoneinfo.ZoneInfo(name)  # type: ignore[arg-type]  # non-strings are refused below
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError, OSError):
        shown = name[:40] if isinstance(name, str) else name
        raise UnknownTimeZoneError(
            f"{shown!r} is not an IANA time zone such as Europe/London"
        ) from None
