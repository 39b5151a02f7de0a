"""Webhook bodies of both providers into typed events; every malformed shape into a clear reason."""

from __future__ import annotations

import copy
import datetime as dt
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smsbot.channels import (
    DeliveryReceipt,
    InboundSms,
    UnknownEvent,
    WebhookFormatError,
    parse_envelope,
    parse_receipts,
)
from smsbot.channels.divergent.status import DIVERGENT_STATUSES
from smsbot.channels.puresms.status import PURESMS_STATUSES
from smsbot.sms.status import DeliveryStatus

UTC = dt.UTC

# The two example payloads from the Divergent Connect reference, byte for byte.
INBOUND_BODY = (
    b'{"id":"evt_in_789012","timestamp":"2026-01-15T14:22:30Z","workspaceId":"ws_xyz789",'
    b'"eventType":2,"data":{"messageId":"inb_987654","inboundNumber":"+447700900100",'
    b'"sender":"+447700900123","body":"Yes, please confirm my appointment",'
    b'"receivedAt":"2026-01-15T14:22:30Z"}}'
)
RECEIPT_BODY = (
    b'{"id":"evt_dr_123456","timestamp":"2026-01-15T10:30:00Z","workspaceId":"ws_xyz789",'
    b'"eventType":1,"data":{"messageId":"12345678","clientReference":"order-confirmation-456",'
    b'"deliveryStatus":"Delivered","errorCode":null,"processedAt":"2026-01-15T10:29:55Z",'
    b'"deliveredAt":"2026-01-15T10:30:00Z"}}'
)
INBOUND: dict[str, Any] = json.loads(INBOUND_BODY)
RECEIPT: dict[str, Any] = json.loads(RECEIPT_BODY)
PURE_RECEIPT: dict[str, Any] = {
    "reference": "ABC123",
    "clientReference": "CLI-1",
    "batchReference": "BATCH1",
    "deliveryStatus": 2,
    "additionalMessage": None,
}


def dumps(value: object) -> bytes:
    return json.dumps(value).encode()


def changed(base: dict[str, Any], path: str, value: Any) -> bytes:
    """`base` with the field at dotted `path` set to `value` (or removed, for ...)."""
    doc = copy.deepcopy(base)
    *parents, leaf = path.split(".")
    target = doc
    for key in parents:
        target = target[key]
    if value is ...:
        del target[leaf]
    else:
        target[leaf] = value
    return dumps(doc)


def reason_of(body: bytes) -> str:
    with pytest.raises(WebhookFormatError) as caught:
        parse_envelope(body)
    return caught.value.reason


def receipts_reason(body: bytes) -> str:
    with pytest.raises(WebhookFormatError) as caught:
        parse_receipts(body)
    return caught.value.reason


# --- Divergent Connect: the reference's examples ----------------------------------------------


def test_reference_inbound_sms() -> None:
    assert parse_envelope(INBOUND_BODY) == InboundSms(
        event_id="evt_in_789012",
        message_id="inb_987654",
        inbound_number="+447700900100",
        sender="+447700900123",
        body="Yes, please confirm my appointment",
        received_at=dt.datetime(2026, 1, 15, 14, 22, 30, tzinfo=UTC),
        occurred_at=dt.datetime(2026, 1, 15, 14, 22, 30, tzinfo=UTC),
        workspace_id="ws_xyz789",
    )


def test_reference_delivery_receipt() -> None:
    assert parse_envelope(RECEIPT_BODY) == DeliveryReceipt(
        event_id="evt_dr_123456",
        provider_message_id="12345678",
        client_reference="order-confirmation-456",
        status=DeliveryStatus.DELIVERED,
        raw_status="Delivered",
        error_code=None,
        occurred_at=dt.datetime(2026, 1, 15, 10, 30, tzinfo=UTC),
        workspace_id="ws_xyz789",
    )


def test_events_are_frozen() -> None:
    event = parse_envelope(INBOUND_BODY)
    with pytest.raises(AttributeError):
        event.event_id = "other"  # type: ignore[misc]


# --- Divergent Connect: what is accepted ------------------------------------------------------


