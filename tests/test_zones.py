"""One rule for a bad time zone name, wherever it comes from (flows, start data, CSV, templates)."""

from __future__ import annotations

import pytest

from smsbot.sms.zones import UnknownTimeZoneError, iana_zone

BAD = ["Mars/Olympus", "a" * 300, "Europe/" + "x" * 300, "../etc/passwd", "", 42, None]


@pytest.mark.parametrize("name", BAD, ids=repr)
def test_a_bad_name_is_one_value_error_naming_it(name: object) -> None:
    # "a" * 300 made zoneinfo raise OSError (file name too long), which no caller expected
    with pytest.raises(UnknownTimeZoneError, match="is not an IANA time zone such as"):
        iana_zone(name)


def test_a_long_name_is_shortened_in_the_message() -> None:
    with pytest.raises(UnknownTimeZoneError) as info:
        iana_zone("a" * 300)
    assert len(str(info.value)) < 120


def test_a_good_name_is_its_zone() -> None:
    assert iana_zone("Europe/London").key == "Europe/London"
    assert issubclass(UnknownTimeZoneError, ValueError)  # callers that catch ValueError still do
