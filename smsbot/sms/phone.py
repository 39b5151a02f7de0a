"""Phone numbers to E.164, sender IDs, and where a number is: smsbot's one number parser."""

from __future__ import annotations

import collections
import functools
import re

import phonenumbers
from phonenumbers import timezone as pn_timezone
from phonenumbers.tzdata import TIMEZONE_DATA

__all__ = [
    "PhoneNumberError",
    "normalize",
    "normalize_sender",
    "region_of",
    "time_zones_of",
]

_EXAMPLE = "+447700900123"
_MAX_LEN = 32  # E.164 is at most 16 chars with the plus; 32 leaves room for spaces and brackets
# Letters are refused outright: phonenumbers would otherwise read vanity numbers ("0800 FLOWERS")
# and extensions ("x5", "ext 5"), neither of which can receive an SMS.
_PHONE_CHARS = re.compile(r"\+?[0-9 ().\-/]+")
_SENDER_ID = re.compile(r"[A-Za-z0-9 ]{1,11}")
_SPACES = re.compile(r"\s+")
_NON_DIGITS = re.compile(r"[^0-9]")
_LETTER = re.compile(r"[A-Za-z]")
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
_UNKNOWN_TZ = "Etc/Unknown"
_NON_GEO_REGION = "001"  # phonenumbers' region for +800, +808, +870, ...

_REASONS = {
    phonenumbers.ValidationResult.TOO_SHORT: "too short",
    phonenumbers.ValidationResult.TOO_LONG: "too long",
    phonenumbers.ValidationResult.INVALID_LENGTH: "the wrong length",
    phonenumbers.ValidationResult.INVALID_COUNTRY_CODE: "not a known country code",
    phonenumbers.ValidationResult.IS_POSSIBLE_LOCAL_ONLY: "a local number without an area code",
}
_PARSE_ERRORS = {
    phonenumbers.NumberParseException.INVALID_COUNTRY_CODE: "not a known country code",
    phonenumbers.NumberParseException.TOO_SHORT_AFTER_IDD: "too short",
    phonenumbers.NumberParseException.TOO_SHORT_NSN: "too short",
    phonenumbers.NumberParseException.TOO_LONG: "too long",
}


class PhoneNumberError(ValueError):
    """A string that is not a usable phone number (or sender); the message says how to fix it."""


def _shown(raw: object) -> str:
    # Keep error messages readable (and log lines short) whatever a caller passes in.
    text = repr(raw)
    return text if len(text) <= 40 else text[:37] + "..."


def _not_a_number(raw: str, why: str = "") -> PhoneNumberError:
    detail = f" ({why})" if why else ""
    return PhoneNumberError(
        f"{_shown(raw)} is not a phone number{detail}: "
        f"give it in international form like {_EXAMPLE}"
    )


def _check_region(region: str) -> str:
    code = region.upper() if isinstance(region, str) else ""
    if code not in phonenumbers.SUPPORTED_REGIONS:
        raise PhoneNumberError(
            f"{_shown(region)} is not a region code: use an ISO 3166 alpha-2 code like 'GB' or 'US'"
        )
    return code


def _parse_possible(text: str, region: str | None) -> tuple[str | None, str]:
    """Parse `text`; return (E.164, "") if it is a possible number, else (None, why not)."""
    if _E164.fullmatch(text) and (number := _possible_e164(text)) is not None:
        return number, ""
    return _parse_possible_by_phonenumbers(text, region)


def _parse_possible_by_phonenumbers(text: str, region: str | None) -> tuple[str | None, str]:
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as exc:
        return None, _PARSE_ERRORS.get(exc.error_type, "")
    reason = phonenumbers.is_possible_number_with_reason(number)
    # Only IS_POSSIBLE: is_possible_number() also passes IS_POSSIBLE_LOCAL_ONLY numbers (e.g. a
    # bare 5-digit local number), which cannot be written in E.164 and so cannot be texted.
    if reason != phonenumbers.ValidationResult.IS_POSSIBLE:
        return None, _REASONS.get(reason, "")
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)), ""


