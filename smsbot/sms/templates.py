"""The Jinja environment for SMS: strict variables, local-time filters, segment checks."""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import re
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import jinja2
import jinja2.meta
import jinja2.sandbox

from smsbot.sms.text import MAX_PARTS, Encoding, analyze, to_gsm
from smsbot.sms.zones import UnknownTimeZoneError, iana_zone

__all__ = ["RenderedSms", "SmsTemplates", "TemplateError"]

logger = logging.getLogger(__name__)

# The recipient's zone travels in the render context under a name no template would use, so the
# filters can read it (jinja2.pass_context) and one environment serves every render at once.
_ZONE_KEY = "_smsbot_recipient_zone"
_INLINE_CACHE_SIZE = 256
_UNDEFINED_NAME = re.compile(r"'([^']+)' is undefined")
_ISO_EXAMPLE = "2026-01-15T10:30:00+00:00"


class TemplateError(Exception):
    """A template is missing, broken, or cannot render; the message names it and the fix."""

    retryable = False  # rendering again fails the same way: a step is parked at once


@dataclass(frozen=True, slots=True)
class RenderedSms:
    """A message body ready to send, with its encoding and number of SMS segments."""

    text: str
    encoding: Encoding
    segments: int
    template: str | None = None  # None for inline templates and plain text


def _label(name: str | None) -> str:
    return f"template {name!r}" if name else "the inline template"


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _said(exc: Exception) -> str:
    # Jinja's messages end in a full stop; ours go on after a colon.
    message = exc.message if isinstance(exc, jinja2.TemplateError) else str(exc)
    return (message or type(exc).__name__).rstrip(". ")


class _MomentError(ValueError):
    """A date filter got a value it cannot place in time; render() adds the template name."""


def _moment(value: object, filter_name: str, *, dates: bool = False) -> dt.datetime | dt.date:
    """Return `value` as an aware datetime (or, when `dates`, a plain date)."""
    if dates and isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    given = value  # errors show what the template was given, not what it was parsed into
    if isinstance(value, str):
        text = value.strip()
        try:
            if dates and len(text) == len("2026-01-15"):
                return dt.date.fromisoformat(text)
            value = dt.datetime.fromisoformat(text)
        except ValueError:
            raise _MomentError(
                f"gives the {filter_name} filter {_shown(text)}, which is not an ISO 8601 date"
                f" and time: pass an aware datetime or a string like {_ISO_EXAMPLE}"
            ) from None
    if not isinstance(value, dt.datetime):
        raise _MomentError(
            f"gives the {filter_name} filter {_shown(value)}, which is not a date and time:"
            f" pass an aware datetime or a string like {_ISO_EXAMPLE}"
        )
    if value.utcoffset() is None:
        # A naive time could be anyone's: guessing UTC would tell the recipient the wrong hour.
        raise _MomentError(
            f"gives the {filter_name} filter {_shown(given)}, which has no UTC offset: pass an"
            f" aware datetime or a string with an offset like {_ISO_EXAMPLE}"
        )
    return value


def _local(context: jinja2.runtime.Context, value: object, filter_name: str) -> dt.datetime:
    moment = _moment(value, filter_name)
    assert isinstance(moment, dt.datetime)  # dates=False above
    return moment.astimezone(context[_ZONE_KEY])


def _clock(moment: dt.datetime, style: str) -> str:
    if style == "12h":
        hour = moment.hour % 12 or 12
        return f"{hour}:{moment.minute:02d}{'am' if moment.hour < 12 else 'pm'}"
    if style == "24h":
        return f"{moment.hour:02d}:{moment.minute:02d}"
    return moment.strftime(style)


def _day(moment: dt.date) -> str:
    return _day_of(moment.year, moment.month, moment.day)


@functools.lru_cache(maxsize=4096)  # a bulk run's appointments fall on a few hundred days
def _day_of(year: int, month: int, day: int) -> str:
    # Built by hand: strftime's %-d (day without a leading zero) is not portable.
    return dt.date(year, month, day).strftime(f"%a {day} %b")


@jinja2.pass_context
def _date_filter(context: jinja2.runtime.Context, value: object, format: str = "") -> str:
    """'Thu 15 Jan' in the recipient's zone; `format` is a strftime pattern."""
    moment = _moment(value, "date", dates=True)
    if isinstance(moment, dt.datetime):
        moment = moment.astimezone(context[_ZONE_KEY])
    return moment.strftime(format) if format else _day(moment)


@jinja2.pass_context
def _time_filter(context: jinja2.runtime.Context, value: object, format: str = "24h") -> str:
    """'10:30' in the recipient's zone; '12h' gives '10:30am', anything else is strftime."""
    return _clock(_local(context, value, "time"), format)


@jinja2.pass_context
def _datetime_filter(context: jinja2.runtime.Context, value: object, format: str = "24h") -> str:
    """'Thu 15 Jan at 10:30' in the recipient's zone; '12h' or a strftime pattern."""
    moment = _local(context, value, "datetime")
    if format in ("24h", "12h"):
        return f"{_day(moment)} at {_clock(moment, format)}"
    return moment.strftime(format)


