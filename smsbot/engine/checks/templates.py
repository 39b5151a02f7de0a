"""Template checks: syntax, the variables a template reads, and a worst-case sample rendering.

A template is rendered once with long, plain values: every text value as long as its
`Length(max=...)` allows (or CheckOptions.text_length), numbers at their Range's top, dates
as a date and time. What comes out shows the most segments the template can take, and any
character in the template itself that sends the message as UCS-2.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import jinja2.nodes

from smsbot.engine.checks.report import CheckOptions, Finding
from smsbot.engine.startdata import StartField
from smsbot.sms.templates import SmsTemplates, TemplateError
from smsbot.sms.text import Encoding, analyze, to_gsm

log = logging.getLogger(__name__)

# What every template sees besides the data and the call's variables (Conversation.context).
CONTEXT_NAMES = frozenset({"phone", "virtual_number", "now"})
_DATE_FILTERS = frozenset({"date", "time", "datetime"})
_SAMPLE_MOMENT = "2026-12-30T23:59:00+00:00"  # every day and month name has three letters
_SAMPLE_CONTEXT: dict[str, Any] = {
    "phone": "+447700900123",
    "virtual_number": "+447700900100",
    "now": dt.datetime(2026, 12, 30, 23, 59, tzinfo=dt.UTC),
}
_MOST_SEGMENTS = 255  # SMSBOT_MAX_SEGMENTS' own ceiling: the sample is never cut short


@dataclasses.dataclass(frozen=True, slots=True)
class TemplateFacts:
    """What a template's source says: the variables it reads (its includes' too)."""

    name: str
    file: str
    variables: frozenset[str]
    date_variables: frozenset[str]  # read through the date, time or datetime filter


class TemplateChecker:
    """Reads and samples the templates of one directory for `smsbot check`."""

    def __init__(
        self, directory: Path, options: CheckOptions, fields: Mapping[str, StartField]
    ) -> None:
        self.directory = directory
        self.options = options
        self.fields = fields  # declared start fields of every flow, by name: their types
        self.templates = SmsTemplates(
            directory, max_segments=_MOST_SEGMENTS, smart_characters=options.smart_characters
        )
        # Only parsed and read, never rendered: smsbot's filters need only be known by name.
        self._parser = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)  # noqa: S701
        self._parser.filters.update(dict.fromkeys(_DATE_FILTERS, str))
        self._globals = frozenset(self._parser.globals)

    def names(self) -> list[str]:
        """Every template in the directory."""
        return self.templates.names() if self.directory.is_dir() else []

    def exists(self, name: str) -> bool:
        """Whether the template file `name` is there."""
        return self.templates.exists(name)

    @functools.cache  # noqa: B019 - one checker per `smsbot check` run
    def facts(self, name: str) -> TemplateFacts | None:
        """The template's variables, or None if it is missing or does not parse."""
        parsed = self._parse(name)
        if parsed is None:
            return None
        variables = set(jinja2.meta.find_undeclared_variables(parsed)) - self._globals
        dates = {
            f.node.name
            for f in parsed.find_all(jinja2.nodes.Filter)
            if f.name in _DATE_FILTERS and isinstance(f.node, jinja2.nodes.Name)
        }
        for included in jinja2.meta.find_referenced_templates(parsed):
            inner = self.facts(included) if included and included != name else None
            if inner is not None:
                variables |= inner.variables
                dates |= inner.date_variables
        return TemplateFacts(name, self.path(name), frozenset(variables), frozenset(dates))

    def path(self, name: str) -> str:
        """The template's file."""
        return str(self.directory / name)

    def findings(self) -> list[Finding]:
        """Syntax errors, UCS-2 characters and worst-case segments of every template."""
        found: list[Finding] = []
        for name in self.names():
            error = self._syntax_error(name)
            if error is not None:
                found.append(error)
                continue
            found += self._sample_findings(name)
        return found

    # --- internals ----------------------------------------------------------------------------

    def source(self, name: str) -> str | None:
        """The template's text, or None when it cannot be read."""
        try:
            return (self.directory / name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None

    def _parse(self, name: str) -> jinja2.nodes.Template | None:
        source = self.source(name)
        if source is None:
            return None
        try:
            return self._parser.parse(source, name)
        except jinja2.TemplateSyntaxError:
            return None

    def _syntax_error(self, name: str) -> Finding | None:
        source = self.source(name)
        if source is None:
            message = f"template {name!r} cannot be read as UTF-8: save it as UTF-8"
            return Finding("error", "template-unreadable", self.path(name), None, message)
        try:
            self._parser.parse(source, name)
        except jinja2.TemplateSyntaxError as exc:
            return Finding(
                "error",
                "template-syntax",
                self.path(name),
                exc.lineno,
                f"template {name!r} has a syntax error: {(exc.message or '').rstrip('. ')}:"
                " fix the template",
            )
        return None

    def _sample(self, facts: TemplateFacts) -> dict[str, Any]:
        context = dict(_SAMPLE_CONTEXT)
        for variable in facts.variables - CONTEXT_NAMES:
            field = self.fields.get(variable)
            if variable in facts.date_variables:
                context[variable] = _SAMPLE_MOMENT
            elif field is not None:
                context[variable] = _worst(field, self.options.text_length)
            else:
                context[variable] = "x" * self.options.text_length
        return context

    def _sample_findings(self, name: str) -> list[Finding]:
        facts = self.facts(name)
        if facts is None:
            return []
        try:
            sms = self.templates.render(name, self._sample(facts))
        except TemplateError as exc:
            # The sample's made-up values did not suit it (arithmetic on a text, say): skip.
            log.debug("no sample of %s: %s", name, exc)
            return []
        found = self._ucs2_findings(name, sms.text) if sms.encoding is Encoding.UCS2 else []
        if sms.segments > self.options.segment_limit:
            found.append(
                Finding(
                    "warning",
                    "segments",
                    facts.file,
                    1,
                    f"template {name!r} can take {sms.segments} segments ({sms.encoding}, up to"
                    f" {analyze(sms.text).units} characters when each text value is as long as"
                    f" its Length(max=...), or {self.options.text_length} characters), over the"
                    " limit of"
                    f" {self.options.segment_limit}: each message costs {sms.segments}x a"
                    " single SMS; shorten the text, or bound long values in start_data",
                )
            )
        return found

    def _ucs2_findings(self, name: str, text: str) -> list[Finding]:
        source = self.source(name) or ""
        wide = [ch for ch in dict.fromkeys(text) if analyze(ch).encoding is Encoding.UCS2]
        blocked = [ch for ch in wide if analyze(to_gsm(ch)).encoding is Encoding.UCS2]
        found = []
        for ch in wide:
            swap = to_gsm(ch)
            if ch in blocked:
                fix = "it has no GSM-7 look-alike: rephrase without it, or accept UCS-2"
            elif self.options.smart_characters:
                others = ", ".join(_label(c) for c in blocked)
                fix = (
                    f"replace it with {swap!r} (smsbot would swap it, but {others} keeps the"
                    " message UCS-2 anyway)"
                )
            else:
                fix = f"replace it with {swap!r}, or set SMSBOT_SMART_CHARACTERS=true"
            found.append(
                Finding(
                    "warning",
                    "ucs2",
                    self.path(name),
                    _line_of(source, ch),
                    f"template {name!r} is sent as UCS-2 (70 characters a segment, not 160)"
                    f" because of {_label(ch)}: {fix}",
                )
            )
        return found


def _label(ch: str) -> str:
    return f"{ch!r} (U+{ord(ch):04X} {unicodedata.name(ch, 'unnamed character')})"


def _line_of(source: str, ch: str) -> int | None:
    index = source.find(ch)
    return source.count("\n", 0, index) + 1 if index >= 0 else None


def _worst(field: StartField, text_length: int) -> Any:
    """The longest plausible value of a declared start field, in GSM-7 characters."""
    if field.type is dt.datetime:
        return _SAMPLE_MOMENT
    if field.type is bool:
        return True
    if field.type in (int, float):
        top = field.range.max if field.range is not None else None
        return field.type(top) if top is not None else field.type(2**31 - 1)
    length = field.length.max if field.length is not None else None
    return "x" * (length if length is not None else text_length)
