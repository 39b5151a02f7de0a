"""Settings: one typed, frozen object from SMSBOT_* environment variables and smsbot.toml.

Precedence: environment variable, then the TOML file (./smsbot.toml, or the path in
SMSBOT_CONFIG), then the default. An empty value counts as unset. Every error names the
setting and the fix, and never contains a secret or a database password.
"""

# setting() returns a dataclasses.field(), which RUF009 cannot see through
# ruff: noqa: RUF009

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from smsbot.config_values import ConfigError as ConfigError  # the public names, kept here
from smsbot.config_values import Secret as Secret
from smsbot.config_values import (
    boolean,
    db_url,
    http_url,
    int_between,
    log_level_name,
    mask_url,
    positive_float,
    provider_name,
    quiet_hours_window,
    region_code,
    rename_query,
    segment_policy_name,
    setting,
    zone_name,
)
from smsbot.config_values import parse_duration as parse_duration
from smsbot.config_values import port_in_use as port_in_use
from smsbot.engine.quiet_hours import parse_window
from smsbot.hints import did_you_mean
from smsbot.workspace_tables import build as build_workspaces
from smsbot.workspace_tables import parse_tables as parse_workspace_tables
from smsbot.workspaces import Workspaces

DEFAULT_TOML = Path("smsbot.toml")
# Read by tests and tools rather than by Settings, so they are not typos.
_NOT_SETTINGS = re.compile(r"SMSBOT_(CONFIG|TEST_.*)")

Provider = Literal["sandbox", "divergent", "puresms"]
SegmentPolicy = Literal["warn", "fail"]


SANDBOX_SECRET = Secret("sandbox-secret")  # well known on purpose: the sandbox is local only
MIN_API_KEY_LENGTH = 16
# The sandbox's virtual number: what `make run`, `smsbot chat` and the test kit send from.
SANDBOX_NUMBER = "+447700900100"


