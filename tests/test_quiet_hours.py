"""Quiet hours in the recipient's local time, across midnight and daylight-saving changes."""

from __future__ import annotations

import datetime as dt
import logging
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smsbot.engine.quiet_hours import defer_until, parse_window, recipient_zone

UTC = dt.UTC
LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")
NIGHT = (dt.time(21, 0), dt.time(8, 0))
LUNCH = (dt.time(13, 0), dt.time(14, 0))


def local(
    tz: ZoneInfo, year: int, month: int, day: int, hour: int = 0, minute: int = 0, *, fold: int = 0
) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=tz, fold=fold)


# --- parse_window -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("21:00-08:00", NIGHT),
        ("13:00-14:00", LUNCH),
        ("9:30-17:05", (dt.time(9, 30), dt.time(17, 5))),
        ("  23:59-00:00 ", (dt.time(23, 59), dt.time(0, 0))),
    ],
)
def test_parse_window(text: str, expected: tuple[dt.time, dt.time]) -> None:
    assert parse_window(text) == expected


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_window_means_none(text: str) -> None:
    assert parse_window(text) is None


@pytest.mark.parametrize(
    "text", ["21:00", "21-08", "24:00-08:00", "21:60-08:00", "21:00 - 08:00", "9pm-8am", "x"]
)
def test_bad_window_names_the_form(text: str) -> None:
    with pytest.raises(ValueError, match='"HH:MM-HH:MM" such as 21:00-08:00'):
        parse_window(text)


def test_window_that_starts_where_it_ends_is_refused() -> None:
    with pytest.raises(ValueError, match="same time"):
        parse_window("08:00-08:00")


# --- recipient_zone ---------------------------------------------------------------------------


def test_contact_zone_wins() -> None:
    assert recipient_zone("+447700900123", "America/Chicago", "UTC") == ZoneInfo("America/Chicago")


def test_number_with_one_zone() -> None:
    assert recipient_zone("+12025550123", None, "UTC") == NEW_YORK


@pytest.mark.parametrize("phone", ["+447700900123", "+442079460000", "+447400123456"])
def test_aliases_of_one_clock_count_as_one_zone(phone: str) -> None:
    # +44 numbers map to Europe/Guernsey, Europe/Isle_of_Man, Europe/Jersey and Europe/London:
    # one clock for the whole country code, named by its most-listed zone.
    zone = recipient_zone(phone, None, "UTC")
    assert zone.key == "Europe/London"
    winter, summer = dt.datetime(2026, 1, 15, tzinfo=UTC), dt.datetime(2026, 7, 15, tzinfo=UTC)
    assert winter.astimezone(zone).utcoffset() == dt.timedelta(0)
    assert summer.astimezone(zone).utcoffset() == dt.timedelta(hours=1)


@pytest.mark.parametrize("phone", ["+18005550123", "+61491570156"])
def test_number_spanning_several_clocks_uses_default(phone: str) -> None:
    assert recipient_zone(phone, None, "Europe/Paris") == ZoneInfo("Europe/Paris")


def test_bad_contact_zone_falls_back_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert recipient_zone("+12025550123", "Mars/Olympus", "UTC") == NEW_YORK
    assert "Mars/Olympus" in caplog.text
    assert "2025550123" not in caplog.text  # the phone number is personal data


# --- defer_until: the basics ------------------------------------------------------------------


def test_no_window_never_defers() -> None:
    assert defer_until(local(LONDON, 2026, 1, 15, 23, 0), None, LONDON) is None


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        defer_until(dt.datetime(2026, 1, 15, 23, 0), NIGHT, LONDON)


