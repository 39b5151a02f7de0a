"""Per-sender rate limits for the outbox: a token bucket for each virtual number.

Each workspace's sender has its own limiter (one provider account each): its numbers run at the
workspace's `send_rate` (SMSBOT_SEND_RATE for `default`), or at their own `send_rate` from a
`[numbers."+44…"]` table.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from smsbot.config_values import ConfigError, positive_float
from smsbot.sms.phone import PhoneNumberError, normalize


class RateLimiter:
    """A token bucket per sender: at most `rate` messages a second (or the sender's own rate
    in `rates`), bursts of one second."""

    def __init__(
        self,
        rate: float,
        monotonic: Callable[[], float] = time.monotonic,
        *,
        rates: Mapping[str, float] | None = None,
    ) -> None:
        self.rate = rate
        self.rates = dict(rates or {})
        self.monotonic = monotonic
        self._buckets: dict[str, tuple[float, float]] = {}

    def rate_of(self, sender: str) -> float:
        """Messages a second `sender` may send (0 or less: no limit)."""
        return self.rates.get(sender, self.rate)

    def _tokens(self, sender: str, now: float) -> float:
        rate = self.rate_of(sender)
        tokens, last = self._buckets.get(sender, (rate, now))
        return min(max(rate, 1.0), tokens + (now - last) * rate)

    def take(self, sender: str) -> bool:
        """Take one token for `sender` if there is one."""
        if self.rate_of(sender) <= 0:
            return True
        now = self.monotonic()
        tokens = self._tokens(sender, now)
        if tokens < 1.0:
            self._buckets[sender] = (tokens, now)
            return False
        self._buckets[sender] = (tokens - 1.0, now)
        return True

    def ready(self, sender: str) -> bool:
        """True when `sender` has a token now (nothing is taken)."""
        return self.rate_of(sender) <= 0 or self._tokens(sender, self.monotonic()) >= 1.0

    def wait_hint(self, senders: Iterable[str] = ()) -> float:
        """Seconds until one of `senders` has a token again (any sender when none is given)."""
        now = self.monotonic()
        waits = [
            0.0 if (rate := self.rate_of(s)) <= 0 else max(0.0, 1.0 - self._tokens(s, now)) / rate
            for s in senders
        ]
        if waits:
            return min(waits)
        fastest = max([self.rate, *self.rates.values()])
        return 1.0 / fastest if fastest > 0 else 0.0


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
