"""E.164 normalisation, sender IDs, regions and time zones."""

from __future__ import annotations

import random
import subprocess
import sys

import phonenumbers
import pytest

from smsbot.sms import phone
from smsbot.sms.phone import (
    PhoneNumberError,
    country_zones,
    normalize,
    normalize_sender,
    region_of,
    time_zones_of,
)

DRAMA = "+447700900123"  # Ofcom drama range: possible, deliberately not valid


@pytest.mark.parametrize(
    "raw",
    [
        "447700900123",
        "07700 900123",
        "07700900123",
        "+44 (0)7700 900123",
        "00447700900123",
        "0044 7700 900123",
        "+447700900123",
        "+44 7700 900123",
        "+44-7700-900-123",
        "  +447700900123\n",
        "07700\u00a0900\t123",
    ],
)
def test_uk_forms_all_normalise_to_e164(raw: str) -> None:
    assert normalize(raw) == DRAMA


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("447700900123", "US", DRAMA),  # no plus: not possible as a US number, so international
        ("00447700900123", "US", DRAMA),  # 00 works even where the region's prefix is 011
        ("011447700900123", "US", DRAMA),
        ("+44 (0)7700 900123", "US", DRAMA),
        ("(202) 555-0123", "US", "+12025550123"),
        ("202.555.0123", "US", "+12025550123"),
        ("12025550123", "GB", "+12025550123"),
        ("+1 202 555 0123", "GB", "+12025550123"),
        ("020 7946 0000", "GB", "+442079460000"),
        ("0491 570 156", "AU", "+61491570156"),
        ("07700 900123", "gb", DRAMA),  # region codes are case-insensitive
    ],
)
def test_regions_and_international_forms(raw: str, region: str, expected: str) -> None:
    assert normalize(raw, region) == expected


@pytest.mark.parametrize("n", ["000", "123", "999"])
def test_every_drama_number_is_accepted(n: str) -> None:
    assert normalize(f"07700 900{n}") == f"+447700900{n}"


def test_national_reading_wins_over_missing_plus() -> None:
    # 10 digits read as a GB national number without its 0 (7700 900123), not as +77 ...
    assert normalize("7700900123") == DRAMA


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "abc",
        "+44abc",
        "0800 FLOWERS",  # vanity letters
        "+44 7700 900123 ext 5",  # extensions cannot receive texts
        "+447700900123x5",
        "123",
        "0",
        "+1",
        "60777",  # local-only / short code: no E.164 form
        "+4477009001234567",  # too long
        "++447700900123",
        "+44+7700900123",
        "+0123456789",  # no country code 0
        "+999 1234 5678",  # unassigned country code
        "1" * 33,
        "+" + "4" * 40,
        "07700 900123; DROP TABLE",
        "😜",
    ],
)
def test_garbage_is_refused(raw: str) -> None:
    with pytest.raises(PhoneNumberError, match="international form like \\+447700900123"):
        normalize(raw)


def test_error_names_the_input_and_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"^'abc' is not a phone number") as info:
        normalize("abc")
    assert isinstance(info.value, PhoneNumberError)


def test_error_message_stays_short_for_huge_input() -> None:
    with pytest.raises(PhoneNumberError) as info:
        normalize("9" * 10_000)
    assert len(str(info.value)) < 200


def test_non_string_is_refused() -> None:
    with pytest.raises(PhoneNumberError, match="expected a string"):
        normalize(447700900123)  # type: ignore[arg-type]


@pytest.mark.parametrize("region", ["XX", "", "UK", "GBR", "001"])
def test_unknown_region_is_refused(region: str) -> None:
    with pytest.raises(PhoneNumberError, match="not a region code"):
        normalize("07700 900123", region)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ACME", "ACME"),
        ("My Shop", "My Shop"),
        ("  Acme Ltd ", "Acme Ltd"),
        ("Shop24", "Shop24"),
        ("A", "A"),
        ("ElevenChars", "ElevenChars"),
        ("1a", "1a"),
        ("+447700900123", DRAMA),
        ("447700900123", DRAMA),
        ("07700 900123", DRAMA),
    ],
)
def test_sender_is_id_or_number(raw: str, expected: str) -> None:
    assert normalize_sender(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "TwelveChars1",  # 12 characters
        "Acme-Ltd",  # hyphen is outside [A-Za-z0-9 ]
        "Café",  # non-ASCII letter
        "12345",  # all digits, so it must be a number, and is not one
        "$$$",
    ],
)
def test_bad_sender_explains_the_rule(raw: str) -> None:
    with pytest.raises(PhoneNumberError, match="1-11 letters, digits and spaces"):
        normalize_sender(raw)


