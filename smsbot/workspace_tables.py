"""Reading `[workspaces.NAME]` tables: smsbot.toml's workspaces, checked, as Workspace objects.

`default` is the SMSBOT_* settings, overridden by a `[workspaces.default]` table; the others are
declared. Every error names the workspace and the key (docs/workspaces.md lists the keys).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from smsbot.config_values import (
    ConfigError,
    Secret,
    boolean,
    http_url,
    positive_float,
    provider_name,
    quiet_hours_window,
    region_code,
)
from smsbot.hints import did_you_mean
from smsbot.workspaces import DEFAULT, NAME, Provider, Workspace, Workspaces

if TYPE_CHECKING:
    from smsbot.config import Settings

# What a [workspaces.NAME] table may hold. The number keys (flows, keywords, catch_all,
# quiet_hours, compliance) are the defaults of its numbers, as in a [numbers."+44…"] table.
_SECRET_KEYS = ("api_key", "webhook_secret", "webhook_secret_previous", "receipts_token")
_PLAIN_KEYS = (
    "provider",
    "url",
    "workspace_id",
    "numbers",
    "sender_ids",
    "default_region",
    "send_rate",
    "test_mode",
)
ROUTING_KEYS = ("flows", "keywords", "catch_all", "quiet_hours", "compliance")
WORKSPACE_KEYS = (
    *_PLAIN_KEYS,
    *_SECRET_KEYS,
    *(f"{key}_env" for key in _SECRET_KEYS),
    *ROUTING_KEYS,
)


def parse_tables(
    path: object, value: object, environ: Mapping[str, str]
) -> Mapping[str, Mapping[str, Any]]:
    """Check the TOML `workspaces` table ({name: {key: value}}); read its *_env secrets.

    A secret's `KEY_env` is replaced by `KEY`: a Secret read from the variable it names, so the
    settings hold no environment and only Secret objects, which never print.
    """
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ConfigError(f"workspaces in {path} must be tables like [workspaces.clinic]")
    for name, table in value.items():
        if not NAME.fullmatch(name):
            raise ConfigError(
                f"[workspaces.{name}] in {path}: a workspace name is 1-64 lower-case letters,"
                " digits, - or _, starting with a letter or digit"
            )
        for key in table:
            if key not in WORKSPACE_KEYS:
                hint = did_you_mean(key, WORKSPACE_KEYS)
                raise ConfigError(
                    f"unknown key workspaces.{name}.{key}{f' ({hint})' if hint else ''} in"
                    f" {path}: docs/workspaces.md lists a workspace's keys"
                )
    return {name: _resolved(name, table, environ) for name, table in value.items()}


def _resolved(name: str, table: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    resolved = dict(table)
    for key in _SECRET_KEYS:
        env_key = f"{key}_env"
        label = f"workspaces.{name}.{env_key}"
        if env_key not in table:
            continue
        if key in table:
            raise ConfigError(
                f"workspaces.{name}.{key} and {label} are both set: keep one ({env_key}, the"
                " name of an environment variable, keeps the secret out of the file)"
            )
        variable = table[env_key]
        if not isinstance(variable, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", variable):
            raise ConfigError(
                f"{label} must be the name of an environment variable, such as CLINIC_API_KEY"
            )
        value = environ.get(variable, "").strip()
        if not value:
            raise ConfigError(
                f"{label} names {variable}, which is not set: export it before starting"
                f" smsbot, or remove {env_key}"
            )
        del resolved[env_key]
        resolved[key] = Secret(value)
    return resolved


def build(settings: Settings) -> Workspaces:
    """The deployment's workspaces: `default` from the SMSBOT_* settings, then the declared."""
    tables = dict(settings.workspace_tables)
    declared = [name for name in tables if name != DEFAULT]
    default_table = tables.get(DEFAULT, {})
    workspaces = [_default(settings, default_table, catch_all=not declared)]
    for name in declared:
        workspaces.append(_declared(settings, name, tables[name]))
    return Workspaces(workspaces)


