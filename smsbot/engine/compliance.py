"""Opt-out, opt-in and help words and their answers, per virtual number.

The rule (docs/compliance.md): the WHOLE message, normalised, must be the word. STOP, STOPALL,
STOP ALL, UNSUBSCRIBE, OPT OUT (also OPT-OUT, OPTOUT) and REVOKE always opt out. The softer
words CANCEL, END and QUIT opt out unless the active conversation's current state listens for
that exact word, which then gets it as a flow keyword. "STOP PLEASE" is not an opt-out; it is
routed like any message, and `Message.looks_like_opt_out` lets the answer say how to opt out.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping
from typing import Any

from smsbot.config import ConfigError
from smsbot.sms.keywords import normalize_keyword, starts_with

__all__ = ["ComplianceAction", "ComplianceAnswer", "ComplianceConfigError", "ComplianceRules"]

# With SOFT_OPT_OUT_WORDS these cover every reply the FCC names as revoking consent to texts,
# 47 CFR 64.1200(a)(10): stop, quit, end, revoke, opt out, cancel, unsubscribe. "OPT-OUT" and
# "opt_out" normalise to "opt out"; OPTOUT is the same word without its space.
OPT_OUT_WORDS = ("STOP", "STOPALL", "STOP ALL", "UNSUBSCRIBE", "OPT OUT", "OPTOUT", "REVOKE")
SOFT_OPT_OUT_WORDS = ("CANCEL", "END", "QUIT")
OPT_IN_WORDS = ("START", "UNSTOP")
HELP_WORDS = ("HELP", "INFO")

# {service} is replaced by the number's service name; nothing else is interpreted, so a
# compliance answer can never fail to render (a STOP must always be confirmed).
OPT_OUT_TEXT = (
    "You have been unsubscribed from {service} and will receive no more messages."
    " Reply START to resubscribe."
)
OPT_IN_TEXT = "You are subscribed to {service} again. Reply HELP for help or STOP to unsubscribe."
HELP_TEXT = "Automated messages from {service}. Reply STOP to unsubscribe, START to resubscribe."
SERVICE = "this service"

_WORD_KEYS = ("opt_out_words", "soft_opt_out_words", "opt_in_words", "help_words")
_TEXT_KEYS = ("opt_out_text", "opt_in_text", "help_text", "service")


class ComplianceConfigError(ConfigError):
    """A [numbers."…".compliance] table is invalid; the message names the key and the fix."""


class ComplianceAction(enum.StrEnum):
    """What a compliance word asks for."""

    OPT_OUT = "opt_out"
    SOFT_OPT_OUT = "soft_opt_out"  # opts out unless the current state listens for the word
    OPT_IN = "opt_in"
    HELP = "help"


@dataclasses.dataclass(frozen=True, slots=True)
class ComplianceAnswer:
    """What a compliance word does: the opt-out change, the word recorded, and the one reply."""

    opt_out: bool | None  # True: record an opt-out; False: remove it; None: unchanged (HELP)
    keyword: str
    reply: str | None  # None for a repeated STOP: an opt-out is confirmed once


def _words(where: str, key: str, value: object) -> frozenset[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(w, str) for w in value):
        raise ComplianceConfigError(f'{where}.{key} must be a list of words like ["STOP"]')
    try:
        return frozenset(normalize_keyword(word) for word in value)
    except ValueError as exc:
        raise ComplianceConfigError(f"{where}.{key}: {exc}") from None


@dataclasses.dataclass(frozen=True, slots=True)
class ComplianceRules:
    """The compliance words and answers of one virtual number (normalised words)."""

    opt_out_words: frozenset[str] = frozenset(map(normalize_keyword, OPT_OUT_WORDS))
    soft_opt_out_words: frozenset[str] = frozenset(map(normalize_keyword, SOFT_OPT_OUT_WORDS))
    opt_in_words: frozenset[str] = frozenset(map(normalize_keyword, OPT_IN_WORDS))
    help_words: frozenset[str] = frozenset(map(normalize_keyword, HELP_WORDS))
    opt_out_text: str = OPT_OUT_TEXT
    opt_in_text: str = OPT_IN_TEXT
    help_text: str = HELP_TEXT
    service: str = SERVICE

    @classmethod
    def from_config(cls, table: Mapping[str, Any] | None, *, where: str) -> ComplianceRules:
        """Build rules from a number's `compliance` table; missing keys keep the defaults."""
        if not table:
            return cls()
        if not isinstance(table, Mapping):
            raise ComplianceConfigError(f"{where} must be a table of words and texts")
        changes: dict[str, Any] = {}
        for key, value in table.items():
            if key in _WORD_KEYS:
                changes[key] = _words(where, key, value)
            elif key in _TEXT_KEYS:
                if not isinstance(value, str) or not value.strip():
                    raise ComplianceConfigError(f"{where}.{key} must be a non-empty string")
                changes[key] = value.strip()
            else:
                known = ", ".join((*_WORD_KEYS, *_TEXT_KEYS))
                raise ComplianceConfigError(f"unknown key {where}.{key}: use one of {known}")
        rules = cls(**changes)
        rules._check_overlaps(where)
        return rules

    def _check_overlaps(self, where: str) -> None:
        groups = {key: getattr(self, key) for key in _WORD_KEYS}
        for i, (key, words) in enumerate(groups.items()):
            for other, other_words in list(groups.items())[i + 1 :]:
                if both := sorted(words & other_words):
                    raise ComplianceConfigError(
                        f"{where}: {', '.join(w.upper() for w in both)} is in both {key} and"
                        f" {other}: a word can mean only one thing"
                    )

    def classify(self, normalized: str) -> ComplianceAction | None:
        """Return what the whole normalised message asks for, or None if it is no such word."""
        if normalized in self.opt_out_words:
            return ComplianceAction.OPT_OUT
        if normalized in self.soft_opt_out_words:
            return ComplianceAction.SOFT_OPT_OUT
        if normalized in self.opt_in_words:
            return ComplianceAction.OPT_IN
        if normalized in self.help_words:
            return ComplianceAction.HELP
        return None

    def looks_like_opt_out(self, normalized: str) -> bool:
        """Whether a message that is not itself an opt-out word starts with one ("stop please")."""
        words = self.opt_out_words | self.soft_opt_out_words
        return normalized not in words and any(starts_with(normalized, w) for w in words)

    def answer(
        self, action: ComplianceAction, normalized: str, *, opted_out: bool
    ) -> ComplianceAnswer:
        """What `action` does for a phone that has (or has not) already opted out.

        A SOFT_OPT_OUT reaching here opts out: the caller has found no state listening for it.
        """
        keyword = normalized.upper()
        if action is ComplianceAction.HELP:
            return ComplianceAnswer(None, keyword, self.text_for(action))
        if action is ComplianceAction.OPT_IN:
            return ComplianceAnswer(False, keyword, self.text_for(action))
        return ComplianceAnswer(True, keyword, None if opted_out else self.text_for(action))

    def text_for(self, action: ComplianceAction) -> str:
        """The answer to `action`, with {service} filled in."""
        text = {
            ComplianceAction.OPT_OUT: self.opt_out_text,
            ComplianceAction.SOFT_OPT_OUT: self.opt_out_text,
            ComplianceAction.OPT_IN: self.opt_in_text,
            ComplianceAction.HELP: self.help_text,
        }[action]
        return text.replace("{service}", self.service)

    @property
    def reserved_words(self) -> Iterable[str]:
        """Words no flow state can ever receive: they always mean opt-out, opt-in or help."""
        return self.opt_out_words | self.opt_in_words | self.help_words