def test_sender_region_is_checked() -> None:
    with pytest.raises(PhoneNumberError, match="not a region code"):
        normalize_sender("ACME", "XX")


@pytest.mark.parametrize(
    ("e164", "region"),
    [
        ("+442079460000", "GB"),
        (DRAMA, "GB"),  # not valid, so falls back to +44's main region
        ("+12025550123", "US"),
        ("+61491570156", "AU"),
        ("+80012345678", None),  # international freephone: no region
    ],
)
def test_region_of(e164: str, region: str | None) -> None:
    assert region_of(e164) == region


@pytest.mark.parametrize("e164", ["+442079460000", DRAMA, "+447400123456"])
def test_uk_time_zones_include_london(e164: str) -> None:
    zones = time_zones_of(e164)
    assert "Europe/London" in zones
    assert "Etc/Unknown" not in zones


def test_country_zones_most_listed_first() -> None:
    assert country_zones("+447700900123")[0] == "Europe/London"
    assert set(country_zones("+447700900123")) == {
        "Europe/London", "Europe/Guernsey", "Europe/Isle_of_Man", "Europe/Jersey"
    }  # fmt: skip
    assert country_zones("+33612345678") == ("Europe/Paris",)
    assert len(country_zones("+12025550123")) > 10  # +1 spans a continent
    assert country_zones("+80012345678") == ()


def test_time_zones() -> None:
    assert time_zones_of("+12025550123") == ["America/New_York"]
    assert time_zones_of("+80012345678") == []


@pytest.mark.parametrize("bad", ["447700900123", "07700 900123", "+44 7700 900123", "abc", ""])
def test_lookups_want_e164(bad: str) -> None:
    with pytest.raises(PhoneNumberError, match="normalize"):
        region_of(bad)
    with pytest.raises(PhoneNumberError, match="normalize"):
        time_zones_of(bad)


def e164_samples() -> list[str]:
    """Numbers in E.164 form for every country code phonenumbers knows: every length, every
    first digit after the country code (national prefixes such as 44's 0 and 180020, 1's 1 and
    7's 8 included), the rest random but fixed (seeded)."""
    rng = random.Random(13)
    samples = []
    for code in sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE):
        cc = str(code)
        for length in range(1, 16 - len(cc)):
            for head in ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "180020", "06"):
                rest = (head + "".join(rng.choice("0123456789") for _ in range(15)))[:length]
                samples.append(f"+{cc}{rest}")
    return samples


def test_numbers_in_e164_form_are_read_as_phonenumbers_reads_them() -> None:
    """phone._possible_e164 answers numbers already in E.164 form without phonenumbers.parse;
    its answer is the whole parse's on every sample (and it does answer most of them)."""
    samples = e164_samples()
    possible = answered = 0
    for text in samples:
        for region in ("GB", "US"):
            expected = phone._parse_possible_by_phonenumbers(text, region)
            assert phone._parse_possible(text, region) == expected, (text, region)
        possible += expected[0] is not None
        answered += phone._possible_e164(text) is not None
    # of 31,536 samples 6,954 are possible numbers, 4,940 of them answered without the parse
    assert len(samples) > 30_000 and possible > 5_000 and answered > possible // 2
    assert phone._possible_e164(DRAMA) == DRAMA
    assert phone._possible_e164("+4407700900123") is None  # 44 strips a 0: parse decides
    assert normalize("+4407700900123") == DRAMA
    assert phone._possible_e164("+5491123456789") is None  # 54 rewrites its mobiles: parse


def test_checking_a_number_loads_only_its_own_countrys_metadata() -> None:
    """phonenumbers loads a region's metadata when it is first needed; the E.164 shortcut must
    not load every country's at import (about 1.5 MB of idle `serve`, over its 80 MB goal)."""
    script = (
        "from phonenumbers.phonemetadata import PhoneMetadata as M\n"
        "from smsbot.sms.phone import normalize\n"
        "assert normalize('+447700900123') == '+447700900123'\n"
        "print(sorted(M._region_metadata), sorted(M._country_code_metadata))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "['GB'] []"