@pytest.mark.parametrize(
    ("wall", "deferred_to"),
    [
        (dt.time(20, 59, 59), None),
        (dt.time(21, 0), (16, 8, 0)),  # start is inside
        (dt.time(23, 59, 59, 999999), (16, 8, 0)),
        (dt.time(0, 0), (15, 8, 0)),  # after midnight: ends the same morning
        (dt.time(7, 59, 59), (15, 8, 0)),
        (dt.time(8, 0), None),  # end is outside
        (dt.time(12, 0), None),
    ],
)
def test_window_past_midnight(wall: dt.time, deferred_to: tuple[int, int, int] | None) -> None:
    now = dt.datetime.combine(dt.date(2026, 1, 15), wall, tzinfo=LONDON)
    result = defer_until(now, NIGHT, LONDON)
    if deferred_to is None:
        assert result is None
    else:
        day, hour, minute = deferred_to
        assert result == local(LONDON, 2026, 1, day, hour, minute)
        assert result is not None and result.tzinfo is UTC


@pytest.mark.parametrize(
    ("wall", "deferred"),
    [
        (dt.time(12, 59), False),
        (dt.time(13, 0), True),
        (dt.time(13, 59), True),
        (dt.time(14), False),
    ],
)
def test_window_within_a_day(wall: dt.time, deferred: bool) -> None:
    now = dt.datetime.combine(dt.date(2026, 6, 1), wall, tzinfo=LONDON)
    result = defer_until(now, LUNCH, LONDON)
    assert result == (local(LONDON, 2026, 6, 1, 14, 0) if deferred else None)


def test_now_in_another_zone_is_judged_in_the_recipients() -> None:
    # 02:00 in London is 21:00 in New York: quiet there, not yet for a Londoner's window
    now = dt.datetime(2026, 1, 15, 2, 0, tzinfo=UTC)
    assert defer_until(now, NIGHT, NEW_YORK) == local(NEW_YORK, 2026, 1, 15, 8, 0)
    assert defer_until(now, NIGHT, ZoneInfo("Asia/Tokyo")) is None  # 11:00 in Tokyo


# --- defer_until: daylight saving -------------------------------------------------------------


@pytest.mark.parametrize(
    ("tz", "evening", "utc_end"),
    [
        # spring forward: 08:00 on the morning after is already summer time
        (LONDON, dt.date(2026, 3, 28), dt.datetime(2026, 3, 29, 7, 0, tzinfo=UTC)),
        (NEW_YORK, dt.date(2026, 3, 7), dt.datetime(2026, 3, 8, 12, 0, tzinfo=UTC)),
        # fall back: the night is an hour longer, 08:00 is winter time
        (LONDON, dt.date(2026, 10, 24), dt.datetime(2026, 10, 25, 8, 0, tzinfo=UTC)),
        (NEW_YORK, dt.date(2026, 10, 31), dt.datetime(2026, 11, 1, 13, 0, tzinfo=UTC)),
        # ordinary nights either side, for contrast
        (LONDON, dt.date(2026, 3, 27), dt.datetime(2026, 3, 28, 8, 0, tzinfo=UTC)),
        (NEW_YORK, dt.date(2026, 11, 1), dt.datetime(2026, 11, 2, 13, 0, tzinfo=UTC)),
    ],
)
def test_reminder_at_2230_waits_for_0800_across_clock_changes(
    tz: ZoneInfo, evening: dt.date, utc_end: dt.datetime
) -> None:
    due = dt.datetime.combine(evening, dt.time(22, 30), tzinfo=tz)
    result = defer_until(due, NIGHT, tz)
    assert result == utc_end
    assert result is not None
    wall = result.astimezone(tz)
    assert (wall.date(), wall.time()) == (evening + dt.timedelta(days=1), dt.time(8, 0))


def test_end_in_spring_gap_moves_to_first_instant_after_it() -> None:
    # 01:30 does not exist in London on 2026-03-29: clocks go 00:59:59 GMT -> 02:00 BST
    window = (dt.time(21, 0), dt.time(1, 30))
    result = defer_until(local(LONDON, 2026, 3, 28, 23, 0), window, LONDON)
    assert result == dt.datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    assert result.astimezone(LONDON).time() == dt.time(2, 0)
    # and just before the jump it is still quiet
    assert defer_until(result - dt.timedelta(seconds=1), window, LONDON) == result