@dataclasses.dataclass(frozen=True, repr=False)
class Settings:
    """Every smsbot setting, typed and validated; build it with Settings.from_env()."""

    database_url: str = setting("SMSBOT_DATABASE_URL", "sqlite+aiosqlite:///./smsbot.db", db_url)
    provider: Provider = setting("SMSBOT_PROVIDER", "sandbox", provider_name)
    divergent_api_key: Secret | None = setting("SMSBOT_DIVERGENT_API_KEY", None, Secret)
    divergent_url: str = setting(
        "SMSBOT_DIVERGENT_URL", "https://connect-api.divergent.cloud", http_url
    )
    puresms_api_key: Secret | None = setting("SMSBOT_PURESMS_API_KEY", None, Secret)
    puresms_url: str = setting("SMSBOT_PURESMS_URL", "https://api.puresms.uk", http_url)
    puresms_test_mode: bool = setting("SMSBOT_PURESMS_TEST_MODE", False, boolean)
    webhook_secret: Secret | None = setting("SMSBOT_WEBHOOK_SECRET", None, Secret)
    webhook_secret_previous: Secret | None = setting("SMSBOT_WEBHOOK_SECRET_PREVIOUS", None, Secret)
    webhook_tolerance_seconds: int = setting(
        "SMSBOT_WEBHOOK_TOLERANCE", 300, int_between(1, 86_400)
    )
    insecure_no_signature: bool = setting("SMSBOT_INSECURE_NO_SIGNATURE", False, boolean)
    puresms_webhook_token: Secret | None = setting("SMSBOT_PURESMS_WEBHOOK_TOKEN", None, Secret)
    sandbox_webhook_secret: Secret = setting(
        "SMSBOT_SANDBOX_WEBHOOK_SECRET", SANDBOX_SECRET, Secret
    )
    api_key: Secret | None = setting("SMSBOT_API_KEY", None, Secret)
    default_sender: str | None = setting("SMSBOT_DEFAULT_SENDER", None)
    default_region: str = setting("SMSBOT_DEFAULT_REGION", "GB", region_code)
    host: str = setting("SMSBOT_HOST", "127.0.0.1")
    port: int = setting("SMSBOT_PORT", 8080, int_between(1, 65_535))
    sandbox_port: int = setting(
        "SMSBOT_SANDBOX_PORT", 8081, int_between(0, 65_535)
    )  # 0: any free port
    workers: int = setting("SMSBOT_WORKERS", 8, int_between(1, 256))
    step_max_attempts: int = setting("SMSBOT_STEP_MAX_ATTEMPTS", 5, int_between(1, 100))
    # pipeline/stepping.STEP_TIMEOUT (not imported: engine.compliance imports this module)
    step_timeout: float = setting("SMSBOT_STEP_TIMEOUT", 30.0, positive_float)
    lease_seconds: float = setting("SMSBOT_LEASE_SECONDS", 30.0, positive_float)
    resend_grace: dt.timedelta = setting(
        "SMSBOT_RESEND_GRACE", dt.timedelta(minutes=2), parse_duration
    )
    send_rate_per_second: float = setting("SMSBOT_SEND_RATE", 10.0, positive_float)
    # 15,000 is the provider's limit for one bulk call
    send_batch_size: int = setting("SMSBOT_SEND_BATCH", 500, int_between(1, 15_000))
    max_body_bytes: int = setting(
        "SMSBOT_MAX_BODY_BYTES", 1_048_576, int_between(1_024, 104_857_600)
    )
    body_timeout: float = setting("SMSBOT_BODY_TIMEOUT", 10.0, positive_float)
    quiet_hours: str = setting("SMSBOT_QUIET_HOURS", "", quiet_hours_window)
    default_timezone: str = setting("SMSBOT_DEFAULT_TIMEZONE", "Europe/London", zone_name)
    conversation_expiry: dt.timedelta = setting(
        "SMSBOT_CONVERSATION_EXPIRY", dt.timedelta(days=7), parse_duration
    )
    reminder_max_lateness: dt.timedelta = setting(
        "SMSBOT_REMINDER_MAX_LATENESS", dt.timedelta(hours=6), parse_duration
    )
    max_segments: int = setting("SMSBOT_MAX_SEGMENTS", 6, int_between(1, 255))
    segment_policy: SegmentPolicy = setting("SMSBOT_SEGMENT_POLICY", "warn", segment_policy_name)
    smart_characters: bool = setting("SMSBOT_SMART_CHARACTERS", True, boolean)
    flows_dir: Path = setting("SMSBOT_FLOWS_DIR", Path("flows"), Path)
    templates_dir: Path = setting("SMSBOT_TEMPLATES_DIR", Path("templates"), Path)
    log_level: str = setting("SMSBOT_LOG_LEVEL", "INFO", log_level_name)
    log_sensitive: bool = setting("SMSBOT_LOG_SENSITIVE", False, boolean)
    # Per-number settings from [numbers."+44…"] tables; the router validates them.
    numbers: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    # Contact fields declared in [contacts.fields]: name -> text | number | datetime | boolean
    contact_fields: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # The [workspaces.NAME] tables as written; `workspaces` is what they mean (workspaces.py).
    workspace_tables: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    workspaces: Workspaces = dataclasses.field(init=False, compare=False)

    def __post_init__(self) -> None:
        for name, key in (("divergent", self.divergent_api_key), ("puresms", self.puresms_api_key)):
            if self.provider == name and not key:
                raise ConfigError(
                    f"SMSBOT_{name.upper()}_API_KEY is not set: SMSBOT_PROVIDER={name} needs it to"
                    " send messages; set it, or use SMSBOT_PROVIDER=sandbox for local testing"
                )
        if self.api_key is not None and len(self.api_key.get()) < MIN_API_KEY_LENGTH:
            raise ConfigError(
                f"SMSBOT_API_KEY is shorter than {MIN_API_KEY_LENGTH} characters, too easy to"
                " guess: make one with"
                ' python -c "import secrets; print(secrets.token_urlsafe(32))"'
            )
        if self.webhook_secret_previous and not self.webhook_secret:
            raise ConfigError(
                "SMSBOT_WEBHOOK_SECRET_PREVIOUS is set but SMSBOT_WEBHOOK_SECRET is not:"
                " during a rotation put the new secret in SMSBOT_WEBHOOK_SECRET"
            )
        object.__setattr__(self, "workspaces", build_workspaces(self))

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, toml_path: Path | None = None
    ) -> Settings:
        """Read settings from `environ` (default os.environ) over the TOML file, if there is one.

        `toml_path` overrides SMSBOT_CONFIG and ./smsbot.toml; a missing file there is skipped,
        while a missing SMSBOT_CONFIG file is an error.
        """
        env = os.environ if environ is None else environ
        unknown = [n for n in env if n.startswith("SMSBOT_") and n not in _ENV_FIELDS]
        if unknown := sorted(n for n in unknown if not _NOT_SETTINGS.fullmatch(n)):
            names = "; ".join(_suggest(name, _ENV_FIELDS) for name in unknown)
            raise ConfigError(
                f"unknown environment variable {names}: fix the spelling or remove it"
                " (docs/configuration.md lists every setting)"
            )
        required = toml_path is None and bool(env.get("SMSBOT_CONFIG"))
        path = toml_path or (Path(env["SMSBOT_CONFIG"]) if required else DEFAULT_TOML)
        table = _read_toml(path, required=required)
        values: dict[str, Any] = {}
        for env_name, (name, convert) in _ENV_FIELDS.items():
            label, text = env_name, env.get(env_name, "").strip()
            if not text:
                key = _toml_key(env_name)
                label = f"{key} in {path} ({env_name})"
                text = _toml_text(label, table.get(key, ""))
            if text:
                try:
                    values[name] = convert(text)
                except ValueError as exc:
                    # secrets never fail to convert, so `text` is not one; URLs are masked
                    raise ConfigError(f"{label} must be {exc}, got {mask_url(text)!r}") from None
        if "numbers" in table:
            values["numbers"] = _numbers(path, table["numbers"])
        if "contacts" in table:
            values["contact_fields"] = _contact_fields(path, table["contacts"])
        if "workspaces" in table:
            values["workspace_tables"] = parse_workspace_tables(path, table["workspaces"], env)
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
        return f"postgresql+psycopg://{rename_query(rest, 'ssl', 'sslmode')}"

    @property
    def sender(self) -> str | None:
        """The sender when a request names none: SMSBOT_DEFAULT_SENDER, or the sandbox's number."""
        if self.default_sender:
            return self.default_sender
        return SANDBOX_NUMBER if self.provider == "sandbox" else None

    @property
    def quiet_window(self) -> tuple[dt.time, dt.time] | None:
        """Quiet hours as (start, end) local times, or None; end < start spans midnight."""
        return parse_window(self.quiet_hours)

    def webhook_secrets(self) -> list[str]:
        """Secrets a webhook may be signed with: current, then previous (during a rotation)."""
        secrets = [s.get() for s in (self.webhook_secret, self.webhook_secret_previous) if s]
        if not secrets and self.provider == "sandbox":
            secrets = [self.sandbox_webhook_secret.get()]
        return secrets

    def check_serve(self) -> None:
        """Raise ConfigError if `smsbot serve` would accept webhooks it cannot verify."""
        unverified = not self.webhook_secret and not self.insecure_no_signature
        if unverified and self.provider != "sandbox":
            raise ConfigError(
                "SMSBOT_WEBHOOK_SECRET is not set: webhooks cannot be verified; set it or pass"
                " --insecure-no-signature for local testing"
            )
        for name, secret in (
            ("SMSBOT_WEBHOOK_SECRET", self.webhook_secret),
            ("SMSBOT_WEBHOOK_SECRET_PREVIOUS", self.webhook_secret_previous),
        ):
            if self.provider != "sandbox" and secret == SANDBOX_SECRET:
                raise ConfigError(
                    f"{name} is the sandbox's public secret, which anyone can sign webhooks"
                    " with: set the signing secret from the provider's dashboard"
                )

    def __repr__(self) -> str:
        def shown(name: str) -> Any:
            value = getattr(self, name)
            return mask_url(value) if name == "database_url" else value

        fields = ", ".join(
            f"{f.name}={shown(f.name)!r}"
            for f in dataclasses.fields(self)
            if f.name != "workspaces"
        )
        return f"Settings({fields})"


