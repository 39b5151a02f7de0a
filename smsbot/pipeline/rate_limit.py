"""Rate limits for the outbox: token buckets per provider account and per virtual number.

Each workspace's sender has its own limiter (one provider account each), so one client's
sending never uses another's allowance:

- a workspace with an account rate (a declared workspace's `send_rate`, SMSBOT_SEND_RATE when
  it has none; `default` only when its `[workspaces.default]` table sets `send_rate`) sends at
  most that many messages a second through its account, all its numbers together;
- a number with a `send_rate` in its `[numbers."+44…"]` table sends at most that many as well;
- the `default` workspace without an account rate keeps SMSBOT_SEND_RATE's meaning from before
  workspaces: every number (sender) at most that many a second.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from smsbot.config_values import ConfigError, positive_float
from smsbot.sms.phone import PhoneNumberError, normalize
from smsbot.workspaces import DEFAULT

if TYPE_CHECKING:
    from smsbot.config import Settings
    from smsbot.workspaces import Workspace


@dataclasses.dataclass(slots=True)
class _Bucket:
    """`rate` tokens a second, at most max(rate, 1): bursts of one second."""

    rate: float
    tokens: float
    last: float

    def level(self, now: float) -> float:
        return min(max(self.rate, 1.0), self.tokens + (now - self.last) * self.rate)

    def wait(self, now: float) -> float:
        return max(0.0, 1.0 - self.level(now)) / self.rate


class RateLimiter:
    """Token buckets: one per sender at `rate` a second (or the sender's own rate in `rates`;
    0 or less: no limit of its own), and one for the whole account at `account_rate` if given.
    A message goes when every bucket it draws on has a token."""

    def __init__(
        self,
        rate: float,
        monotonic: Callable[[], float] = time.monotonic,
        *,
        rates: Mapping[str, float] | None = None,
        account_rate: float | None = None,
    ) -> None:
        self.rate = rate
        self.rates = dict(rates or {})
        self.account_rate = account_rate
        self.monotonic = monotonic
        self._senders: dict[str, _Bucket] = {}
        self._account: _Bucket | None = None

    def rate_of(self, sender: str) -> float:
        """Messages a second `sender` may send on its own (0 or less: only the account's limit)."""
        return self.rates.get(sender, self.rate)

    def _buckets(self, sender: str, now: float) -> list[_Bucket]:
        buckets = []
        rate = self.rate_of(sender)
        if rate > 0:
            bucket = self._senders.get(sender)
            if bucket is None or bucket.rate != rate:  # new, or its rate was changed
                bucket = self._senders[sender] = _Bucket(rate, rate, now)
            buckets.append(bucket)
        if self.account_rate is not None and self.account_rate > 0:
            if self._account is None or self._account.rate != self.account_rate:
                self._account = _Bucket(self.account_rate, self.account_rate, now)
            buckets.append(self._account)
        return buckets

    def take(self, sender: str) -> bool:
        """Take one token for `sender` (and its account) if every bucket has one."""
        now = self.monotonic()
        buckets = self._buckets(sender, now)
        levels = [b.level(now) for b in buckets]
        ready = all(level >= 1.0 for level in levels)
        for bucket, level in zip(buckets, levels, strict=True):
            bucket.tokens, bucket.last = (level - 1.0 if ready else level), now
        return ready

    def ready(self, sender: str) -> bool:
        """True when `sender` (and its account) has a token now (nothing is taken)."""
        now = self.monotonic()
        return all(b.level(now) >= 1.0 for b in self._buckets(sender, now))

    def wait_hint(self, senders: Iterable[str] = ()) -> float:
        """Seconds until one of `senders` may send again (any sender when none is given)."""
        now = self.monotonic()
        waits = [max((b.wait(now) for b in self._buckets(s, now)), default=0.0) for s in senders]
        if waits:
            return min(waits)
        rates = [r for r in (self.rate, *self.rates.values(), self.account_rate or 0) if r > 0]
        return 1.0 / max(rates) if rates else 0.0


def number_rates(numbers: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """The `send_rate` of each `[numbers."+44…"]` table that has one, by E.164 number.

    Numbers are normalised as the router does; a bad value is a ConfigError naming the table.
    """
    rates: dict[str, float] = {}
    for raw, table in numbers.items():
        value = table.get("send_rate")
        if value is None:
            continue
        where = f'[numbers."{raw}"].send_rate'
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ConfigError(f"{where} must be a number greater than 0, such as 5 or 0.5")
        try:
            number = normalize(raw)
            rates[number] = positive_float(str(value).strip())
        except PhoneNumberError as exc:
            raise ConfigError(f'[numbers."{raw}"]: {exc}') from None
        except ValueError as exc:
            raise ConfigError(f"{where} must be {exc}, got {value!r}") from None
    return rates


def workspace_rates(settings: Settings, workspace: Workspace) -> tuple[float, float | None]:
    """(each sender's own rate, the account's rate or None) for `workspace`'s sender.

    A declared workspace's `send_rate` (SMSBOT_SEND_RATE when it has none) is its account's;
    `default` keeps SMSBOT_SEND_RATE per sender unless [workspaces.default] sets `send_rate`.
    """
    if workspace.name == DEFAULT and "send_rate" not in settings.workspace_tables.get(DEFAULT, {}):
        return settings.send_rate_per_second, None
    return 0.0, workspace.send_rate
