"""One delivery-status vocabulary for every provider; a status never moves backwards."""

from __future__ import annotations

import enum


class DeliveryStatus(enum.StrEnum):
    """Where an outbound message is, from our outbox to the handset."""

    QUEUED = "queued"  # in our outbox, not yet handed to the provider
    ACCEPTED = "accepted"  # the provider took it (or scheduled it)
    DISPATCHED = "dispatched"  # handed to the carrier
    UNKNOWN = "unknown"  # the provider could not tell; not final
    DELIVERED = "delivered"
    FAILED = "failed"  # undeliverable, or a permanent error from the provider API
    EXPIRED = "expired"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    DELETED = "deleted"
    SKIPPED = "skipped"
    SUPPRESSED = "suppressed"  # never sent: the recipient had opted out

    @property
    def is_final(self) -> bool:
        """True when no later receipt can change this status."""
        return _RANK[self] >= _FINAL

    def can_become(self, new: DeliveryStatus) -> bool:
        """True when moving from self to `new` is forward progress."""
        return _RANK[new] > _RANK[self]


_FINAL = 3
_RANK: dict[DeliveryStatus, int] = {
    DeliveryStatus.QUEUED: 0,
    DeliveryStatus.ACCEPTED: 1,
    DeliveryStatus.DISPATCHED: 2,
    DeliveryStatus.UNKNOWN: 2,
    **{
        s: _FINAL
        for s in (
            DeliveryStatus.DELIVERED,
            DeliveryStatus.FAILED,
            DeliveryStatus.EXPIRED,
            DeliveryStatus.REJECTED,
            DeliveryStatus.CANCELLED,
            DeliveryStatus.DELETED,
            DeliveryStatus.SKIPPED,
            DeliveryStatus.SUPPRESSED,
        )
    },
}