@pytest.mark.parametrize(("raw", "status"), DIVERGENT_STATUSES.items())
def test_every_divergent_status_maps(raw: str, status: DeliveryStatus) -> None:
    for spelling in (raw, raw.upper(), raw.lower()):
        event = parse_envelope(changed(RECEIPT, "data.deliveryStatus", spelling))
        assert isinstance(event, DeliveryReceipt)
        assert event.status is status
        assert event.raw_status == spelling


def test_unrecognised_status_is_unknown_and_kept() -> None:
    event = parse_envelope(changed(RECEIPT, "data.deliveryStatus", "Bounced"))
    assert isinstance(event, DeliveryReceipt)
    assert event.status is DeliveryStatus.UNKNOWN
    assert event.raw_status == "Bounced"


@pytest.mark.parametrize("event_type", [0, 3, 99, -1])
def test_other_event_types_are_unknown_events(event_type: int) -> None:
    body = dumps({"id": "evt_x", "eventType": event_type, "data": "anything"})
    assert parse_envelope(body) == UnknownEvent(event_id="evt_x", event_type=event_type)


@pytest.mark.parametrize(("raw", "code"), [(None, None), ("E42", "E42"), (42, "42"), ("", None)])
def test_error_code_forms(raw: object, code: str | None) -> None:
    event = parse_envelope(changed(RECEIPT, "data.errorCode", raw))
    assert isinstance(event, DeliveryReceipt)
    assert event.error_code == code


def test_receipt_time_falls_back_to_processed_then_envelope() -> None:
    doc = copy.deepcopy(RECEIPT)
    del doc["data"]["deliveredAt"]
    event = parse_envelope(dumps(doc))
    assert isinstance(event, DeliveryReceipt)
    assert event.occurred_at == dt.datetime(2026, 1, 15, 10, 29, 55, tzinfo=UTC)
    del doc["data"]["processedAt"]
    event = parse_envelope(dumps(doc))
    assert isinstance(event, DeliveryReceipt)
    assert event.occurred_at == dt.datetime(2026, 1, 15, 10, 30, tzinfo=UTC)


@pytest.mark.parametrize("keep", ["messageId", "clientReference"])
def test_receipt_needs_only_one_reference(keep: str) -> None:
    other = "clientReference" if keep == "messageId" else "messageId"
    event = parse_envelope(changed(RECEIPT, f"data.{other}", ...))
    assert isinstance(event, DeliveryReceipt)
    assert (event.provider_message_id or event.client_reference) == RECEIPT["data"][keep]


def test_numeric_message_id_is_read_as_text() -> None:
    event = parse_envelope(changed(RECEIPT, "data.messageId", 12345678))
    assert isinstance(event, DeliveryReceipt)
    assert event.provider_message_id == "12345678"


def test_optional_fields_may_be_absent() -> None:
    doc = copy.deepcopy(INBOUND)
    for key in ("timestamp", "workspaceId"):
        del doc[key]
    for key in ("messageId", "receivedAt"):
        del doc["data"][key]
    event = parse_envelope(dumps(doc))
    assert isinstance(event, InboundSms)
    assert (event.message_id, event.received_at, event.occurred_at, event.workspace_id) == (
        None,
        None,
        None,
        None,
    )


def test_empty_inbound_body_is_allowed() -> None:
    event = parse_envelope(changed(INBOUND, "data.body", ""))
    assert isinstance(event, InboundSms)
    assert event.body == ""


def test_unicode_body_and_numbers_kept_as_sent() -> None:
    doc = copy.deepcopy(INBOUND)
    doc["data"].update(body="Oui 👍 — à demain", sender="07700 900123")
    event = parse_envelope(json.dumps(doc, ensure_ascii=False).encode())
    assert isinstance(event, InboundSms)
    assert (event.body, event.sender) == ("Oui 👍 — à demain", "07700 900123")


def test_extra_fields_are_ignored() -> None:
    doc = copy.deepcopy(INBOUND)
    doc["newEnvelopeField"] = {"nested": [1, 2]}
    doc["data"]["segments"] = 1
    assert parse_envelope(dumps(doc)) == parse_envelope(INBOUND_BODY)


