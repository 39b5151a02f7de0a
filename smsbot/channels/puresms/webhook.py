"""Legacy PureSMS v1 delivery receipts: batched, with integer statuses 0-9 and no event id."""

from __future__ import annotations

from smsbot.channels.events import DeliveryReceipt, Fields, WebhookFormatError, load_json
from smsbot.channels.puresms.status import PURESMS_STATUSES

MAX_RECEIPTS = 15_000  # the v1 API's own batch limit
MAX_REF_CHARS = 200

# The reference shows only one receipt's fields and says receipts "are batched", not how; these
# are the wrappers a batch could plausibly arrive in, besides a bare array or a lone object.
_LIST_KEYS = ("receipts", "deliveryReceipts", "items")


def parse_receipts(body: bytes) -> list[DeliveryReceipt]:
    """Parse a PureSMS v1 receipt webhook body; raise WebhookFormatError if it is malformed."""
    items = _receipt_items(load_json(body))
    if len(items) > MAX_RECEIPTS:
        raise WebhookFormatError(f"too many receipts (more than {MAX_RECEIPTS})")
    return [_receipt(item, f"receipts[{index}]") for index, item in enumerate(items)]


def _receipt_items(value: object) -> list[object]:
    if isinstance(value, list):
        return value
    if not isinstance(value, dict):
        raise WebhookFormatError("body must be a JSON array or object of receipts")
    for key in _LIST_KEYS:
        if key in value:
            items = value[key]
            if not isinstance(items, list):
                raise WebhookFormatError(f"{key} must be an array")
            return items
    return [value]


def _receipt(item: object, where: str) -> DeliveryReceipt:
    if not isinstance(item, dict):
        raise WebhookFormatError(f"{where} must be an object")
    fields = Fields(item, where)
    code = _status_code(fields)
    reference = fields.optional_ref("reference", max_chars=MAX_REF_CHARS)
    client_reference = fields.optional_ref("clientReference", max_chars=MAX_REF_CHARS)
    if reference is None and client_reference is None:
        raise WebhookFormatError(f"{where} needs a reference or a clientReference")
    return DeliveryReceipt(
        event_id=None,
        provider_message_id=reference,
        client_reference=client_reference,
        status=PURESMS_STATUSES[code],
        raw_status=str(code),
        error_code=None,  # additionalMessage is "currently reserved" and carries no error code
        occurred_at=None,  # v1 receipts carry no time; the intake knows when one arrived
        batch_reference=fields.optional_ref("batchReference", max_chars=MAX_REF_CHARS),
    )


def _status_code(fields: Fields) -> int:
    name = fields.name("deliveryStatus")
    if not fields.has("deliveryStatus"):
        raise WebhookFormatError(f"{name} is missing")
    raw = fields.raw("deliveryStatus")
    # The reference shows an integer, but a digit in a string is the same status (a client
    # serialising an enum as text would send one); refusing it would only make them retry.
    if isinstance(raw, str) and len(raw) == 1 and raw in "0123456789":
        return int(raw)
    if isinstance(raw, int) and not isinstance(raw, bool) and raw in PURESMS_STATUSES:
        return raw
    raise WebhookFormatError(f"{name} must be 0-9")