def _toml_key(env: str) -> str:
    """TOML keys are the variable names without the prefix, in lower case."""
    return env.removeprefix("SMSBOT_").lower()


# environment variable -> (Settings field, converter)
_ENV_FIELDS = {
    f.metadata["env"]: (f.name, f.metadata["convert"])
    for f in dataclasses.fields(Settings)
    if f.metadata
}
_TOML_KEYS = [*map(_toml_key, _ENV_FIELDS), "numbers", "contacts", "workspaces"]


def _suggest(name: str, known: Mapping[str, object] | list[str]) -> str:
    hint = did_you_mean(name, known)
    return f"{name} ({hint})" if hint else name


def _read_toml(path: Path, *, required: bool) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            table = tomllib.load(file)
    except FileNotFoundError:
        if not required:
            return {}
        raise ConfigError(f"SMSBOT_CONFIG names {path}, which does not exist") from None
    # `from None` throughout: the underlying errors may quote bytes of the file.
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not valid TOML: save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    if unknown := [key for key in table if key not in _TOML_KEYS]:
        raise ConfigError(
            f"unknown key {_suggest(unknown[0], _TOML_KEYS)} in {path}:"
            " fix the spelling or remove it (docs/configuration.md lists every setting)"
        )
    return table


def _toml_text(label: str, value: object) -> str:
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value).strip()
    raise ConfigError(f"{label} must be a string, number or boolean, not {type(value).__name__}")


def _numbers(path: Path, value: object) -> Mapping[str, Mapping[str, Any]]:
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ConfigError(f'numbers in {path} must be tables like [numbers."+447700900100"]')
    return value


def _contact_fields(path: Path, value: object) -> Mapping[str, str]:
    from smsbot.engine.contact import FIELD_TYPES, FieldTypeError, check_field_name

    allowed = ", ".join(FIELD_TYPES)
    table: dict[str, Any] = value if isinstance(value, dict) else {"": None}
    fields = table.get("fields", {})
    if not isinstance(fields, dict) or set(table) - {"fields"}:
        raise ConfigError(
            f'[contacts] in {path} takes only a table [contacts.fields] of name = "type"'
            f" ({allowed})"
        )
    for name, kind in fields.items():
        if kind not in FIELD_TYPES:
            raise ConfigError(
                f"contacts.fields.{name} in {path} is {kind!r}: a field's type is one of {allowed}"
            )
        try:
            check_field_name(name)
        except FieldTypeError as exc:
            raise ConfigError(f"contacts.fields.{name} in {path}: {exc}") from None
    return dict(fields)