def test_byte_order_mark_is_tolerated() -> None:
    assert parse_envelope(b"\xef\xbb\xbf" + INBOUND_BODY) == parse_envelope(INBOUND_BODY)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-01-15T14:22:30Z", dt.datetime(2026, 1, 15, 14, 22, 30, tzinfo=UTC)),
        ("2026-01-15T14:22:30+00:00", dt.datetime(2026, 1, 15, 14, 22, 30, tzinfo=UTC)),
        ("2026-01-15T15:22:30+01:00", dt.datetime(2026, 1, 15, 14, 22, 30, tzinfo=UTC)),
        # .NET's round-trip format: seven fractional digits
        ("2026-01-15T14:22:30.1234567Z", dt.datetime(2026, 1, 15, 14, 22, 30, 123456, UTC)),
        # no offset: the provider works in UTC
        ("2026-01-15T14:22:30", dt.datetime(2026, 1, 15, 14, 22, 30, tzinfo=UTC)),
    ],
)
def test_timestamps_become_aware_utc(raw: str, expected: dt.datetime) -> None:
    event = parse_envelope(changed(INBOUND, "data.receivedAt", raw))
    assert isinstance(event, InboundSms)
    assert event.received_at == expected
    assert event.received_at is not None and event.received_at.tzinfo is UTC