def _default(settings: Settings, table: Mapping[str, Any], *, catch_all: bool) -> Workspace:
    reader = _Reader(DEFAULT, table)
    provider: Provider = reader.choice("provider", settings.provider)
    key = settings.divergent_api_key if provider == "divergent" else settings.puresms_api_key
    url = settings.divergent_url if provider == "divergent" else settings.puresms_url
    secrets = tuple(s for s in (settings.webhook_secret, settings.webhook_secret_previous) if s)
    return reader.workspace(
        provider,
        api_key=reader.secret("api_key", key if provider != "sandbox" else None),
        url=reader.url(url if provider != "sandbox" else None),
        secrets=reader.secrets(secrets) or _sandbox(settings, provider),
        receipts_token=reader.secret("receipts_token", settings.puresms_webhook_token),
        test_mode=reader.flag("test_mode", settings.puresms_test_mode),
        region=reader.region(settings.default_region),
        send_rate=reader.rate(settings.send_rate_per_second),
        catch_all=catch_all and not reader.numbers_given,
    )


def _declared(settings: Settings, name: str, table: Mapping[str, Any]) -> Workspace:
    reader = _Reader(name, table)
    if "provider" not in table:
        raise ConfigError(
            f"workspaces.{name}.provider is not set: say which account it sends through,"
            ' provider = "divergent", "puresms" or "sandbox"'
        )
    provider: Provider = reader.choice("provider", "sandbox")
    workspace = reader.workspace(
        provider,
        api_key=reader.secret("api_key", None),
        url=reader.url(None),
        secrets=reader.secrets(()) or _sandbox(settings, provider),
        receipts_token=reader.secret("receipts_token", None),
        test_mode=reader.flag("test_mode", False),
        region=reader.region(settings.default_region),
        send_rate=reader.rate(settings.send_rate_per_second),
        catch_all=False,
    )
    if not workspace.numbers and not workspace.sender_ids:
        raise ConfigError(
            f'workspaces.{name} owns no number: add numbers = ["+44…"] (its virtual numbers)'
            ' or sender_ids = ["Name"]'
        )
    return workspace


def _sandbox(settings: Settings, provider: Provider) -> tuple[Secret, ...]:
    """A sandbox workspace with no secret of its own verifies with the sandbox's."""
    return (settings.sandbox_webhook_secret,) if provider == "sandbox" else ()


