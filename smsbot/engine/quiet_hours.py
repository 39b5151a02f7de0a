"""Quiet hours: when a message to a recipient must wait, judged by the recipient's local clock."""

from __future__ import annotations

import datetime as dt
import functools
import logging
import re
import zoneinfo

from smsbot.sms.phone import country_zones, time_zones_of
from smsbot.sms.zones import UnknownTimeZoneError, iana_zone

__all__ = ["defer_until", "parse_window", "recipient_zone"]

logger = logging.getLogger(__name__)

Window = tuple[dt.time, dt.time]

_WINDOW = re.compile(r"([01]?[0-9]|2[0-3]):([0-5][0-9])-([01]?[0-9]|2[0-3]):([0-5][0-9])")
# Offsets sampled every 6 hours over these years decide whether two zones keep the same clock.
_SAMPLE_YEARS = (2026, 2031)


def parse_window(text: str) -> Window | None:
    """Return (start, end) for "HH:MM-HH:MM", or None for ""; an end before the start wraps.

    This is the one parser of quiet-hours windows (SMSBOT_QUIET_HOURS and per-number tables).
    A ValueError says what was expected, fit for "SMSBOT_QUIET_HOURS must be …".
    """
    text = text.strip()
    if not text:
        return None
    match = _WINDOW.fullmatch(text)
    if match is None:
        raise ValueError('a window "HH:MM-HH:MM" such as 21:00-08:00, or "" for none')
    h1, m1, h2, m2 = (int(group) for group in match.groups())
    if (h1, m1) == (h2, m2):
        # Empty or all day: a mistake either way, and which one was meant cannot be told.
        raise ValueError(
            "a window whose start and end differ: one that starts and ends at the same time"
            ' would be empty or all day; give e.g. 21:00-08:00 (past midnight), or "" for none'
        )
    return dt.time(h1, m1), dt.time(h2, m2)


@functools.cache
def _one_clock(zones: tuple[str, ...]) -> str | None:
    """Return the first zone if all of `zones` keep the same clock, else None."""
    # Numbers often map to aliases of one clock (+44: Europe/Guernsey, Europe/Isle_of_Man,
    # Europe/London), which should count as one zone; America/Chicago and America/New_York not.
    start = dt.datetime(_SAMPLE_YEARS[0], 1, 1, tzinfo=dt.UTC)
    end = dt.datetime(_SAMPLE_YEARS[1], 1, 1, tzinfo=dt.UTC)
    infos = [zoneinfo.ZoneInfo(zone) for zone in zones]
    moment = start
    while moment < end:
        if len({moment.astimezone(info).utcoffset() for info in infos}) > 1:
            return None
        moment += dt.timedelta(hours=6)
    return zones[0]


def recipient_zone(phone: str, contact_timezone: str | None, default: str) -> zoneinfo.ZoneInfo:
    """The recipient's zone: the contact's own, else their number's, else `default`."""
    if contact_timezone:
        try:
            return iana_zone(contact_timezone)
        except UnknownTimeZoneError:
            # Still honour quiet hours with the next-best zone rather than fail the message.
            logger.warning(
                "contact time zone %r is not an IANA time zone; using the phone number's zone",
                contact_timezone[:40],
            )
    # Where a whole country code keeps one clock (+44, +33, +49, ...) every number in it does:
    # its most-listed zone (+44: Europe/London), without classifying the number (~30 µs).
    country = country_zones(phone)
    zone = _one_clock(country) if country else None
    if zone is None:
        zones = time_zones_of(phone)
        # A number spanning several clocks (+1 800, most of +7 and +61) says nothing reliable.
        zone = _one_clock(tuple(zones)) if zones else None
    return zoneinfo.ZoneInfo(zone or default)


def _inside(wall: dt.time, window: Window) -> bool:
    start, end = window
    if start < end:
        return start <= wall < end
    return wall >= start or wall < end  # wraps past midnight


def _exists(local: dt.datetime) -> bool:
    """Whether the aware local wall time `local` happens (is not in a spring-forward gap)."""
    assert local.tzinfo is not None
    back = local.astimezone(dt.UTC).astimezone(local.tzinfo)
    return back.replace(tzinfo=None) == local.replace(tzinfo=None)


def _after_gap(local: dt.datetime) -> dt.datetime:
    """Return the UTC instant a clock jumps past the skipped wall time `local`."""
    # fold=0 and fold=1 read a skipped time with the offsets before and after the jump, so the
    # jump lies between the two readings; bisect on whole seconds (tzdata's resolution).
    readings = sorted(local.replace(fold=fold).astimezone(dt.UTC) for fold in (0, 1))
    low, high = (int(reading.timestamp()) for reading in readings)
    naive = local.replace(tzinfo=None)
    tz = local.tzinfo
    while low + 1 < high:
        middle = (low + high) // 2
        wall = dt.datetime.fromtimestamp(middle, tz).replace(tzinfo=None)
        if wall >= naive:
            high = middle
        else:
            low = middle
    return dt.datetime.fromtimestamp(high, dt.UTC)


def _window_end(now: dt.datetime, window: Window, tz: zoneinfo.ZoneInfo) -> dt.datetime:
    """The first instant after `now` (inside the window) at which the window's end arrives."""
    local = now.astimezone(tz)
    start, end = window
    day = local.date()
    if start > end and local.time() >= start:
        day += dt.timedelta(days=1)  # the evening part of a window that ends tomorrow morning
    wall = dt.datetime.combine(day, end, tzinfo=tz)
    if not _exists(wall):
        return _after_gap(wall)
    # An autumn wall time happens twice: the first occurrence, unless `now` is already past it.
    first, second = (wall.replace(fold=fold).astimezone(dt.UTC) for fold in (0, 1))
    return first if first > now else second


def defer_until(
    now: dt.datetime, window: Window | None, tz: zoneinfo.ZoneInfo
) -> dt.datetime | None:
    """Return when quiet hours end (aware UTC) if `now` falls in them in `tz`, else None."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("defer_until needs an aware datetime; add tzinfo=datetime.UTC")
    if window is None:
        return None
    if not _inside(now.astimezone(tz).time(), window):
        return None
    moment = _window_end(now, window, tz)
    # Usually one step. Another is needed only when a clock change skips the end and the instant
    # after the jump is already in the next night's window (possible for windows of 23+ hours).
    for _ in range(2):
        if not _inside(moment.astimezone(tz).time(), window):
            break
        moment = _window_end(moment, window, tz)
    return moment