# --- Divergent Connect: what is refused, and why ----------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (changed(INBOUND, "id", ...), "id is missing"),
        (changed(INBOUND, "id", ""), "id must not be empty"),
        (changed(INBOUND, "id", 7), "id must be a string"),
        (changed(INBOUND, "id", "e" * 201), "id is longer than 200 characters"),
        (changed(INBOUND, "eventType", ...), "eventType is missing"),
        (changed(INBOUND, "eventType", None), "eventType is missing"),
        (changed(INBOUND, "eventType", "2"), "eventType must be an integer"),
        (changed(INBOUND, "eventType", True), "eventType must be an integer"),
        (changed(INBOUND, "eventType", 2.0), "eventType must be an integer"),
        (changed(INBOUND, "eventType", 2**40), "eventType is out of range"),
        (changed(INBOUND, "timestamp", 1768487000), "timestamp must be an ISO 8601 string"),
        (changed(INBOUND, "timestamp", "yesterday"), "timestamp is not an ISO 8601 datetime"),
        (changed(INBOUND, "timestamp", "2026-13-01T00:00:00Z"), "timestamp is not an ISO 8601"),
        (changed(INBOUND, "workspaceId", ["ws"]), "workspaceId must be a string"),
        (changed(INBOUND, "data", ...), "data is missing"),
        (changed(INBOUND, "data", "text"), "data must be an object"),
        (changed(INBOUND, "data", [1]), "data must be an object"),
        (changed(INBOUND, "data", None), "data must be an object"),
        (changed(INBOUND, "data.sender", ...), "data.sender is missing"),
        (changed(INBOUND, "data.sender", ""), "data.sender must not be empty"),
        (changed(INBOUND, "data.sender", 447700900123), "data.sender must be a string"),
        (changed(INBOUND, "data.sender", "+4" * 20), "data.sender is longer than 32 characters"),
        (changed(INBOUND, "data.inboundNumber", ...), "data.inboundNumber is missing"),
        (changed(INBOUND, "data.body", ...), "data.body is missing"),
        (changed(INBOUND, "data.body", None), "data.body must be a string"),
        (changed(INBOUND, "data.body", ["hi"]), "data.body must be a string"),
        (changed(INBOUND, "data.body", "x" * 10_001), "data.body is longer than 10000"),
        (changed(INBOUND, "data.body", "a\x00b"), "data.body contains a NUL character"),
        (changed(INBOUND, "data.receivedAt", "soon"), "data.receivedAt is not an ISO 8601"),
        (
            changed(INBOUND, "data.receivedAt", "٢٠٢٦-01-15T14:22:30Z"),
            "data.receivedAt is not an ISO 8601",
        ),
        (changed(INBOUND, "data.messageId", {"id": 1}), "data.messageId must be a string"),
        (changed(RECEIPT, "data.deliveryStatus", ...), "data.deliveryStatus is missing"),
        (changed(RECEIPT, "data.deliveryStatus", 2), "data.deliveryStatus must be a string"),
        (changed(RECEIPT, "data.errorCode", 1.5), "data.errorCode must be a string, an integer"),
        (changed(RECEIPT, "data.errorCode", False), "data.errorCode must be a string, an integer"),
        (changed(RECEIPT, "data.processedAt", "later"), "data.processedAt is not an ISO 8601"),
        (
            changed(RECEIPT, "data", {"deliveryStatus": "Delivered"}),
            "data needs a messageId or a clientReference",
        ),
        (b"\xff\xfe{}", "body is not UTF-8"),
        (INBOUND_BODY.replace(b"confirm", b"confirm \xe9"), "body is not UTF-8"),
        (b"", "body is not valid JSON"),
        (b"<xml/>", "body is not valid JSON"),
        (INBOUND_BODY[:-1], "body is not valid JSON"),
        (b"[" + INBOUND_BODY + b"]", "body must be a JSON object"),
        (b'"evt"', "body must be a JSON object"),
        (b"null", "body must be a JSON object"),
        (b"[" * 10_000 + b"]" * 10_000, "body is nested too deeply"),
        (b'{"id":' + b'{"a":' * 10_000 + b"1" + b"}" * 10_001, "body is nested too deeply"),
        (b'{"id":' + b"[" * 40 + b"]" * 40 + b"}", "body is nested too deeply"),
        (b'{"id":"e","eventType":2,"x":NaN}', "body contains NaN"),
        (b'{"id":"e","eventType":-Infinity}', "body contains -Infinity"),
        (b'{"id":"e","eventType":' + b"1" * 5000 + b"}", "body has a number with too many"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_malformed_envelopes(body: bytes, reason: str) -> None:
    assert reason_of(body).startswith(reason)


def test_lone_surrogate_in_a_kept_field_is_refused() -> None:
    body = INBOUND_BODY.replace(b"confirm", b"confirm \\ud800")
    assert reason_of(body) == "data.body is not valid Unicode"


def test_format_error_is_a_value_error_with_reason_as_message() -> None:
    with pytest.raises(ValueError, match=r"^data\.sender is missing$"):
        parse_envelope(changed(INBOUND, "data.sender", ...))


# --- legacy PureSMS v1 receipts ---------------------------------------------------------------


def test_single_receipt_object() -> None:
    assert parse_receipts(dumps(PURE_RECEIPT)) == [
        DeliveryReceipt(
            event_id=None,
            provider_message_id="ABC123",
            client_reference="CLI-1",
            status=DeliveryStatus.DELIVERED,
            raw_status="2",
            error_code=None,
            occurred_at=None,
            batch_reference="BATCH1",
        )
    ]


@pytest.mark.parametrize("wrap", [None, "receipts", "deliveryReceipts", "items"])
@pytest.mark.parametrize("count", [1, 3, 15_000])
def test_batches(wrap: str | None, count: int) -> None:
    items = [{**PURE_RECEIPT, "reference": f"R{i}", "deliveryStatus": i % 10} for i in range(count)]
    body = dumps(items if wrap is None else {wrap: items})
    receipts = parse_receipts(body)
    assert [r.provider_message_id for r in receipts] == [f"R{i}" for i in range(count)]
    assert [r.raw_status for r in receipts] == [str(i % 10) for i in range(count)]


def test_empty_batch_is_no_receipts() -> None:
    assert parse_receipts(b"[]") == []


@pytest.mark.parametrize(("code", "status"), PURESMS_STATUSES.items())
def test_every_puresms_status_maps(code: int, status: DeliveryStatus) -> None:
    for raw in (code, str(code)):
        (receipt,) = parse_receipts(dumps({**PURE_RECEIPT, "deliveryStatus": raw}))
        assert receipt.status is status
        assert receipt.raw_status == str(code)


@pytest.mark.parametrize("keep", ["reference", "clientReference"])
def test_receipt_needs_only_one_of_the_references(keep: str) -> None:
    (receipt,) = parse_receipts(dumps({keep: "X1", "deliveryStatus": 5}))
    assert (receipt.provider_message_id or receipt.client_reference) == "X1"
    assert receipt.batch_reference is None


def bad_batch(index: int, **fields: object) -> bytes:
    items: list[object] = [dict(PURE_RECEIPT) for _ in range(index + 2)]
    items[index] = {**PURE_RECEIPT, **fields}
    return dumps(items)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (bad_batch(3, deliveryStatus=10), "receipts[3].deliveryStatus must be 0-9"),
        (bad_batch(3, deliveryStatus=-1), "receipts[3].deliveryStatus must be 0-9"),
        (bad_batch(0, deliveryStatus="10"), "receipts[0].deliveryStatus must be 0-9"),
        (bad_batch(0, deliveryStatus=" 2"), "receipts[0].deliveryStatus must be 0-9"),
        (bad_batch(0, deliveryStatus="٢"), "receipts[0].deliveryStatus must be 0-9"),
        (bad_batch(0, deliveryStatus="Delivered"), "receipts[0].deliveryStatus must be 0-9"),
        (bad_batch(1, deliveryStatus=2.0), "receipts[1].deliveryStatus must be 0-9"),
        (bad_batch(1, deliveryStatus=True), "receipts[1].deliveryStatus must be 0-9"),
        (bad_batch(1, deliveryStatus=None), "receipts[1].deliveryStatus is missing"),
        (
            bad_batch(2, reference=None, clientReference=""),
            "receipts[2] needs a reference or a clientReference",
        ),
        (bad_batch(2, batchReference=["B"]), "receipts[2].batchReference must be a string"),
        (dumps([PURE_RECEIPT, "ABC123"]), "receipts[1] must be an object"),
        (dumps({"receipts": PURE_RECEIPT}), "receipts must be an array"),
        (dumps({"items": None}), "items must be an array"),
        (dumps([PURE_RECEIPT] * 15_001), "too many receipts (more than 15000)"),
        (b"2", "body must be a JSON array or object of receipts"),
        (b"\xc3\x28", "body is not UTF-8"),
        (b"[{]", "body is not valid JSON"),
        (b"[NaN]", "body contains NaN, which is not valid JSON"),
        (b"[" * 10_000 + b"]" * 10_000, "body is nested too deeply"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_malformed_receipts(body: bytes, reason: str) -> None:
    assert receipts_reason(body) == reason


# --- arbitrary input: only ever a WebhookFormatError ------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
# values shaped like the real payloads, so the field checks are reached, not just the envelope
field_values = json_values | st.sampled_from(
    ["", "Delivered", "2", "+447700900123", "2026-01-15T10:30:00Z", "\x00", "\ud800", "x" * 10_001]
)
FIELD_PATHS = sorted(
    {*INBOUND, *RECEIPT} | {f"data.{key}" for key in {*INBOUND["data"], *RECEIPT["data"]}}
)


def with_changes(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(base)
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        target = doc
        for key in parents:
            # once "data" itself was replaced by a non-object, its fields have nowhere to go
            target = target[key] if isinstance(target.get(key), dict) else {}
        target[leaf] = value
    return doc


# a reference payload with a few fields replaced, so most examples get past the envelope
envelopes = st.builds(
    with_changes,
    st.sampled_from([INBOUND, RECEIPT]),
    st.dictionaries(
        st.sampled_from(FIELD_PATHS),
        field_values | st.sampled_from([1, 2, 3, 2.0, "2", True]),
        max_size=3,
    ),
)
receipt_objects = st.dictionaries(
    st.sampled_from(["reference", "clientReference", "batchReference", "deliveryStatus"]),
    field_values | st.integers(-2, 12),
)
receipt_bodies = (
    receipt_objects
    | st.lists(receipt_objects, max_size=5)
    | st.fixed_dictionaries({"receipts": st.lists(receipt_objects, max_size=5) | json_values})
)


def only_format_errors(body: bytes) -> None:
    for parse in (parse_envelope, parse_receipts):
        try:
            parse(body)
        except WebhookFormatError as error:
            assert error.reason


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_format_errors(body: bytes) -> None:
    only_format_errors(body)


@settings(max_examples=300, deadline=None)
@given(json_values | envelopes | receipt_bodies)
def test_arbitrary_json_only_raises_format_errors(value: object) -> None:
    only_format_errors(json.dumps(value).encode())
    only_format_errors(json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass"))
