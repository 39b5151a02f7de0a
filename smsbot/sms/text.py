"""SMS encodings and segment counting, per GSM 03.38 and 3GPP TS 23.040."""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass

__all__ = ["MAX_PARTS", "Encoding", "SmsText", "analyze", "split_parts", "to_gsm"]


class Encoding(enum.StrEnum):
    """How a message travels: 7-bit GSM default alphabet, or 16-bit UCS-2 (UTF-16)."""

    GSM7 = "GSM-7"
    UCS2 = "UCS-2"


# GSM 03.38 default alphabet, in table order (0x00-0x7F). 0x1B is the escape to the extension
# table, not a character, so it is left out. 0x09 is capital Ç: handsets decode it that way,
# so lowercase ç is not GSM-7.
_GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
# Extension table: each is sent as ESC + char, so costs two septets.
_GSM_EXTENDED = frozenset("\f^{}\\[~]|€")
_GSM_ALL = _GSM_BASIC | _GSM_EXTENDED

# Per-message capacity (140 bytes). Each part of a concatenated message carries a 6-byte user
# data header: 48 bits, padded to 7 septets (160 - 7 = 153) or 3 UCS-2 units (70 - 3 = 67).
_SINGLE = {Encoding.GSM7: 160, Encoding.UCS2: 70}
# A concatenated SMS numbers its parts in one byte of that header: no message has more parts.
MAX_PARTS = 255
_PART = {Encoding.GSM7: 153, Encoding.UCS2: 67}
_BMP_MAX = 0xFFFF


@dataclass(frozen=True, slots=True)
class SmsText:
    """A message body with its encoding, size in units and number of SMS segments."""

    text: str
    encoding: Encoding
    units: int  # septets for GSM-7 (escapes count two), UTF-16 code units for UCS-2
    segments: int

    @property
    def parts(self) -> list[str]:
        """The text cut as it will be sent: one string per segment, joining back to the text."""
        return _split(self.text, self.encoding, self.units)


def _cost(ch: str, encoding: Encoding) -> int:
    if encoding is Encoding.GSM7:
        return 2 if ch in _GSM_EXTENDED else 1
    return 2 if ord(ch) > _BMP_MAX else 1


def _split(text: str, encoding: Encoding, units: int) -> list[str]:
    if units <= _SINGLE[encoding]:
        return [text]
    limit = _PART[encoding]
    # Greedy, character by character: a character is never cut, so an escape pair or a
    # surrogate pair that would straddle the limit moves whole to the next part.
    parts: list[str] = []
    start = used = 0
    for i, ch in enumerate(text):
        cost = _cost(ch, encoding)
        if used + cost > limit:
            parts.append(text[start:i])
            start, used = i, 0
        used += cost
    parts.append(text[start:])
    return parts


def _units(text: str, encoding: Encoding, chars: set[str]) -> tuple[int, bool]:
    """Return (units, whether any character costs two units)."""
    if encoding is Encoding.GSM7:
        extra = sum(text.count(ch) for ch in chars & _GSM_EXTENDED)
    elif text.isascii():
        extra = 0
    else:
        # 'surrogatepass' so a stray lone surrogate counts as one unit instead of raising.
        extra = len(text.encode("utf-16-le", "surrogatepass")) // 2 - len(text)
    return len(text) + extra, extra > 0


def analyze(text: str) -> SmsText:
    """Work out the encoding, size and segment count of `text` as an SMS."""
    if len(text) <= _REMEMBERED_CHARS:
        return _analyzed(text)
    return _analyze(text)


# A reply is analysed when its template is rendered (SmsTemplates.check_text) and again when
# its row is built (pipeline/step_rows): in one process, a step batch or a bulk chunk apart.
# The last texts' answers are kept, which saves about 4 µs a message: at most this many texts
# of at most 1,600 characters (ten segments' worth), a few megabytes in the worst case.
_REMEMBERED = 1024
_REMEMBERED_CHARS = 1600


@functools.lru_cache(maxsize=_REMEMBERED)
def _analyzed(text: str) -> SmsText:
    return _analyze(text)


