"""What `smsbot check` found: findings with a place and a fix, the options, the report."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from typing import Any, Literal

from smsbot.engine.compliance import OPT_OUT_WORDS

Severity = Literal["error", "warning"]


@dataclasses.dataclass(frozen=True, slots=True)
class Finding:
    """One problem: how bad, which check, where (file and line), and what, ending with the fix."""

    severity: Severity
    check: str  # a short name, e.g. "unreachable-state"; docs/writing-flows.md lists them
    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = _relative(self.file) + (f":{self.line}" if self.line else "")
        return f"{where}: {self.severity}: {self.message} [{self.check}]"

    def as_json(self) -> dict[str, Any]:
        """The finding as `smsbot check --format json` prints it."""
        return {**dataclasses.asdict(self), "file": _relative(self.file)}


@dataclasses.dataclass(frozen=True, slots=True)
class CheckOptions:
    """What the warnings measure against; `smsbot check` takes them from flags and settings."""

    segment_limit: int = 2  # warn when a template can take more segments than this
    text_length: int = 20  # the length assumed for a text value without Length(max=...)
    opt_out_words: tuple[str, ...] = OPT_OUT_WORDS  # what counts as saying how to opt out
    smart_characters: bool = True  # SMSBOT_SMART_CHARACTERS: smart quotes become GSM-7
    conversation_expiry: dt.timedelta = dt.timedelta(days=7)  # SMSBOT_CONVERSATION_EXPIRY


@dataclasses.dataclass(slots=True)
class Report:
    """Every finding of one run, and what was looked at."""

    findings: list[Finding]
    flows: list[str]
    templates: list[str]

    @property
    def errors(self) -> list[Finding]:
        """The findings that make `smsbot check` fail."""
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        """The findings worth fixing that do not fail the check."""
        return [f for f in self.findings if f.severity == "warning"]

    def summary(self) -> str:
        """One line: how many errors and warnings in how many flows and templates."""
        return (
            f"{_count(len(self.errors), 'error')}, {_count(len(self.warnings), 'warning')} in"
            f" {_count(len(self.flows), 'flow')} and {_count(len(self.templates), 'template')}"
        )

    def text(self) -> str:
        """Errors first, then warnings, each sorted by place; a summary line last."""
        ordered = sorted(
            self.findings, key=lambda f: (f.severity != "error", f.file, f.line or 0, f.message)
        )
        return "\n".join([*map(str, ordered), self.summary()]) + "\n"

    def as_json(self) -> dict[str, Any]:
        """The report as `smsbot check --format json` prints it."""
        return {
            "ok": not self.errors,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "flows": self.flows,
            "templates": self.templates,
            "findings": [f.as_json() for f in self.findings],
        }


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _relative(path: str) -> str:
    """`path` relative to the working directory when it is under it (shorter to read)."""
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return path
    return path if relative.startswith("..") else relative
