"""A reminder that falls in quiet hours goes out when they end, in local time, across DST."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from smsbot.testing import BotDriver

QUIET = {"SMSBOT_QUIET_HOURS": "21:00-08:00"}
UTC = dt.UTC


def _case(starts_at: str, due: dt.datetime, sent: dt.datetime, name: str) -> object:
    # the clock starts three days before the reminder is due
    return pytest.param(QUIET, due - dt.timedelta(days=3), starts_at, due, sent, id=name)


CASES = [
    # London, spring forward (Sun 29 Mar 2026, 01:00 UTC): 22:30 GMT the night before is
    # 22:30 UTC; the window ends at 08:00 BST, which is 07:00 UTC.
    _case(
        "2026-03-29T23:30:00+01:00",
        dt.datetime(2026, 3, 28, 22, 30, tzinfo=UTC),
        dt.datetime(2026, 3, 29, 7, 0, tzinfo=UTC),
        "spring-forward",
    ),
    # London, fall back (Sun 25 Oct 2026, 01:00 UTC): 22:30 BST is 21:30 UTC; the window ends
    # at 08:00 GMT, which is 08:00 UTC.
    _case(
        "2026-10-25T21:30:00+00:00",
        dt.datetime(2026, 10, 24, 21, 30, tzinfo=UTC),
        dt.datetime(2026, 10, 25, 8, 0, tzinfo=UTC),
        "fall-back",
    ),
    # An ordinary winter night for comparison: 22:30 GMT → 08:00 GMT.
    _case(
        "2026-01-20T22:30:00+00:00",
        dt.datetime(2026, 1, 19, 22, 30, tzinfo=UTC),
        dt.datetime(2026, 1, 20, 8, 0, tzinfo=UTC),
        "winter",
    ),
]


@pytest.mark.parametrize(("smsbot_settings", "smsbot_now", "starts_at", "due", "sent"), CASES)
async def test_a_2230_reminder_is_sent_at_0800_local(
    bot: BotDriver, starts_at: str, due: dt.datetime, sent: dt.datetime
) -> None:
    data = {"name": "Sam", "starts_at": starts_at, "location": "Riverside Clinic"}
    await bot.start("appointment", data=data)  # 3 days ahead, at 22:30: held until 08:00
    await bot.advance(hours=12)  # the question went out at 08:00; it is 10:30 now
    bot.expect_reply(contains="Reply YES")
    await bot.send("YES")
    bot.expect_reply(contains="booked")
    await bot.advance(until=due)  # the reminder falls due at 22:30 local: quiet hours
    bot.expect_no_reply()
    await bot.advance(until=sent - dt.timedelta(minutes=1))
    bot.expect_no_reply()
    await bot.advance(minutes=1)
    reminder = bot.expect_reply(contains="Sam")
    assert reminder.at == sent
    local = reminder.at.astimezone(ZoneInfo("Europe/London"))
    assert (local.hour, local.minute) == (8, 0)
