"""Webhook signatures against openssl-made vectors, malformed headers, and arbitrary input."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import secrets
import shutil
import subprocess
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smsbot.channels.divergent.signature import SignatureError, sign, verify
from tests.support import VECTORS

VECTORS: list[dict[str, Any]] = json.loads(
    (VECTORS / "webhook-signatures.json").read_text("utf-8")
)["vectors"]

SECRET = "whsec_test"
TS = "1768487000"
NOW = int(TS)
BODY = b'{"id":"evt_1","eventType":2}'
GOOD = sign(SECRET, TS, BODY)
# the right MAC, but hex-encoded as many other providers send it
HEX = hmac.new(SECRET.encode(), TS.encode() + b"." + BODY, hashlib.sha256).hexdigest()


def check(
    *,
    timestamp: str | None = TS,
    signature: str | None = GOOD,
    body: bytes = BODY,
    secrets: tuple[str, ...] = (SECRET,),
    now: float = NOW,
) -> None:
    verify(body=body, timestamp=timestamp, signature=signature, secrets=secrets, now=now)


def rejected(**kwargs: Any) -> str:
    with pytest.raises(SignatureError) as caught:
        check(**kwargs)
    return caught.value.reason


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vectors(vector: dict[str, Any]) -> None:
    body = vector["body"].encode()
    args = {
        "body": body,
        "timestamp": vector["timestamp"],
        "signature": vector["signature"],
        "secrets": [vector["secret"]],
        "now": int(vector["timestamp"]),
    }
    if vector["valid"]:
        assert sign(vector["secret"], vector["timestamp"], body) == vector["signature"]
        verify(**args)
    else:
        with pytest.raises(SignatureError):
            verify(**args)


def test_the_vectors_cover_both_outcomes() -> None:
    assert {v["valid"] for v in VECTORS} == {True, False}


@pytest.mark.parametrize(
    "timestamp",
    [
        "",
        "abc",
        "1.7e9",
        "+1700000000",
        "1_700_000_000",
        "١٧٠٠٠٠٠٠٠٠",  # Arabic-Indic digits: str.isdigit() and int() both accept these
        "-1700000000",
        " 1700000000",
        "1700000000 ",
        "1" * 13,
        "9" * 5000,
    ],
)
def test_timestamp_forms_rejected(timestamp: str) -> None:
    rejected(timestamp=timestamp, signature=sign(SECRET, timestamp, BODY))


@pytest.mark.parametrize("skew", [-301, 301, -(10**9)])
def test_timestamp_outside_window_rejected(skew: int) -> None:
    assert "window" in rejected(now=NOW + skew)


@pytest.mark.parametrize("skew", [-300, 0, 300])
def test_timestamp_inside_window_accepted(skew: int) -> None:
    check(now=NOW + skew)


@pytest.mark.parametrize(
    "signature",
    [
        HEX,
        GOOD[:-2],
        "4iqzn9XL!oIL6chYhQ2ljabTVYVzDwER5rs0hy9nRcBk=",
        GOOD[:10] + " " + GOOD[10:],
        "é" + GOOD[1:],
        "A" * 5000,
        GOOD + GOOD,
    ],
    ids=["hex", "truncated", "junk", "space", "non-ascii", "huge", "doubled"],
)
def test_signature_forms_rejected(signature: str) -> None:
    rejected(signature=signature)


def test_body_change_rejected() -> None:
    assert rejected(body=BODY + b" ") == "X-Webhook-Signature does not match"


def test_either_secret_verifies_during_rotation() -> None:
    old, new = "whsec_old", "whsec_new"
    for signer in (old, new):
        check(signature=sign(signer, TS, BODY), secrets=(new, old))
    rejected(signature=sign("whsec_other", TS, BODY), secrets=(new, old))


def test_no_secrets_verifies_nothing() -> None:
    rejected(secrets=())


@pytest.mark.parametrize(
    ("missing", "header"),
    [("timestamp", "X-Webhook-Timestamp"), ("signature", "X-Webhook-Signature")],
)
@pytest.mark.parametrize("value", [None, ""])
def test_missing_header_is_named(missing: str, header: str, value: str | None) -> None:
    reason = rejected(**{missing: value})
    assert "missing" in reason
    assert header in reason


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_sign_matches_openssl() -> None:
    secret = "whsec_" + secrets.token_urlsafe(24)
    ts = str(NOW + secrets.randbelow(10**6))
    # argv cannot carry NUL, so the random body is text: JSON with non-ASCII and escapes
    text = "".join(
        chr(secrets.choice([*range(0x20, 0x7F), 0xE9, 0x20AC, 0x1F600])) for _ in range(300)
    )
    body = json.dumps({"id": secrets.token_hex(8), "text": text}, ensure_ascii=False).encode()
    script = 'printf "%s.%s" "$1" "$2" | openssl dgst -sha256 -hmac "$3" -binary | base64'
    result = subprocess.run(
        ["sh", "-c", script, "sh", ts.encode(), body, secret.encode()],
        capture_output=True,
        check=True,
        timeout=30,
    )
    assert result.stdout.decode().strip() == sign(secret, ts, body)


@settings(max_examples=300, deadline=None)
@given(
    body=st.binary(max_size=200),
    timestamp=st.one_of(st.none(), st.text(max_size=20), st.just(TS)),
    signature=st.one_of(
        st.none(),
        st.text(max_size=60),
        st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),
    ),
    # secrets come from our own configuration, not the request, so they are valid text
    secret_list=st.lists(
        st.text(st.characters(exclude_categories=["Cs"]), max_size=20), max_size=3
    ),
    now=st.one_of(st.integers(NOW - 400, NOW + 400), st.integers(0, 10**12)),
)
def test_verify_only_ever_raises_signature_error(
    body: bytes, timestamp: str | None, signature: str | None, secret_list: list[str], now: int
) -> None:
    with contextlib.suppress(SignatureError):
        verify(body=body, timestamp=timestamp, signature=signature, secrets=secret_list, now=now)