# Any character but the ASCII ones of the basic table (one septet each): most messages have
# none, and are then GSM-7 at one unit a character, found without a set of their characters
# (0.4 µs against 2.6 for a 150-character text).
_NOT_ONE_SEPTET_ASCII = re.compile(
    "[^" + re.escape("".join(sorted(ch for ch in _GSM_BASIC if ch.isascii()))) + "]"
)


def _analyze(text: str) -> SmsText:
    if text.isascii() and _NOT_ONE_SEPTET_ASCII.search(text) is None:
        units = len(text)
        segments = 1 if units <= _SINGLE[Encoding.GSM7] else -(-units // _PART[Encoding.GSM7])
        return SmsText(text=text, encoding=Encoding.GSM7, units=units, segments=segments)
    return _analyze_by_chars(text)


def _analyze_by_chars(text: str) -> SmsText:
    chars = set(text)
    encoding = Encoding.GSM7 if chars <= _GSM_ALL else Encoding.UCS2
    units, has_wide = _units(text, encoding, chars)
    if units <= _SINGLE[encoding]:
        segments = 1
    elif not has_wide:
        # Every character costs one unit, so no pair can straddle a boundary: plain arithmetic.
        segments = -(-units // _PART[encoding])
    else:
        segments = len(_split(text, encoding, units))
    return SmsText(text=text, encoding=encoding, units=units, segments=segments)


def split_parts(text: str) -> list[str]:
    """Cut `text` into the parts it would be sent as; ''.join(parts) == text."""
    return analyze(text).parts


# Typographic characters that word processors and phone keyboards put in, each with a GSM-7
# look-alike. One character in, one or more out: nothing is ever dropped.
_SMART = {
    "\u2018": "'",  # left single quote
    "\u2019": "'",  # right single quote / apostrophe
    "\u201a": "'",  # single low-9 quote
    "\u201b": "'",  # single high-reversed-9 quote
    "\u2032": "'",  # prime
    "\u2039": "'",  # single left angle quote
    "\u203a": "'",  # single right angle quote
    "\u00b4": "'",  # acute accent
    "`": "'",  # backtick: ASCII but not GSM-7
    "\u201c": '"',  # left double quote
    "\u201d": '"',  # right double quote
    "\u201e": '"',  # double low-9 quote
    "\u201f": '"',  # double high-reversed-9 quote
    "\u2033": '"',  # double prime
    "\u00ab": '"',  # left guillemet
    "\u00bb": '"',  # right guillemet
    "\u2010": "-",  # hyphen
    "\u2011": "-",  # non-breaking hyphen
    "\u2012": "-",  # figure dash
    "\u2013": "-",  # en dash
    "\u2014": "-",  # em dash
    "\u2015": "-",  # horizontal bar
    "\u2212": "-",  # minus sign
    "\u2022": "-",  # bullet
    "\u2043": "-",  # hyphen bullet
    "\u00b7": ".",  # middle dot
    "\u2026": "...",  # ellipsis
    "\t": " ",
    "\u00a0": " ",  # no-break space
    "\u2002": " ",  # en space
    "\u2003": " ",  # em space
    "\u2007": " ",  # figure space
    "\u2008": " ",  # punctuation space
    "\u2009": " ",  # thin space
    "\u200a": " ",  # hair space
    "\u202f": " ",  # narrow no-break space
    "\u205f": " ",  # medium mathematical space
    "\u3000": " ",  # ideographic space
}
_SMART_TABLE = str.maketrans(_SMART)
_SMART_CHARS = frozenset(_SMART)
_SMART_ASCII = re.compile("[" + re.escape("".join(ch for ch in _SMART if ch.isascii())) + "]")


def to_gsm(text: str) -> str:
    """Swap smart quotes, dashes, ellipses and odd spaces for GSM-7 look-alikes; drop nothing."""
    if text.isascii() and _SMART_ASCII.search(text) is None:
        return text  # the common case: nothing to swap, no new string
    if _SMART_CHARS.isdisjoint(text):
        return text  # nothing to swap, no new string
    return text.translate(_SMART_TABLE)
