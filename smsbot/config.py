"""Settings: one typed, frozen object from SMSBOT_* environment variables and smsbot.toml.

Precedence: environment variable, then the TOML file (./smsbot.toml, or the path in
SMSBOT_CONFIG), then the default. An empty value counts as unset. Every error names the
setting and the fix, and never contains a secret or a database password.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import hmac
import math
import os
import re
import tomllib
import zoneinfo
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import phonenumbers

ENV_PREFIX = "SMSBOT_"
DEFAULT_TOML = Path("smsbot.toml")
# Read by tests and tools rather than by Settings, so they are not typos.
_ENV_NOT_SETTINGS = frozenset({"SMSBOT_CONFIG", "SMSBOT_SHARED_DIR"})
_ENV_NOT_SETTINGS_PREFIX = "SMSBOT_TEST_"

Provider = Literal["sandbox", "divergent", "puresms"]


class ConfigError(Exception):
    """A setting is missing or invalid; the message names it and says how to fix it."""


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
        # Constant time, so checking a caller's token does not reveal how much of it matched.
        return hmac.compare_digest(self._value.encode(), other.encode())

    def __hash__(self) -> int:
        return hash(self._value)


# --- converters: (label, text) -> value; label is "SMSBOT_PORT" or "port in smsbot.toml" ----

_Convert = Callable[[str, str], Any]


def _bad(label: str, expected: str, shown: str) -> ConfigError:
    return ConfigError(f"{label} must be {expected}, got {shown!r}")


def _text(label: str, text: str) -> str:
    return text


def _secret(label: str, text: str) -> Secret:
    return Secret(text)


def _path(label: str, text: str) -> Path:
    return Path(text)


def _int(low: int, high: int) -> _Convert:
    def convert(label: str, text: str) -> int:
        value = int(text) if re.fullmatch(r"[+-]?[0-9]{1,12}", text) else None
        if value is None or not low <= value <= high:
            raise _bad(label, f"an integer between {low} and {high}", text)
        return value

    return convert


def _positive_float(label: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise _bad(label, "a number greater than 0", text)
    return value


_BOOLS = {"true": True, "1": True, "yes": True, "on": True}
_BOOLS |= {"false": False, "0": False, "no": False, "off": False}


def _bool(label: str, text: str) -> bool:
    if text.lower() not in _BOOLS:
        raise _bad(label, "one of true/false, 1/0, yes/no, on/off", text)
    return _BOOLS[text.lower()]


def _choice(*choices: str) -> _Convert:
    def convert(label: str, text: str) -> str:
        for choice in choices:
            if text.lower() == choice.lower():
                return choice
        raise _bad(label, "one of " + ", ".join(choices), text)

    return convert


# Group 2 is a password in the URL's user info: up to the last '@', so a stray '@' over-masks.
_URL_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:/@]*:)(.*)@")
_QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)[^&]*")


def _mask_url(url: str) -> str:
    """Return `url` with any password replaced by ***, for repr and error messages."""
    return _QUERY_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", url, count=1))


def _http_url(label: str, text: str) -> str:
    try:
        parts = urlsplit(text)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a bad port or IPv6 literal
        ok = False
    if not ok:
        raise _bad(label, "an http(s) URL such as https://api.example.com", _mask_url(text))
    return text.rstrip("/")  # clients append "/sms/send" etc.


_ASYNC_DRIVER = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+psycopg": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}


def _rename_query(rest: str, old: str, new: str) -> str:
    base, sep, query = rest.partition("?")
    return base + sep + re.sub(rf"(^|&){old}=", rf"\g<1>{new}=", query)


def _database_url(label: str, text: str) -> str:
    scheme, sep, rest = text.partition("://")
    driver = _ASYNC_DRIVER.get(scheme.lower()) if sep else None
    if driver is None or not rest or (driver.startswith("sqlite") and not rest.startswith("/")):
        raise ConfigError(
            f"{label} must be sqlite:///path/to/file.db or postgresql://user:password@host/db"
            f" (postgres://, postgresql+psycopg://, postgresql+asyncpg:// and sqlite+aiosqlite://"
            f" are also accepted), got {_mask_url(text)!r}"
        )
    if driver == "postgresql+asyncpg":  # asyncpg spells libpq's sslmode= as ssl=
        rest = _rename_query(rest, "sslmode", "ssl")
    return f"{driver}://{rest}"


def _region(label: str, text: str) -> str:
    if text.upper() not in phonenumbers.SUPPORTED_REGIONS:
        raise _bad(label, "a two-letter region code such as GB, IE or US", text)
    return text.upper()


def _timezone(label: str, text: str) -> str:
    try:
        zoneinfo.ZoneInfo(text)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise _bad(label, "an IANA time zone such as Europe/London or UTC", text) from None
    return text


_QUIET = re.compile(r"([01]?[0-9]|2[0-3]):([0-5][0-9])-([01]?[0-9]|2[0-3]):([0-5][0-9])")


def _parse_quiet(text: str) -> tuple[dt.time, dt.time] | None:
    """Return (start, end) for "HH:MM-HH:MM" (end may be past midnight), None for ""; else raise."""
    if not text:
        return None
    match = _QUIET.fullmatch(text)
    if match is None:
        raise ValueError(text)
    h1, m1, h2, m2 = (int(group) for group in match.groups())
    if (h1, m1) == (h2, m2):
        raise ValueError(text)  # an empty or 24-hour window is surely a mistake
    return dt.time(h1, m1), dt.time(h2, m2)


def _quiet_hours(label: str, text: str) -> str:
    try:
        _parse_quiet(text)
    except ValueError:
        raise _bad(label, 'a window "HH:MM-HH:MM" such as 21:00-08:00 (empty for none)', text) from None
    return text


_DURATION = re.compile(r"(?:([0-9]{1,6})d)?(?:([0-9]{1,7})h)?(?:([0-9]{1,9})m)?(?:([0-9]{1,10})s?)?")


def _duration(label: str, text: str) -> dt.timedelta:
    match = _DURATION.fullmatch(text.lower())
    days, hours, minutes, seconds = (int(g or 0) for g in (match.groups() if match else ()))
    value = dt.timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    if not match or value <= dt.timedelta(0):
        raise _bad(label, "a positive duration such as 7d, 12h, 30m, 3600s or 3600", text)
    return value


# --- the table: environment variable, Settings field, converter ---------------------------

_VARS: tuple[tuple[str, str, _Convert], ...] = (
    ("SMSBOT_DATABASE_URL", "database_url", _database_url),
    ("SMSBOT_PROVIDER", "provider", _choice("sandbox", "divergent", "puresms")),
    ("SMSBOT_DIVERGENT_API_KEY", "divergent_api_key", _secret),
    ("SMSBOT_DIVERGENT_URL", "divergent_url", _http_url),
    ("SMSBOT_PURESMS_API_KEY", "puresms_api_key", _secret),
    ("SMSBOT_PURESMS_URL", "puresms_url", _http_url),
    ("SMSBOT_PURESMS_TEST_MODE", "puresms_test_mode", _bool),
    ("SMSBOT_WEBHOOK_SECRET", "webhook_secret", _secret),
    ("SMSBOT_WEBHOOK_SECRET_PREVIOUS", "webhook_secret_previous", _secret),
    ("SMSBOT_WEBHOOK_TOLERANCE", "webhook_tolerance_seconds", _int(1, 86_400)),
    ("SMSBOT_INSECURE_NO_SIGNATURE", "insecure_no_signature", _bool),
    ("SMSBOT_PURESMS_WEBHOOK_TOKEN", "puresms_webhook_token", _secret),
    ("SMSBOT_SANDBOX_WEBHOOK_SECRET", "sandbox_webhook_secret", _secret),
    ("SMSBOT_API_KEY", "api_key", _secret),
    ("SMSBOT_DEFAULT_SENDER", "default_sender", _text),
    ("SMSBOT_DEFAULT_REGION", "default_region", _region),
    ("SMSBOT_HOST", "host", _text),
    ("SMSBOT_PORT", "port", _int(1, 65_535)),
    ("SMSBOT_SANDBOX_PORT", "sandbox_port", _int(0, 65_535)),
    ("SMSBOT_WORKERS", "workers", _int(1, 256)),
    ("SMSBOT_STEP_MAX_ATTEMPTS", "step_max_attempts", _int(1, 100)),
    ("SMSBOT_LEASE_SECONDS", "lease_seconds", _positive_float),
    ("SMSBOT_SEND_RATE", "send_rate_per_second", _positive_float),
    ("SMSBOT_SEND_BATCH", "send_batch_size", _int(1, 15_000)),  # the provider's bulk limit
    ("SMSBOT_MAX_BODY_BYTES", "max_body_bytes", _int(1_024, 104_857_600)),
    ("SMSBOT_QUIET_HOURS", "quiet_hours", _quiet_hours),
    ("SMSBOT_DEFAULT_TIMEZONE", "default_timezone", _timezone),
    ("SMSBOT_CONVERSATION_EXPIRY", "conversation_expiry", _duration),
    ("SMSBOT_REMINDER_MAX_LATENESS", "reminder_max_lateness", _duration),
    ("SMSBOT_MAX_SEGMENTS", "max_segments", _int(1, 255)),
    ("SMSBOT_SEGMENT_POLICY", "segment_policy", _choice("warn", "fail")),
    ("SMSBOT_SMART_CHARACTERS", "smart_characters", _bool),
    ("SMSBOT_FLOWS_DIR", "flows_dir", _path),
    ("SMSBOT_TEMPLATES_DIR", "templates_dir", _path),
    ("SMSBOT_LOG_LEVEL", "log_level", _choice("DEBUG", "INFO", "WARNING", "ERROR")),
)
_ENV_NAMES = [env for env, _, _ in _VARS]
_TOML_KEYS = [env.removeprefix(ENV_PREFIX).lower() for env in _ENV_NAMES] + ["numbers"]


@dataclasses.dataclass(frozen=True, repr=False)
class Settings:
    """Every smsbot setting, typed and validated; build it with Settings.from_env()."""

    database_url: str = "sqlite+aiosqlite:///./smsbot.db"
    provider: Provider = "sandbox"
    divergent_api_key: Secret | None = None
    divergent_url: str = "https://connect-api.divergent.cloud"
    puresms_api_key: Secret | None = None
    puresms_url: str = "https://api.puresms.uk"
    puresms_test_mode: bool = False
    webhook_secret: Secret | None = None
    webhook_secret_previous: Secret | None = None
    webhook_tolerance_seconds: int = 300
    insecure_no_signature: bool = False
    puresms_webhook_token: Secret | None = None
    sandbox_webhook_secret: Secret = Secret("sandbox-secret")  # well known: local use only
    api_key: Secret | None = None
    default_sender: str | None = None
    default_region: str = "GB"
    host: str = "127.0.0.1"
    port: int = 8080
    sandbox_port: int = 8081
    workers: int = 8
    step_max_attempts: int = 5
    lease_seconds: float = 30.0
    send_rate_per_second: float = 10.0
    send_batch_size: int = 500
    max_body_bytes: int = 1_048_576
    quiet_hours: str = ""
    default_timezone: str = "Europe/London"
    conversation_expiry: dt.timedelta = dt.timedelta(days=7)
    reminder_max_lateness: dt.timedelta = dt.timedelta(hours=6)
    max_segments: int = 6
    segment_policy: Literal["warn", "fail"] = "warn"
    smart_characters: bool = True
    flows_dir: Path = Path("flows")
    templates_dir: Path = Path("templates")
    log_level: str = "INFO"
    numbers: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, key in (("divergent", self.divergent_api_key), ("puresms", self.puresms_api_key)):
            if self.provider == name and not key:
                raise ConfigError(
                    f"SMSBOT_{name.upper()}_API_KEY is not set: SMSBOT_PROVIDER={name} needs it to"
                    " send messages; set it, or use SMSBOT_PROVIDER=sandbox for local testing"
                )
        if self.webhook_secret_previous and not self.webhook_secret:
            raise ConfigError(
                "SMSBOT_WEBHOOK_SECRET_PREVIOUS is set but SMSBOT_WEBHOOK_SECRET is not:"
                " during a rotation put the new secret in SMSBOT_WEBHOOK_SECRET"
            )

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, toml_path: Path | None = None
    ) -> Settings:
        """Read settings from `environ` (default os.environ) over the TOML file, if there is one.

        `toml_path` overrides SMSBOT_CONFIG and ./smsbot.toml; a missing file there is skipped,
        while a missing SMSBOT_CONFIG file is an error.
        """
        env = os.environ if environ is None else environ
        _reject_unknown_env(env)
        required = toml_path is None and bool(env.get("SMSBOT_CONFIG"))
        path = toml_path or (Path(env["SMSBOT_CONFIG"]) if required else DEFAULT_TOML)
        table = _read_toml(path, required=required)
        values: dict[str, Any] = {}
        for env_name, name, convert in _VARS:
            key = env_name.removeprefix(ENV_PREFIX).lower()
            if text := env.get(env_name, "").strip():
                values[name] = convert(env_name, text)
            elif text := _toml_text(f"{key} in {path}", table.get(key, "")):
                values[name] = convert(f"{key} in {path} ({env_name})", text)
        if "numbers" in table:
            values["numbers"] = _numbers(path, table["numbers"])
        if "provider" not in values:
            values["provider"] = (
                "divergent" if values.get("divergent_api_key")
                else "puresms" if values.get("puresms_api_key")
                else "sandbox"
            )  # fmt: skip
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with `changes` applied (cross-field checks run again)."""
        return dataclasses.replace(self, **changes)

    @property
    def sync_database_url(self) -> str:
        """The same database for synchronous drivers (APScheduler, Alembic)."""
        scheme, _, rest = self.database_url.partition("://")
        if scheme.startswith("sqlite"):
            return f"sqlite://{rest}"
        return f"postgresql+psycopg://{_rename_query(rest, 'ssl', 'sslmode')}"

    @property
    def quiet_window(self) -> tuple[dt.time, dt.time] | None:
        """Quiet hours as (start, end) local times; end < start means it spans midnight."""
        return _parse_quiet(self.quiet_hours)

    def webhook_secrets(self) -> list[str]:
        """Secrets a webhook may be signed with: current, then previous (during a rotation)."""
        secrets = [s.get() for s in (self.webhook_secret, self.webhook_secret_previous) if s]
        if not secrets and self.provider == "sandbox":
            secrets = [self.sandbox_webhook_secret.get()]
        return secrets

    def check_serve(self) -> None:
        """Raise ConfigError if `smsbot serve` would accept webhooks it cannot verify."""
        if not self.webhook_secret and not self.insecure_no_signature and self.provider != "sandbox":
            raise ConfigError(
                "SMSBOT_WEBHOOK_SECRET is not set: webhooks cannot be verified; set it or pass"
                " --insecure-no-signature for local testing"
            )

    def __repr__(self) -> str:
        def shown(name: str) -> Any:
            value = getattr(self, name)
            return _mask_url(value) if name == "database_url" else value

        fields = ", ".join(f"{f.name}={shown(f.name)!r}" for f in dataclasses.fields(self))
        return f"Settings({fields})"