def test_end_in_new_york_spring_gap() -> None:
    # 02:15 does not exist in New York on 2026-03-08: 01:59:59 EST -> 03:00 EDT
    window = (dt.time(22, 0), dt.time(2, 15))
    result = defer_until(local(NEW_YORK, 2026, 3, 7, 23, 0), window, NEW_YORK)
    assert result == dt.datetime(2026, 3, 8, 7, 0, tzinfo=UTC)
    assert result.astimezone(NEW_YORK).time() == dt.time(3, 0)


def test_nearly_all_day_window_whose_gap_is_skipped_waits_a_day() -> None:
    # 01:40-01:20 leaves only 01:20-01:40 outside, and on 2026-03-29 London skips it entirely
    window = (dt.time(1, 40), dt.time(1, 20))
    result = defer_until(local(LONDON, 2026, 3, 28, 23, 0), window, LONDON)
    assert result is not None
    assert result.astimezone(LONDON) == local(LONDON, 2026, 3, 30, 1, 20)


def test_end_in_autumn_fold_takes_first_occurrence() -> None:
    # 01:30 happens twice in London on 2026-10-25: 00:30 UTC (BST) and 01:30 UTC (GMT)
    window = (dt.time(21, 0), dt.time(1, 30))
    result = defer_until(local(LONDON, 2026, 10, 24, 23, 0), window, LONDON)
    assert result == dt.datetime(2026, 10, 25, 0, 30, tzinfo=UTC)


def test_inside_again_during_the_repeated_hour_ends_at_the_second_occurrence() -> None:
    window = (dt.time(1, 0), dt.time(1, 30))
    first_pass = local(LONDON, 2026, 10, 25, 1, 10)  # 00:10 UTC, BST
    second_pass = local(LONDON, 2026, 10, 25, 1, 10, fold=1)  # 01:10 UTC, GMT
    assert defer_until(first_pass, window, LONDON) == dt.datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    assert defer_until(second_pass, window, LONDON) == dt.datetime(2026, 10, 25, 1, 30, tzinfo=UTC)


# --- defer_until: properties ------------------------------------------------------------------

ZONES = [
    "UTC",
    "Europe/London",
    "America/New_York",
    "Australia/Sydney",  # southern hemisphere: clocks change the other way round
    "Australia/Lord_Howe",  # 30-minute DST
    "Asia/Kathmandu",  # +05:45
    "America/Santiago",  # DST changes at midnight: gaps and folds at 00:00
    "Pacific/Apia",  # skipped 2011-12-30 entirely
]
times = st.builds(dt.time, st.integers(0, 23), st.sampled_from([0, 1, 15, 29, 30, 45, 59]))
windows = st.tuples(times, times).filter(lambda w: w[0] != w[1])
instants = st.datetimes(
    min_value=dt.datetime(2010, 1, 1), max_value=dt.datetime(2035, 12, 31), timezones=st.just(UTC)
)


def _inside(moment: dt.datetime, window: tuple[dt.time, dt.time], tz: ZoneInfo) -> bool:
    wall = moment.astimezone(tz).time()
    start, end = window
    return start <= wall < end if start < end else (wall >= start or wall < end)


@settings(max_examples=500, deadline=None)
@given(now=instants, window=windows, zone=st.sampled_from(ZONES))
def test_result_is_the_first_instant_outside_the_window(
    now: dt.datetime, window: tuple[dt.time, dt.time], zone: str
) -> None:
    tz = ZoneInfo(zone)
    result = defer_until(now, window, tz)
    if result is None:
        assert not _inside(now, window, tz)
        return
    assert _inside(now, window, tz)
    assert result > now
    assert result.tzinfo is UTC
    assert not _inside(result, window, tz)
    # nothing between now and the result is outside the window: sample evenly and just before
    span = result - now
    samples = [now + span * i / 16 for i in range(1, 16)]
    samples.append(result - dt.timedelta(microseconds=1))
    # (timedelta rounds to whole microseconds, so a sample of a tiny span can land on `result`)
    assert all(_inside(moment, window, tz) for moment in samples if now < moment < result)
    # a window and its DST shifts never keep a message back for more than about two days
    assert span <= dt.timedelta(days=2, hours=1)
