"""Workspaces: the clients one deployment serves, each with its own provider account and numbers.

A workspace is a name, a provider account (provider, API key, URL), the secrets its webhooks are
signed with, the virtual numbers and sender IDs it owns, and the defaults its numbers run with
(flows, keywords, catch-all, quiet hours, HELP text, region, send rate). They are declared in
smsbot.toml as `[workspaces.NAME]` tables (docs/workspaces.md), read by workspace_tables.py.

The SMSBOT_* settings are the workspace `default`, unchanged: with no `[workspaces.*]` table it
is the only one and owns every number, as before workspaces existed. Declared workspaces own
exactly their `numbers` and `sender_ids`; a `[workspaces.default]` table adds numbers (and any
other key) to the default one. A number no workspace owns reaches no flow.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Mapping
from typing import Any, Literal

from smsbot.config_values import ConfigError, Secret
from smsbot.hints import did_you_mean

DEFAULT = "default"
NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")

Provider = Literal["sandbox", "divergent", "puresms"]


@dataclasses.dataclass(frozen=True, repr=False)
class Workspace:
    """One client: its provider account, webhook secrets, numbers and their defaults."""

    name: str
    provider: Provider
    api_key: Secret | None
    url: str | None  # None: the provider's own (or, for the sandbox, SMSBOT_SANDBOX_PORT)
    webhook_secrets: tuple[Secret, ...]  # current first, then the previous during a rotation
    provider_workspace_id: str | None  # Divergent's workspaceId, which every webhook carries
    numbers: frozenset[str]  # E.164
    sender_ids: frozenset[str]  # alphanumeric senders, as written
    default_region: str
    send_rate: float  # messages per second through this account
    receipts_token: Secret | None  # PureSMS: the secret last part of its receipts URL
    test_mode: bool  # PureSMS: the provider validates but does not send
    routing: Mapping[str, Any]  # its numbers' defaults: flows, keywords, catch_all, …
    catch_all: bool = False  # owns every number no other workspace owns

    def owns(self, sender: str) -> bool:
        """Whether messages from `sender` (a number or a sender ID) belong to this workspace."""
        return self.catch_all or sender in self.numbers or sender in self.sender_ids

    def __repr__(self) -> str:
        return f"Workspace({self.name!r}, provider={self.provider!r})"


class Workspaces:
    """Every workspace of a deployment, found by name, by number and by provider workspaceId."""

    def __init__(self, workspaces: list[Workspace]) -> None:
        self._by_name = {w.name: w for w in workspaces}
        self._by_sender: dict[str, Workspace] = {}
        self._by_provider_id: dict[str, Workspace] = {}
        self._catch_all = next((w for w in workspaces if w.catch_all), None)
        for w in workspaces:
            for sender in sorted(w.numbers | w.sender_ids):
                if (other := self._by_sender.get(sender)) is not None:
                    raise ConfigError(
                        f"{sender} is in both workspaces.{other.name} and workspaces.{w.name}:"
                        " a number or sender ID belongs to one workspace; remove it from one"
                    )
                self._by_sender[sender] = w
            if w.provider_workspace_id:
                if (other := self._by_provider_id.get(w.provider_workspace_id)) is not None:
                    raise ConfigError(
                        f"workspaces.{w.name}.workspace_id is also workspaces.{other.name}'s:"
                        " each provider workspace is one smsbot workspace"
                    )
                self._by_provider_id[w.provider_workspace_id] = w
        tokens: dict[str, str] = {}
        for w in workspaces:
            if w.receipts_token is not None:
                if (other_name := tokens.get(w.receipts_token.get())) is not None:
                    raise ConfigError(
                        f"workspaces.{w.name}.receipts_token is also workspaces.{other_name}'s:"
                        " each workspace needs its own, so a receipt URL names one workspace"
                    )
                tokens[w.receipts_token.get()] = w.name

    def __iter__(self) -> Iterator[Workspace]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    @property
    def names(self) -> list[str]:
        """The workspaces' names, in the order they were declared (`default` first)."""
        return list(self._by_name)

    def get(self, name: str) -> Workspace | None:
        """The workspace called `name`, or None."""
        return self._by_name.get(name)

    def __getitem__(self, name: str) -> Workspace:
        try:
            return self._by_name[name]
        except KeyError:
            hint = did_you_mean(name, self.names, "{!r}")
            raise KeyError(
                f"no workspace {name!r}{f' ({hint})' if hint else ''};"
                f" workspaces: {', '.join(self.names)}"
            ) from None

    def owner(self, sender: str) -> Workspace | None:
        """The workspace a virtual number or sender ID belongs to, or None if none owns it."""
        return self._by_sender.get(sender) or self._catch_all

    def owner_name(self, sender: str) -> str | None:
        """The name of owner(sender), or None."""
        owner = self.owner(sender)
        return owner.name if owner is not None else None

    def by_provider_id(self, workspace_id: str | None) -> Workspace | None:
        """The workspace whose provider workspaceId is `workspace_id`, or None."""
        return self._by_provider_id.get(workspace_id) if workspace_id else None

    def by_receipts_token(self, token: str) -> Workspace | None:
        """The PureSMS workspace whose receipts URL ends with `token` (constant time), or None."""
        found = None
        for w in self._by_name.values():
            if w.receipts_token is not None and w.receipts_token == token:
                found = w
        return found