def _template_frame(exc: BaseException) -> tuple[str, int] | None:
    """Return (file name, line) of the innermost template frame in `exc`'s traceback."""
    found = None
    tb: TracebackType | None = exc.__traceback__
    while tb is not None:
        # Jinja rewrites tracebacks so template code shows as frames of the template file,
        # marked by this global; the innermost one is where the error happened.
        if "__jinja_exception__" in tb.tb_frame.f_globals:
            found = (tb.tb_frame.f_code.co_filename, tb.tb_lineno)
        tb = tb.tb_next
    return found


class SmsTemplates:
    """Renders SMS templates from a directory and checks the result's size and encoding."""

    def __init__(
        self,
        directory: Path,
        *,
        max_segments: int = 6,
        segment_policy: Literal["warn", "fail"] = "warn",
        smart_characters: bool = True,
        auto_reload: bool = True,
    ) -> None:
        if max_segments < 1:
            raise ValueError(f"max_segments must be at least 1, got {max_segments}")
        if segment_policy not in ("warn", "fail"):
            raise ValueError(f"segment_policy must be 'warn' or 'fail', got {segment_policy!r}")
        self._directory = Path(directory)
        self._max_segments = max_segments
        self._segment_policy = segment_policy
        self._smart_characters = smart_characters
        # Sandboxed: inline templates come in through the operator API, and a plain Environment
        # would let them reach Python internals ({{ ''.__class__.__mro__ }}). Files lose nothing.
        # autoescape is off because SMS is plain text: HTML escaping would send "&amp;" to phones.
        self._env = jinja2.sandbox.SandboxedEnvironment(
            loader=jinja2.FileSystemLoader(self._directory),
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=False,
            trim_blocks=True,
            lstrip_blocks=True,
            # Jinja's default: compiled templates are cached, and a changed file (one stat per
            # render) is recompiled, so editing a template needs no restart.
            auto_reload=auto_reload,
        )
        # Without reloading, each compiled template is kept here: no stat, no LRU lookup.
        self._compiled: dict[str, jinja2.Template] | None = None if auto_reload else {}
        filters: dict[str, Callable[..., str]] = {
            "date": _date_filter,
            "time": _time_filter,
            "datetime": _datetime_filter,
        }
        self._env.filters.update(filters)
        self._globals = dict(self._env.globals)  # range, dict, namespace, …: see _render
        self._inline: dict[str, jinja2.Template] = {}

    def render(
        self, name: str, context: Mapping[str, Any], *, timezone: str | zoneinfo.ZoneInfo = "UTC"
    ) -> RenderedSms:
        """Render the template file `name` for a recipient in `timezone`."""
        zone = self._zone(timezone, name)
        try:
            if self._compiled is None:
                template = self._env.get_template(name)
            else:
                cached = self._compiled.get(name)
                template = cached or self._compiled.setdefault(name, self._env.get_template(name))
            text = self._render(template, context, zone)
        except Exception as exc:
            raise self._error(exc, name) from exc
        return self._finish(text, name)

    def render_string(
        self, source: str, context: Mapping[str, Any], *, timezone: str | zoneinfo.ZoneInfo = "UTC"
    ) -> RenderedSms:
        """Render template source given inline (the operator API), like render()."""
        zone = self._zone(timezone, None)
        try:
            template = self._inline.get(source)
            if template is None:
                template = self._env.from_string(source)
                if len(self._inline) >= _INLINE_CACHE_SIZE:
                    self._inline.clear()  # a bulk send repeats one source; churn means no reuse
                self._inline[source] = template
            text = self._render(template, context, zone)
        except Exception as exc:
            raise self._error(exc, None) from exc
        return self._finish(text, None)

    def check_text(
        self, text: str, *, name: str | None = None, label: str | None = None
    ) -> RenderedSms:
        """Apply smart-character substitution to plain text and check its segments.

        `label` names plain text that is no template in errors ("the text").
        """
        what, verb = (label, "comes to") if label else (_label(name), "renders to")
        if not text.strip():
            raise TemplateError(f"{what} is an empty message: give it some text")
        if self._smart_characters:
            swapped = to_gsm(text)
            # Only when the swap makes the whole message GSM-7: in UCS-2 it saves nothing, and
            # '…' -> '...' would even make the message longer.
            if swapped != text and analyze(swapped).encoding is Encoding.GSM7:
                text = swapped
        sms = analyze(text)
        if sms.segments > MAX_PARTS:  # whatever the policy: no SMS can carry it
            raise TemplateError(
                f"{what} {verb} {sms.segments} segments; one SMS has at most {MAX_PARTS}:"
                " shorten it"
            )
        if sms.segments > self._max_segments:
            problem = (
                f"{what} {verb} {sms.segments} segments, over the limit of {self._max_segments}"
            )
            if self._segment_policy == "fail":
                raise TemplateError(f"{problem}: shorten it or raise SMSBOT_MAX_SEGMENTS")
            # Sizes only: the body is the recipient's private data.
            logger.warning(
                "%s (%s, %d units): shorten it or raise SMSBOT_MAX_SEGMENTS",
                problem,
                sms.encoding,
                sms.units,
            )
        return RenderedSms(text=text, encoding=sms.encoding, segments=sms.segments, template=name)

    def exists(self, name: str) -> bool:
        """Whether the template file `name` is there (it may still have syntax errors)."""
        try:
            self._source(name)
        except TemplateError:
            return False
        return True

    def names(self) -> list[str]:
        """Every template name under the directory, sorted; hidden files are left out."""
        return [
            name
            for name in self._env.list_templates()
            if not any(part.startswith(".") for part in name.split("/"))
        ]

    def undeclared_variables(self, name: str) -> set[str]:
        """Variables the template `name` reads from its context (not those of its includes)."""
        source, filename = self._source(name)
        try:
            ast = self._env.parse(source, name, filename)
        except jinja2.TemplateSyntaxError as exc:
            raise self._error(exc, name) from exc
        return jinja2.meta.find_undeclared_variables(ast) - set(self._env.globals)

    # --- internals ----------------------------------------------------------------------------

    def _render(
        self, template: jinja2.Template, context: Mapping[str, Any], zone: zoneinfo.ZoneInfo
    ) -> str:
        """`template.render(context)`, with one copy of the variables instead of three.

        Template.render copies them into a dict, then into another with the template's
        globals (a ChainMap, walked on every render); a bulk start renders a template per
        message. Here the globals are merged once (`_globals`) and the one dict is handed to
        the context as is (`shared=True`); the rest is what Template.render does (Jinja 3.1),
        including its rewriting of a template error's traceback. The Context is made here
        rather than by Template.new_context, which also lists the template's globals' names
        (1 of its 1.5 µs): Jinja reads that list only to import a template `with context`
        whose globals differ from the importer's, and all of ours share the environment's.
        """
        context_vars = {**self._globals, **context, _ZONE_KEY: zone}
        ctx = self._env.context_class(self._env, context_vars, template.name, template.blocks)
        try:
            return self._env.concat(template.root_render_func(ctx))
        except Exception:
            self._env.handle_exception()

    def _source(self, name: str) -> tuple[str, str | None]:
        loader = self._env.loader
        assert loader is not None  # set in __init__
        try:
            source, filename, _ = loader.get_source(self._env, name)
        except jinja2.TemplateNotFound as exc:
            raise self._error(exc, name) from exc
        return source, filename

    def _zone(self, timezone: str | zoneinfo.ZoneInfo, name: str | None) -> zoneinfo.ZoneInfo:
        if isinstance(timezone, zoneinfo.ZoneInfo):
            return timezone
        try:
            return iana_zone(timezone)
        except UnknownTimeZoneError:
            raise TemplateError(
                f"{_label(name)} was rendered for time zone {_shown(timezone)}, which is not an"
                " IANA time zone: use a name such as Europe/London or America/New_York"
            ) from None

    def _finish(self, text: str, name: str | None) -> RenderedSms:
        return self.check_text(text.strip(), name=name)

    def _template_name(self, filename: str, fallback: str | None) -> str | None:
        """Map a template file path back to its name, for errors raised inside an include."""
        if filename == "<template>":  # Jinja's filename for from_string() templates
            return None
        relative = os.path.relpath(filename, self._directory)
        return fallback if relative.startswith("..") else Path(relative).as_posix()

    def _error(self, exc: Exception, name: str | None) -> TemplateError:
        """Turn whatever rendering raised into a TemplateError that names the template."""
        if isinstance(exc, TemplateError):
            return exc
        if isinstance(exc, jinja2.TemplateNotFound):
            return TemplateError(
                f"template {exc.name!r} not found in {self._directory}/: create it or fix the name"
            )
        if isinstance(exc, jinja2.TemplateSyntaxError):
            where = _label(exc.name or name)
            return TemplateError(
                f"{where} has a syntax error on line {exc.lineno}: {_said(exc)}: fix the template"
            )
        line = ""
        if frame := _template_frame(exc):
            name = self._template_name(frame[0], name)
            line = f" on line {frame[1]}"
        if isinstance(exc, _MomentError):
            return TemplateError(f"{_label(name)}{line} {exc}")
        if isinstance(exc, jinja2.UndefinedError) and (
            match := _UNDEFINED_NAME.fullmatch(exc.message or "")
        ):
            variable = match[1]
            return TemplateError(
                f"{_label(name)} uses {variable!r}, which was not provided: pass it to"
                f" convo.reply(..., {variable}=...) or put it in the conversation data"
            )
        if isinstance(exc, jinja2.UndefinedError):
            return TemplateError(
                f"{_label(name)}{line} uses something that is not there ({_said(exc)}):"
                " check the names it uses against the values the flow passes"
            )
        return TemplateError(
            f"{_label(name)} failed{line}: {type(exc).__name__}: {_said(exc)}: fix the template or"
            " the values passed to it"
        )
