"""PureSMS v1's integer delivery statuses, mapped onto smsbot's one vocabulary."""

from __future__ import annotations

from smsbot.sms.status import DeliveryStatus

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
