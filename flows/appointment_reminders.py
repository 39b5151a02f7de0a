"""Appointment reminders as a campaign: the day before each patient's appointment, at 9:00.

Every contact in the group "patients" with an `appointment_at` date gets templates/appointment/
reminder.txt at 9:00 in their own time zone the day before; change the date and the reminder
moves, clear it or leave the group and it is cancelled (docs/campaigns.md).
"""

from __future__ import annotations

from datetime import timedelta

from smsbot import Campaign

APPOINTMENT_REMINDER = Campaign(
    name="appointment-reminder",
    group="patients",
    field="appointment_at",
    offset=timedelta(days=-1),
    at_hour=9,
    send="appointment/reminder.txt",
    # the template's names on the left, the contact's fields (or name) on the right
    data={"name": "name", "starts_at": "appointment_at", "location": "clinic"},
)
