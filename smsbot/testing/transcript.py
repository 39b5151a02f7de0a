"""What was said and when: the replies a test has not checked yet, and the readable transcript.

Expectations consume replies in the order they were sent. When one fails, its message is the
whole conversation so far with virtual timestamps, so a failing test reads like a chat log.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections.abc import Mapping
from typing import Any

from smsbot.sms.text import analyze

__all__ = ["Reply", "Transcript"]

_TIME_WIDTH = len("09:00  ")


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    """One SMS the bot sent, as the provider accepted it, at virtual time `at`."""

    at: dt.datetime
    to: str
    sender: str
    text: str
    encoding: str  # "GSM-7" or "UCS-2"
    segments: int

    @classmethod
    def of(cls, at: dt.datetime, to: str, sender: str, text: str) -> Reply:
        """A Reply with its encoding and segment count worked out as the bot does."""
        sms = analyze(text)
        return cls(at, to, sender, text, sms.encoding.value, sms.segments)

    @property
    def label(self) -> str:
        """Encoding and segments, as the transcript shows them: "[GSM-7, 1 seg]"."""
        return f"[{self.encoding}, {self.segments} seg{'' if self.segments == 1 else 's'}]"

    def __str__(self) -> str:
        return f"→ {self.to}  {self.text}  {self.label}"


@dataclasses.dataclass(frozen=True, slots=True)
class _Line:
    at: dt.datetime
    head: str  # "→ +447700900123  ": a multi-line text's later lines are indented this far
    text: str
    reply: Reply | None = None


class Transcript:
    """Everything sent and received in a test, in order; expectations check replies off it."""

    def __init__(self) -> None:
        self.lines: list[_Line] = []
        self.replies: list[Reply] = []
        self._unchecked: list[Reply] = []

    # -- recording ------------------------------------------------------------------------------

    def started(self, at: dt.datetime, flow: str, phone: str, data: Mapping[str, Any]) -> None:
        """Record a flow started from outside."""
        shown = f"  {json.dumps(dict(data), ensure_ascii=False)}" if data else ""
        self.lines.append(_Line(at, "", f"▶ {flow} started for {phone}{shown}"))

    def received(self, at: dt.datetime, phone: str, text: str) -> None:
        """Record an SMS from a phone to the bot."""
        self.lines.append(_Line(at, f"← {phone}  ", text))

    def advanced(self, at: dt.datetime, delta: dt.timedelta) -> None:
        """Record the clock moving on (so a gap in the times reads as intended)."""
        self.lines.append(
            _Line(at, "", f"⋯ advance {_duration(delta)}, to {at + delta:%a %d %b %H:%M}")
        )

    def sent(self, reply: Reply) -> None:
        """Record a reply that reached the provider."""
        self.lines.append(_Line(reply.at, f"→ {reply.to}  ", f"{reply.text}  {reply.label}", reply))
        self.replies.append(reply)
        self._unchecked.append(reply)

    # -- expectations ---------------------------------------------------------------------------

    def expect(
        self,
        *,
        contains: str | None = None,
        equals: str | None = None,
        matches: str | re.Pattern[str] | None = None,
        to: str | None = None,
    ) -> Reply:
        """Check off the next unchecked reply (to `to`, if given); AssertionError if it differs."""
        __tracebackhide__ = True  # pytest shows the test's line, not this one
        wanted = _describe(contains, equals, matches) + (f" to {to}" if to else "")
        reply = next((r for r in self._unchecked if to is None or r.to == to), None)
        if reply is None:
            raise AssertionError(
                self.report(f"expected {wanted}", f"expected {wanted}, got no reply")
            )
        if not _fits(reply.text, contains, equals, matches):
            got = f"got: {reply.text!r}  ({reply.at:%H:%M} to {reply.to})"
            raise AssertionError(
                self.report(f"expected {wanted}", f"expected {wanted}, {got}", reply)
            )
        self._unchecked.remove(reply)
        return reply

    def expect_none(self, *, to: str | None = None) -> None:
        """AssertionError if any reply (to `to`, if given) has not been checked off."""
        __tracebackhide__ = True
        left = [r for r in self._unchecked if to is None or r.to == to]
        if left:
            wanted = "expected no reply" + (f" to {to}" if to else "")
            more = f" and {len(left) - 1} more" if len(left) > 1 else ""
            got = f"got: {left[0].text!r}  ({left[0].at:%H:%M} to {left[0].to}){more}"
            raise AssertionError(self.report(wanted, f"{wanted}, {got}", left[0]))

    # -- showing --------------------------------------------------------------------------------

    def render(self, mark: Reply | None = None) -> str:
        """The transcript: a date line per day, then "HH:MM  → phone  text" (times UTC)."""
        out: list[str] = []
        day: dt.date | None = None
        for line in self.lines:
            if line.at.date() != day:
                day = line.at.date()
                out.append(f"{line.at:%a %d %b %Y} (UTC)")
            pointer = "   <-- this one" if mark is not None and line.reply is mark else ""
            first, *rest = (line.text + pointer).split("\n")
            out.append(f"{line.at:%H:%M}  {line.head}{first}")
            indent = " " * (_TIME_WIDTH + len(line.head))  # under the text's first line
            out.extend(indent + more for more in rest)
        return "\n".join(out) if out else "(nothing sent or received yet)"

    def __str__(self) -> str:
        return self.render()

    def report(self, headline: str, detail: str, mark: Reply | None = None) -> str:
        """A failure message: `headline`, the transcript (with `mark` pointed at), `detail`."""
        return f"{headline}\n{self.render(mark)}\n{detail}"


def _describe(contains: str | None, equals: str | None, matches: object) -> str:
    parts = []
    if equals is not None:
        parts.append(f"equal to {equals!r}")
    if contains is not None:
        parts.append(f"containing {contains!r}")
    if matches is not None:
        pattern = matches.pattern if isinstance(matches, re.Pattern) else matches
        parts.append(f"matching /{pattern}/")
    return "a reply " + " and ".join(parts) if parts else "a reply"


def _fits(
    text: str, contains: str | None, equals: str | None, matches: str | re.Pattern[str] | None
) -> bool:
    return (
        (equals is None or text == equals)
        and (contains is None or contains in text)
        and (matches is None or re.search(matches, text) is not None)
    )


def _duration(delta: dt.timedelta) -> str:
    """Write a timedelta as "1d 2h 30m" (seconds only when there is nothing bigger)."""
    minutes, seconds = divmod(int(delta.total_seconds()), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = [f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "m")) if n]
    return " ".join(parts) or f"{seconds}s"
