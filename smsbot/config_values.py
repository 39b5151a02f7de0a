"""What a setting may hold: converters from text, secrets, durations and database URLs.

Each converter turns a setting's text into its value or raises ValueError saying what the
setting must be; config.Settings declares its fields with `setting()` and these converters.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hmac
import re
import zoneinfo
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import phonenumbers

from smsbot.engine.quiet_hours import parse_window


class ConfigError(Exception):
    """A setting is missing or invalid; the message names it and says how to fix it."""


def port_in_use(port: int, setting: str) -> ConfigError:
    """The error for a port something else listens on: it names the port and the setting."""
    return ConfigError(f"port {port} is in use: stop what uses it or set {setting}")


class Secret:
    """A secret string that shows itself only through .get(), never in repr, str or f-strings."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        """Return the secret value."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Secret):
            other = other._value
        if not isinstance(other, str):
            return NotImplemented
        # Constant time, so checking a caller's token does not reveal how much of it matched;
        # surrogatepass, so a token decoded with surrogateescape compares instead of raising.
        mine, theirs = (v.encode("utf-8", "surrogatepass") for v in (self._value, other))
        return hmac.compare_digest(mine, theirs)

    def __hash__(self) -> int:
        return hash(self._value)


# --- converters: text -> value, or ValueError(what the setting must be) ---------------------

Convert = Callable[[str], Any]


def checked(expected: str, check: Callable[[str], object]) -> Convert:
    """A converter that keeps the text if `check` passes and does not raise."""

    def convert(text: str) -> str:
        try:
            ok = check(text)
        except (ValueError, LookupError, OSError):  # ZoneInfoNotFoundError is a KeyError
            ok = False
        if not ok:
            raise ValueError(expected)
        return text

    return convert


def int_between(low: int, high: int) -> Convert:
    def convert(text: str) -> int:
        if not (re.fullmatch(r"[+-]?[0-9]{1,12}", text) and low <= int(text) <= high):
            raise ValueError(f"an integer between {low} and {high}")
        return int(text)

    return convert


def positive_float(text: str) -> float:
    if not re.fullmatch(r"[0-9]+(\.[0-9]*)?|\.[0-9]+", text) or float(text) <= 0:
        raise ValueError("a number greater than 0")
    return float(text)


_BOOLS = dict.fromkeys(("true", "1", "yes", "on"), True)
_BOOLS |= dict.fromkeys(("false", "0", "no", "off"), False)


def boolean(text: str) -> bool:
    if text.lower() not in _BOOLS:
        raise ValueError("one of true/false, 1/0, yes/no, on/off")
    return _BOOLS[text.lower()]


def choice(*choices: str) -> Convert:
    """A converter to one of `choices`, in any case (`debug` is DEBUG, `Sandbox` is sandbox)."""
    canonical = {choice.lower(): choice for choice in choices}

    def convert(text: str) -> str:
        if text.lower() not in canonical:
            raise ValueError("one of " + ", ".join(choices))
        return canonical[text.lower()]

    return convert


def http_url(text: str) -> str:
    try:
        parts = urlsplit(text)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a bad port or IPv6 literal
        ok = False
    if not ok:
        raise ValueError("an http(s) URL such as https://api.example.com")
    return text.rstrip("/")  # clients append "/sms/send" and the like


# Group 2 is the password in the user info: up to the last '@', so a stray '@' over-masks.
_URL_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:/@]*:)(.*)@")
_QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)[^&]*")


def mask_url(url: str) -> str:
    """Return `url` with any password replaced by ***, for repr and error messages."""
    return _QUERY_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", url, count=1))


_ASYNC_DRIVER = dict.fromkeys(("sqlite", "sqlite+aiosqlite"), "sqlite+aiosqlite")
_ASYNC_DRIVER |= dict.fromkeys(
    ("postgresql", "postgres", "postgresql+psycopg", "postgresql+asyncpg"), "postgresql+asyncpg"
)


def rename_query(rest: str, old: str, new: str) -> str:
    base, sep, query = rest.partition("?")
    return base + sep + re.sub(rf"(^|&){old}=", rf"\g<1>{new}=", query)


def db_url(text: str) -> str:
    scheme, _, rest = text.partition("://")
    driver = _ASYNC_DRIVER.get(scheme.lower(), "") if rest else ""
    if not driver or (driver.startswith("sqlite") and not rest.startswith("/")):
        raise ValueError(
            "sqlite:///path/to/file.db or postgresql://user:password@host/db (postgres://,"
            " postgresql+psycopg://, postgresql+asyncpg:// and sqlite+aiosqlite:// also work)"
        )
    if driver == "postgresql+asyncpg":  # asyncpg spells libpq's sslmode= as ssl=
        rest = rename_query(rest, "sslmode", "ssl")
    return f"{driver}://{rest}"


def quiet_hours_window(text: str) -> str:
    parse_window(text)  # its ValueError says what was expected
    return text.strip()


_DURATION = re.compile(r"(?:([0-9]{1,6})d)?(?:([0-9]{1,7})h)?(?:([0-9]{1,9})m)?(?:([0-9]{1,10})s)?")


def parse_duration(text: str) -> dt.timedelta:
    """Parse "7d", "12h", "30m", "3600s", "1d12h" or bare seconds; ValueError if not positive."""
    # Bare digits are seconds only on their own: "1h30" is likelier a typo than 1h + 30s.
    match = _DURATION.fullmatch(text.lower() + ("s" if text.isdecimal() else ""))
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups()) if match else (0,) * 4
    value = dt.timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    if value <= dt.timedelta(0):
        raise ValueError("a positive duration such as 7d, 12h, 30m, 3600s or 3600")
    return value


provider_name = choice("sandbox", "divergent", "puresms")
segment_policy_name = choice("warn", "fail")
log_level_name = choice("DEBUG", "INFO", "WARNING", "ERROR")
region_code = checked(
    "a two-letter ISO 3166 code such as GB (not UK) or US",
    phonenumbers.SUPPORTED_REGIONS.__contains__,
)
zone_name = checked("an IANA time zone such as Europe/London or UTC", zoneinfo.ZoneInfo)


def setting(env: str, default: Any, convert: Convert = str) -> Any:
    """Declare a Settings field read from the environment variable `env`."""
    return dataclasses.field(default=default, metadata={"env": env, "convert": convert})
