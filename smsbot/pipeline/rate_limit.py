"""Per-sender rate limits for the outbox: a token bucket for each virtual number."""

from __future__ import annotations

import time
from collections.abc import Callable


class RateLimiter:
    """A token bucket per sender: at most `rate` messages a second, bursts of one second."""

    def __init__(self, rate: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.monotonic = monotonic
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, sender: str) -> bool:
        """Take one token for `sender` if there is one."""
        if self.rate <= 0:
            return True
        now = self.monotonic()
        tokens, last = self._buckets.get(sender, (self.rate, now))
        tokens = min(max(self.rate, 1.0), tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[sender] = (tokens, now)
            return False
        self._buckets[sender] = (tokens - 1.0, now)
        return True

    def ready(self, sender: str) -> bool:
        """True when `sender` has a token now (nothing is taken)."""
        if self.rate <= 0:
            return True
        tokens, last = self._buckets.get(sender, (self.rate, self.monotonic()))
        return tokens + (self.monotonic() - last) * self.rate >= 1.0

    def wait_hint(self) -> float:
        """Seconds until some sender has a token again."""
        return 1.0 / self.rate if self.rate > 0 else 0.0