def _reject_unknown_env(env: Mapping[str, str]) -> None:
    unknown = sorted(
        name
        for name in env
        if name.startswith(ENV_PREFIX)
        and name not in _ENV_NAMES
        and name not in _ENV_NOT_SETTINGS
        and not name.startswith(_ENV_NOT_SETTINGS_PREFIX)
    )
    if unknown:
        raise ConfigError(
            "unknown environment variable " + "; ".join(map(_suggest, unknown))
            + ": fix the spelling or remove it (docs/configuration.md lists every setting)"
        )  # fmt: skip


def _suggest(name: str, known: list[str] = _ENV_NAMES) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f"{name} (did you mean {close[0]}?)" if close else name


def _read_toml(path: Path, *, required: bool) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            table = tomllib.load(file)
    except FileNotFoundError:
        if required:
            raise ConfigError(
                f"SMSBOT_CONFIG names {path}, which does not exist: fix the path or unset it"
            ) from None
        return {}
    # `from None` throughout: the underlying errors can quote bytes of the file.
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not valid TOML: it must be saved as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    for key in table:
        if key not in _TOML_KEYS:
            close = difflib.get_close_matches(key, _TOML_KEYS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"unknown key {key!r} in {path}: {hint}(docs/configuration.md lists every setting)"
            )
    return table


def _toml_text(label: str, value: object) -> str:
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value).strip()
    raise ConfigError(f"{label} must be a string, number or boolean, not a TOML table or array")


def _numbers(path: Path, value: object) -> Mapping[str, Mapping[str, Any]]:
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ConfigError(
            f'numbers in {path} must hold one table per number, like [numbers."+447700900100"]'
        )
    return value
