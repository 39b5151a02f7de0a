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

# Divergent Connect delivery receipts carry these strings (reference: "Delivery Receipt payload").
DIVERGENT_STATUSES: dict[str, DeliveryStatus] = {
    "Queued": DeliveryStatus.ACCEPTED,
    "Dispatched": DeliveryStatus.DISPATCHED,
    "Delivered": DeliveryStatus.DELIVERED,
    "Failed": DeliveryStatus.FAILED,
    "Expired": DeliveryStatus.EXPIRED,
    "Rejected": DeliveryStatus.REJECTED,
    "Cancelled": DeliveryStatus.CANCELLED,
    "Deleted": DeliveryStatus.DELETED,
    "Unknown": DeliveryStatus.UNKNOWN,
}

# Legacy PureSMS v1 receipts carry integers 0-9 (reference: "Delivery Receipts").
PURESMS_STATUSES: dict[int, DeliveryStatus] = {
    0: DeliveryStatus.ACCEPTED,  # Scheduled
    1: DeliveryStatus.DISPATCHED,  # Enroute
    2: DeliveryStatus.DELIVERED,
    3: DeliveryStatus.EXPIRED,
    4: DeliveryStatus.DELETED,
    5: DeliveryStatus.FAILED,  # Undeliverable
    6: DeliveryStatus.ACCEPTED,  # Accepted by the SMSC
    7: DeliveryStatus.UNKNOWN,
    8: DeliveryStatus.REJECTED,
    9: DeliveryStatus.SKIPPED,
}