# A number already in E.164 form ("+447700900123": a bulk file's, an API caller's) is what
# phonenumbers.parse would make of it, unless its country strips a national prefix or carrier
# code from what follows the country code. `_possible_e164` answers those numbers without the
# parse (~3 µs against ~12): the country code found as parse finds it (the shortest known
# prefix of 1-3 digits), and only where its metadata's national_prefix_for_parsing is absent or
# a choice of plain digit strings (44: "0|180020") that the rest does not begin with, nor with
# a 0 (kept as Italian leading zeros). The length check is phonenumbers' own, on the number
# parse would build. Any other number, and every refusal, takes the whole parse
# (tests/test_phone.py compares the two on numbers of every country code).
def _possible_e164(text: str) -> str | None:
    """`text` (strict E.164) if it is possible and parses to itself; None: ask phonenumbers."""
    digits = text[1:]
    for size in (1, 2, 3):
        code = int(digits[:size])
        if code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            rest = digits[size:]
            break
    else:
        return None
    prefixes = _national_prefixes(code)
    if prefixes is None or not 2 <= len(rest) <= _MAX_NSN or rest.startswith(("0", *prefixes)):
        return None
    number = phonenumbers.PhoneNumber(country_code=code, national_number=int(rest))
    if (
        phonenumbers.is_possible_number_with_reason(number)
        != phonenumbers.ValidationResult.IS_POSSIBLE
    ):
        return None  # the whole parse says why
    return text


_MAX_NSN = 17  # phonenumbers' _MAX_LENGTH_FOR_NSN


@functools.cache  # one country's metadata at a time, as parse loads it: not all (~1.5 MB)
def _national_prefixes(code: int) -> tuple[str, ...] | None:
    """The country code's national prefixes for parsing when they are plain digit strings;
    None when its rule is a pattern or a rewrite (parse decides)."""
    region = phonenumbers.region_code_for_country_code(code)
    meta = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(code, region)
    if meta is None or meta.national_prefix_transform_rule:
        return None
    pattern = meta.national_prefix_for_parsing
    if not pattern:
        return ()
    if re.fullmatch(r"[0-9]+(\|[0-9]+)*", pattern):
        return tuple(pattern.split("|"))
    return None


@functools.lru_cache(maxsize=4096)  # webhooks normalise the same few senders over and over
def _normalize(raw: str, region: str) -> str:
    if not _PHONE_CHARS.fullmatch(raw):
        raise _not_a_number(raw, "only digits, spaces, a leading + and ( ) - . / are allowed")
    digits = _NON_DIGITS.sub("", raw)
    if not digits:
        raise _not_a_number(raw)

    # 1. As written, national numbers read in `region` ("07700 900123", "+44 (0)7700 900123",
    #    and "00..." when 00 is the region's own international prefix).
    e164, why = _parse_possible(raw, region)
    if e164 is not None:
        return e164
    if raw.startswith("+"):
        raise _not_a_number(raw, why)

    # 2. "00" is the international prefix almost everywhere, even where the region's own prefix
    #    differs (011 in the US), so "00447700900123" means +44 whatever `region` says.
    if digits.startswith("00"):
        e164, _ = _parse_possible("+" + digits[2:], None)
        if e164 is not None:
            return e164

    # 3. International form missing its plus ("447700900123"): only when the national reading
    #    was not possible, so real national numbers always win.
    e164, _ = _parse_possible("+" + digits, None)
    if e164 is not None:
        return e164
    raise _not_a_number(raw, why)


