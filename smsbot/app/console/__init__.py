"""The web console at /console: see every conversation, text the bot, watch flows run.

Server-rendered pages (Jinja templates under templates/, a vendored htmx under static/) behind
a sign-in with the operator key:

    /console/conversations        the list, filtered and paginated; /{id}: one timeline
    /console/events               parked events, each with a Retry button
    /console/simulator            (sandbox provider) text the bot as any phone; move the clock
    /console/flows                each flow's diagram and its templates for sample data
    /console/results              a flow's results over a period, as charts and CSV
    /console/people               the contacts table and the opt-out list
    /console/health               queues, send rate, failures, parked events

docs/console.md describes it for users.
"""

from smsbot.app.console.app import create_console
from smsbot.app.console.render import MOUNT

__all__ = ["MOUNT", "create_console"]
