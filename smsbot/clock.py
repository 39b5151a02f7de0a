"""Injected time: everything that needs "now" asks a Clock, so timers are testable."""

from __future__ import annotations

import datetime as dt
from typing import Protocol


class Clock(Protocol):
    """A source of the current time (timezone-aware, UTC)."""

    def now(self) -> dt.datetime:
        """Return the current time as an aware UTC datetime."""
        ...


class SystemClock:
    """The real wall clock; the only place smsbot reads it."""

    def now(self) -> dt.datetime:
        """Return the wall-clock time in UTC."""
        return dt.datetime.now(dt.UTC)


class VirtualClock:
    """A clock that moves only when told to: for tests and simulations."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        start = start or dt.datetime(2026, 1, 15, 9, 0, tzinfo=dt.UTC)
        if start.tzinfo is None:
            raise ValueError("VirtualClock needs an aware datetime; add tzinfo=datetime.UTC")
        self._now = start.astimezone(dt.UTC)

    def now(self) -> dt.datetime:
        """Return the virtual time."""
        return self._now

    def advance(self, delta: dt.timedelta) -> dt.datetime:
        """Move the clock forward by `delta` and return the new time."""
        if delta < dt.timedelta(0):
            raise ValueError("a VirtualClock never moves backwards")
        self._now += delta
        return self._now

    def set(self, when: dt.datetime) -> None:
        """Jump to `when` (not earlier than now)."""
        self.advance(when.astimezone(dt.UTC) - self._now)


class OffsetClock:
    """The wall clock plus an offset that only grows: local development can skip ahead.

    `smsbot serve` with the sandbox provider runs on one, shared by the bot and the sandbox, so
    the console can move time forward to see a reminder fire; it never moves backwards.
    """

    def __init__(self, base: Clock | None = None) -> None:
        self._base = base or SystemClock()
        self._offset = dt.timedelta(0)

    def now(self) -> dt.datetime:
        """Return the wall-clock time moved on by every advance so far."""
        return self._base.now() + self._offset

    @property
    def offset(self) -> dt.timedelta:
        """How far ahead of the wall clock this clock runs."""
        return self._offset

    def advance(self, delta: dt.timedelta) -> dt.datetime:
        """Move the clock forward by `delta` and return the new time."""
        if delta < dt.timedelta(0):
            raise ValueError("an OffsetClock never moves backwards")
        self._offset += delta
        return self.now()

    def set(self, when: dt.datetime) -> None:
        """Jump to `when`; a time already past (the wall clock moved on) changes nothing."""
        self.advance(max(when.astimezone(dt.UTC) - self.now(), dt.timedelta(0)))
