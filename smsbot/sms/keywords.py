"""Keyword normalisation and matching: the one place smsbot decides what "the word YES" means.

A message matches a keyword when, after normalize_text(), the whole message is the keyword or
starts with it as whole words: "yes please!" matches YES, "Y." matches Y, "STOP ALL" matches
STOP ALL, and "yesterday" matches nothing.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

__all__ = ["first_word", "match_keyword", "normalize_keyword", "normalize_text", "starts_with"]

# Apostrophes join their word ("don't" -> "dont"); every other punctuation mark or symbol
# (emoji included) separates words, so "yes,please" is two words.
_APOSTROPHES = frozenset("'\u2018\u2019\u02bc`\u00b4")


def normalize_text(text: str) -> str:
    """Casefold, drop punctuation and symbols, collapse spaces: " Yes, PLEASE! " -> "yes please"."""
    # NFKC first so full-width letters and compatibility forms match their plain spelling.
    folded = unicodedata.normalize("NFKC", text).casefold()
    out: list[str] = []
    for ch in folded:
        if ch in _APOSTROPHES:
            continue
        category = unicodedata.category(ch)
        if category[0] in "PSZC":  # punctuation, symbols, separators, controls
            out.append(" ")
        else:
            out.append(ch)
    return " ".join("".join(out).split())


def normalize_keyword(word: str) -> str:
    """Normalise a keyword as written in code or config; raise ValueError if nothing is left."""
    normal = normalize_text(word)
    if not normal:
        raise ValueError(f"{word!r} is not a keyword: give a word such as YES or STOP ALL")
    return normal


def first_word(normalized: str) -> str:
    """Return the first word of normalised text ("" for an empty message)."""
    return normalized.split(" ", 1)[0]


def starts_with(normalized: str, keyword: str) -> bool:
    """Whether normalised text is `keyword` (normalised) or begins with it as whole words."""
    return normalized == keyword or normalized.startswith(keyword + " ")


def match_keyword(normalized: str, keywords: Iterable[str]) -> str | None:
    """Return the longest of the normalised `keywords` that the normalised text starts with."""
    # Longest first, so "stop all" beats "stop" and a two-word keyword is not shadowed.
    best: str | None = None
    for keyword in keywords:
        if starts_with(normalized, keyword) and (best is None or len(keyword) > len(best)):
            best = keyword
    return best
