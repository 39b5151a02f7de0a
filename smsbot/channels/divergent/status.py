"""Divergent Connect's delivery statuses, mapped onto smsbot's one vocabulary."""

from __future__ import annotations

from smsbot.sms.status import DeliveryStatus

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