class _Reader:
    """Reads one [workspaces.NAME] table; every error names the workspace and the key."""

    def __init__(self, name: str, table: Mapping[str, Any]) -> None:
        self.name = name
        self.table = table
        self.numbers_given = "numbers" in table or "sender_ids" in table

    def label(self, key: str) -> str:
        return f"workspaces.{self.name}.{key}"

    def text(self, key: str) -> str | None:
        value = self.table.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ConfigError(f"{self.label(key)} must be a string, not {type(value).__name__}")
        return str(value).strip() or None

    def convert(self, key: str, convert: Any, default: Any) -> Any:
        text = self.text(key)
        if text is None:
            return default
        try:
            return convert(text)
        except ValueError as exc:
            raise ConfigError(f"{self.label(key)} must be {exc}, got {text!r}") from None

    def choice(self, key: str, default: Provider) -> Provider:
        value: Provider = self.convert(key, provider_name, default)
        return value

    def url(self, default: str | None) -> str | None:
        value: str | None = self.convert("url", http_url, default)
        return value

    def region(self, default: str) -> str:
        value: str = self.convert("default_region", region_code, default)
        return value

    def rate(self, default: float) -> float:
        value: float = self.convert("send_rate", positive_float, default)
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.table.get(key)
        if isinstance(value, bool):
            return value
        result: bool = self.convert(key, boolean, default)
        return result

    def secret(self, key: str, default: Secret | None) -> Secret | None:
        """`key` as written in the file, or read from the variable its `key_env` names."""
        if f"{key}_env" in self.table:  # a table built in code, not read by Settings.from_env
            self.table = _resolved(self.name, self.table, os.environ)
        value = self.table.get(key)
        if value is None:
            return default
        if isinstance(value, Secret):
            return value
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{self.label(key)} must be a non-empty string")
        return Secret(value.strip())

    def secrets(self, default: tuple[Secret, ...]) -> tuple[Secret, ...]:
        current = self.secret("webhook_secret", None)
        previous = self.secret("webhook_secret_previous", None)
        if previous is not None and current is None:
            raise ConfigError(
                f"{self.label('webhook_secret_previous')} is set but"
                f" {self.label('webhook_secret')} is not: during a rotation put the new secret"
                " in webhook_secret"
            )
        given = tuple(s for s in (current, previous) if s is not None)
        return given or default

    def list(self, key: str) -> list[str]:
        value = self.table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f'{self.label(key)} must be a list of strings like ["+447700900100"]')
        return value

    def workspace(
        self,
        provider: Provider,
        *,
        api_key: Secret | None,
        url: str | None,
        secrets: tuple[Secret, ...],
        receipts_token: Secret | None,
        test_mode: bool,
        region: str,
        send_rate: float,
        catch_all: bool,
    ) -> Workspace:
        from smsbot.config import MIN_API_KEY_LENGTH, SANDBOX_SECRET
        from smsbot.sms.phone import PhoneNumberError, normalize, normalize_sender

        if provider in ("divergent", "puresms") and not api_key:
            raise ConfigError(
                f"{self.label('api_key')} is not set: provider {provider} needs the account's"
                f" API key; set api_key_env to the name of a variable holding it"
            )
        if self.name != DEFAULT and provider != "sandbox":
            for key, secret in (("webhook_secret", secrets[0] if secrets else None),):
                if secret is None and provider == "divergent":
                    raise ConfigError(
                        f"{self.label(key)} is not set: this workspace's webhooks cannot be"
                        " verified; set webhook_secret_env to the name of a variable holding"
                        " the signing secret from its Divergent dashboard"
                    )
            if any(s == SANDBOX_SECRET for s in secrets):
                raise ConfigError(
                    f"{self.label('webhook_secret')} is the sandbox's public secret: set the"
                    " signing secret from the provider's dashboard"
                )
        # SMSBOT_PURESMS_WEBHOOK_TOKEN keeps its old rules: only a workspace table's is checked
        given = "receipts_token" in self.table
        if given and receipts_token is not None and len(receipts_token.get()) < MIN_API_KEY_LENGTH:
            raise ConfigError(
                f"{self.label('receipts_token')} is shorter than {MIN_API_KEY_LENGTH}"
                " characters, too easy to guess"
            )
        numbers: set[str] = set()
        for raw in self.list("numbers"):
            try:
                numbers.add(normalize(raw, region))
            except PhoneNumberError as exc:
                raise ConfigError(f"{self.label('numbers')}: {raw!r}: {exc}") from None
        sender_ids: set[str] = set()
        for raw in self.list("sender_ids"):
            try:
                sender_ids.add(normalize_sender(raw, region))
            except PhoneNumberError as exc:
                raise ConfigError(f"{self.label('sender_ids')}: {raw!r}: {exc}") from None
        if "quiet_hours" in self.table:
            self.convert("quiet_hours", quiet_hours_window, "")
        return Workspace(
            name=self.name,
            provider=provider,
            api_key=api_key,
            url=url,
            webhook_secrets=secrets,
            provider_workspace_id=self.text("workspace_id"),
            numbers=frozenset(numbers),
            sender_ids=frozenset(sender_ids),
            default_region=region,
            send_rate=send_rate,
            receipts_token=receipts_token,
            test_mode=test_mode,
            routing={k: v for k, v in self.table.items() if k in ROUTING_KEYS},
            catch_all=catch_all,
        )