def normalize(raw: str, region: str = "GB") -> str:
    """Return `raw` as an E.164 string ('+447700900123'); national numbers are read in `region`."""
    code = _check_region(region)
    if not isinstance(raw, str):
        raise _not_a_number(raw, f"expected a string, got {type(raw).__name__}")
    text = raw.strip()
    if not text:
        raise _not_a_number(raw, "it is empty")
    if len(text) > _MAX_LEN:
        raise _not_a_number(raw, f"longer than {_MAX_LEN} characters")
    # phonenumbers refuses tabs and no-break spaces (common in pasted numbers) but takes spaces.
    text = _SPACES.sub(" ", text)
    # Possible, not valid: Ofcom's drama/test ranges (07700 900xxx) fail is_valid_number() by
    # design yet must work in tests and demos, and numbering plans change faster than metadata.
    return _normalize(text, code)


def normalize_sender(raw: str, region: str = "GB") -> str:
    """Return a sender as E.164, or as an alphanumeric sender ID (1-11 of A-Z a-z 0-9 space)."""
    code = _check_region(region)
    text = raw.strip() if isinstance(raw, str) else ""
    # An ID needs a letter: an all-digit string is a number, and must parse as one.
    if _SENDER_ID.fullmatch(text) and _LETTER.search(text):
        return text
    try:
        return normalize(text, code)
    except PhoneNumberError:
        pass
    raise PhoneNumberError(
        f"{_shown(raw)} is not a valid sender: give a phone number like {_EXAMPLE}, or an "
        "alphanumeric sender ID of 1-11 letters, digits and spaces with at least one letter"
    )


def _parse_e164(e164: str) -> phonenumbers.PhoneNumber:
    if not isinstance(e164, str) or not _E164.fullmatch(e164):
        raise PhoneNumberError(
            f"{_shown(e164)} is not an E.164 number: "
            "pass it through smsbot.sms.phone.normalize() first"
        )
    try:
        return phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException as exc:
        raise _not_a_number(e164, "not a known country code") from exc


def region_of(e164: str) -> str | None:
    """Return the ISO region ('GB') an E.164 number belongs to, or None if it has none."""
    number = _parse_e164(e164)
    found = phonenumbers.region_code_for_number(number)
    if found is None:
        # Possible-but-invalid numbers (drama/test ranges) match no region's patterns; the
        # country code's main region is the best answer we have, and right for 07700 900xxx.
        found = phonenumbers.region_code_for_country_code(number.country_code or 0)
    region = str(found)
    return None if region in (_NON_GEO_REGION, "ZZ") else region


def country_zones(e164: str) -> tuple[str, ...]:
    """Every IANA zone a number with this one's country code may be in, most-listed first."""
    for length in (1, 2, 3):  # country codes are prefix-free: the first known one is it
        code = e164[1 : 1 + length]
        if code.isdigit() and int(code) in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            return _country_zones(code)
    return ()


@functools.cache
def _country_zones(code: str) -> tuple[str, ...]:
    listed: collections.Counter[str] = collections.Counter()
    for prefix, zones in TIMEZONE_DATA.items():
        if prefix.startswith(code):
            listed.update(zone for zone in zones if zone != _UNKNOWN_TZ)
    return tuple(sorted(listed, key=lambda zone: (-listed[zone], zone)))


def time_zones_of(e164: str) -> list[str]:
    """Return the IANA time zones an E.164 number may be in; [] when unknown."""
    return list(_time_zones(e164))


@functools.lru_cache(maxsize=65_536)
def _time_zones(e164: str) -> tuple[str, ...]:
    # Cached: phonenumbers classifies the number against dozens of patterns first, and the
    # same phones come back step after step (every reply renders times in their zone).
    number = _parse_e164(e164)
    zones = pn_timezone.time_zones_for_number(number)
    if _UNKNOWN_TZ in zones:
        # time_zones_for_number() gives up on invalid numbers; the prefix table still knows the
        # country (or area), which is what a drama number needs for quiet-hours checks.
        zones = pn_timezone.time_zones_for_geographical_number(number)
    return tuple(sorted(str(zone) for zone in zones if zone != _UNKNOWN_TZ))
