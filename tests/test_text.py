"""GSM-7 / UCS-2 detection and segment counting against the shared vectors and the edge cases."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smsbot.sms import text as sms_text
from smsbot.sms.text import Encoding, SmsText, analyze, split_parts, to_gsm
from tests.support import VECTORS as VECTOR_DIR

VECTORS_FILE = VECTOR_DIR / "sms-segments.json"

EXTENDED = set("\f^{}\\[~]|€")
# Written out again here (not imported) so the tests check the table rather than echo it.
GSM_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
EMOJI = "\U0001f61c"
CURLY = "“quoted” – it’s…"


def _load_vectors() -> list[dict[str, Any]]:
    if not VECTORS_FILE.exists():
        return []  # test_vectors_file_is_there reports it; don't break collection
    vectors: list[dict[str, Any]] = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))["vectors"]
    return vectors


VECTORS = _load_vectors()


def part_units(part: str, encoding: Encoding) -> int:
    """Count units independently of smsbot.sms.text: septets, or UTF-16 code units."""
    if encoding is Encoding.GSM7:
        return sum(2 if ch in EXTENDED else 1 for ch in part)
    return len(part.encode("utf-16-le")) // 2


def assert_parts_sound(result: SmsText) -> None:
    parts = result.parts
    assert "".join(parts) == result.text
    assert len(parts) == result.segments
    assert sum(part_units(p, result.encoding) for p in parts) == result.units
    if result.segments > 1:
        limit = 153 if result.encoding is Encoding.GSM7 else 67
        assert all(0 < part_units(p, result.encoding) <= limit for p in parts)


def test_vectors_file_is_there() -> None:
    assert VECTORS, f"no vectors at {VECTORS_FILE}: the repository carries them (tests/vectors)"


@pytest.mark.parametrize("vector", VECTORS, ids=[v["build"][:40] for v in VECTORS])
def test_shared_vector(vector: dict[str, Any]) -> None:
    # eval is fine: `build` is trusted test data. (No "noqa: S307": S is off for tests/, and
    # RUF100 would flag it as unused.)
    text = eval(vector["build"], {"__builtins__": {}})
    result = analyze(text)
    assert result.encoding == vector["encoding"]
    assert result.segments == vector["segments"]
    assert_parts_sound(result)


def test_empty_text_is_one_segment() -> None:
    result = analyze("")
    assert (result.encoding, result.units, result.segments) == (Encoding.GSM7, 0, 1)
    assert result.parts == [""]


@pytest.mark.parametrize(("length", "segments"), [(160, 1), (161, 2), (306, 2), (307, 3)])
def test_gsm_boundaries(length: int, segments: int) -> None:
    result = analyze("x" * length)
    assert (result.encoding, result.units, result.segments) == (Encoding.GSM7, length, segments)
    assert_parts_sound(result)


def test_euro_after_159_chars_is_161_septets() -> None:
    result = analyze("a" * 159 + "€")
    assert (result.encoding, result.units, result.segments) == (Encoding.GSM7, 161, 2)
    assert_parts_sound(result)


@pytest.mark.parametrize("ch", sorted(EXTENDED))
def test_every_extension_char_costs_two_septets(ch: str) -> None:
    result = analyze(ch)
    assert (result.encoding, result.units) == (Encoding.GSM7, 2)


def test_whole_gsm_basic_set_is_gsm7() -> None:
    assert len(set(GSM_BASIC)) == 127  # 128 codes less the escape
    result = analyze(GSM_BASIC)
    assert (result.encoding, result.units) == (Encoding.GSM7, 127)


@pytest.mark.parametrize(
    "ch",
    ["á", "`", "ç", "í", "ó", "ú", "â", "ê", "õ", "ã", "\t", "\x1b", "\x00", "Ä\u0308", "\u00a0"],
)
def test_non_gsm_char_forces_ucs2(ch: str) -> None:
    assert analyze("Hello " + ch).encoding is Encoding.UCS2


@pytest.mark.parametrize(("length", "segments"), [(70, 1), (71, 2), (134, 2), (135, 3)])
def test_ucs2_boundaries(length: int, segments: int) -> None:
    result = analyze("á" * length)
    assert (result.encoding, result.units, result.segments) == (Encoding.UCS2, length, segments)
    assert_parts_sound(result)


def test_emoji_counts_two_units() -> None:
    result = analyze(EMOJI)
    assert (result.encoding, result.units, result.segments) == (Encoding.UCS2, 2, 1)


def test_emoji_at_the_67_unit_boundary_moves_whole() -> None:
    text = "a" * 66 + EMOJI + "a" * 66
    parts = split_parts(text)
    assert parts[0] == "a" * 66
    assert parts[1].startswith(EMOJI)
    assert "".join(parts) == text
    assert analyze(text).segments == 3


def test_emoji_just_inside_the_boundary_stays() -> None:
    text = "a" * 65 + EMOJI + "a" * 66  # 133 units, the pair is units 66-67
    result = analyze(text)
    assert result.segments == 2
    assert result.parts[0] == "a" * 65 + EMOJI


def test_escape_pair_at_the_153_septet_boundary_moves_whole() -> None:
    text = "a" * 152 + "{" + "a" * 152
    result = analyze(text)
    assert result.parts[0] == "a" * 152
    assert result.parts[1].startswith("{")
    assert result.segments == 3
    assert_parts_sound(result)


@pytest.mark.parametrize("ch", ["€", "[", "\\"])
def test_many_extension_chars_never_split(ch: str) -> None:
    result = analyze("a" + ch * 200)
    assert result.units == 401
    assert_parts_sound(result)
    assert result.segments == 3  # 1 + 76*2 = 153, then 76 and 48 escape pairs


def test_many_emoji_never_split() -> None:
    result = analyze("a" + EMOJI * 100)
    assert result.units == 201
    assert_parts_sound(result)
    assert all(not ("\ud800" <= p[-1] <= "\udfff") for p in result.parts)


def test_text_is_kept_and_result_is_frozen() -> None:
    result = analyze("hi")
    assert result.text == "hi"
    with pytest.raises(AttributeError):
        result.segments = 2  # type: ignore[misc]


def test_encoding_values() -> None:
    assert str(Encoding.GSM7) == "GSM-7"
    assert str(Encoding.UCS2) == "UCS-2"


def test_to_gsm_makes_curly_text_gsm7() -> None:
    assert analyze(CURLY).encoding is Encoding.UCS2
    fixed = to_gsm(CURLY)
    assert fixed == '"quoted" - it\'s...'
    assert analyze(fixed).encoding is Encoding.GSM7


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("it’s", "it's"),
        ("‘a’", "'a'"),
        ("“a”", '"a"'),
        ("a—b", "a-b"),
        ("a–b", "a-b"),
        ("wait…", "wait..."),
        ("10\u00a0am", "10 am"),
        ("10\u202fam", "10 am"),
        ("• one", "- one"),
        ("`x`", "'x'"),
        ("a\tb", "a b"),
    ],
)
def test_to_gsm_substitutions(raw: str, expected: str) -> None:
    assert to_gsm(raw) == expected
    assert analyze(to_gsm(raw)).encoding is Encoding.GSM7


@pytest.mark.parametrize("text", ["", "plain text", "Ça coûte 5 €", "á ç 😜", "line\nbreak"])
def test_to_gsm_leaves_other_characters_alone(text: str) -> None:
    assert to_gsm(text) == text


MIXED = st.text(
    alphabet=st.one_of(
        st.sampled_from(["a", " ", "{", "€", "é", "Ç", "\n", "á", "ç", EMOJI, "\U0001f600", "…"]),
        st.characters(exclude_categories=["Cs"]),  # lone surrogates cannot be sent at all
    ),
    max_size=500,
)


@settings(max_examples=300, deadline=None)
@given(MIXED)
def test_parts_always_rejoin_and_match_segments(text: str) -> None:
    result = analyze(text)
    assert_parts_sound(result)
    is_gsm = all(c in GSM_BASIC or c in EXTENDED for c in text)
    assert result.encoding is (Encoding.GSM7 if is_gsm else Encoding.UCS2)


@settings(max_examples=200, deadline=None)
@given(MIXED)
def test_to_gsm_only_substitutes(text: str) -> None:
    fixed = to_gsm(text)
    assert len(fixed) >= len(text)
    assert to_gsm(fixed) == fixed  # idempotent: every replacement is itself left alone


_MIXED = st.lists(
    st.sampled_from([chr(c) for c in range(128)] + list("£€é…\u2019\u00a0ç😀\u3000") + ["Hi "]),
    max_size=200,
).map("".join)


@given(_MIXED)
@settings(max_examples=2000, deadline=None)
def test_the_plain_ascii_shortcut_agrees_with_the_character_count(text: str) -> None:
    """text._analyze answers most texts (ASCII of the basic table) without a set of their
    characters; its answer is _analyze_by_chars' on any text, and to_gsm's ASCII shortcut
    swaps exactly what the table would."""
    assert sms_text._analyze(text) == sms_text._analyze_by_chars(text)
    assert to_gsm(text) == text.translate(sms_text._SMART_TABLE)


def test_the_plain_ascii_shortcut_is_taken_for_a_plain_reply() -> None:
    reply = "Hi Sam, your appointment is on Tue 5 Jan at 10:30. Reply YES to confirm." * 3
    assert sms_text._NOT_ONE_SEPTET_ASCII.search(reply) is None
    assert analyze(reply) == SmsText(reply, Encoding.GSM7, len(reply), 2)
    for odd in ("`", "\t", "^", "{", "\x00"):  # not one septet: the character count decides
        assert sms_text._NOT_ONE_SEPTET_ASCII.search(reply + odd) is not None
