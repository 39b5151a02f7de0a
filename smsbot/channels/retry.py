"""Retrying transient provider failures with exponential backoff and full jitter."""

from __future__ import annotations

import asyncio
import logging
import random as _random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from smsbot.channels.errors import RateLimitedError, TransientError

T = TypeVar("T")

log = logging.getLogger(__name__)


@dataclass
class RetryPolicy:
    """How often and how long to wait before sending a failed provider call again.

    `attempts` counts every call, the first included. Sleep and randomness are injected so tests
    neither wait nor depend on chance.
    """

    attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 30.0
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    random: Callable[[], float] = _random.random
    # A provider asking for longer than this is not waited for here: the error goes to the
    # caller, whose outbox waits durably instead of holding a send (and its lease) open.
    max_retry_after: float = 300.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be at least 1 (the first call counts)")

    def delay(self, retry: int, error: TransientError) -> float:
        """Return how long to wait before retry number `retry` (0 for the first retry)."""
        if isinstance(error, RateLimitedError) and error.retry_after is not None:
            # The provider said when; jitter would only make us early (refused again) or late.
            return min(error.retry_after, self.max_retry_after)
        # Full jitter (AWS Architecture Blog, "Exponential Backoff and Jitter"): spreads out the
        # retries of many senders that failed at the same moment.
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** min(retry, 64))
        return self.random() * ceiling

    async def run(self, call: Callable[[], Awaitable[T]]) -> T:
        """Await `call()`, retrying TransientError; when attempts run out, re-raise the last."""
        for attempt in range(1, self.attempts + 1):
            try:
                return await call()
            except TransientError as error:
                if attempt == self.attempts:
                    raise
                long_wait = isinstance(error, RateLimitedError) and (
                    (error.retry_after or 0.0) > self.max_retry_after
                )
                if long_wait:
                    raise
                wait = self.delay(attempt - 1, error)
                log.warning(
                    "provider call failed (attempt %d of %d), retrying in %.2fs: %s",
                    attempt,
                    self.attempts,
                    wait,
                    error,
                )
                await self.sleep(wait)
        raise AssertionError("unreachable: the loop returns or raises")
