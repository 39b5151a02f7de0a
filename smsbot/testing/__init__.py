"""The kit flow authors use to test their flows: virtual clock, fake provider, transcripts.

With smsbot installed, pytest has a `bot` fixture (smsbot.testing.plugin)::

    async def test_hours(bot):
        await bot.send("HOURS")
        bot.expect_reply(contains="Monday to Friday")

For quick branch tests without a database, `Chat(make_runtime())` runs the steps in memory
(smsbot.testing.harness). See docs/testing-flows.md. The names below load on first use, so
pytest starting the plugin does not import the whole bot.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from smsbot.testing.driver import (
        BotDriver,
        ConversationView,
        StartRefusedError,
        StepFailedError,
        driver_settings,
    )
    from smsbot.testing.harness import (
        DEFAULT_NOW,
        DEFAULT_NUMBER,
        DEFAULT_PHONE,
        Chat,
        make_runtime,
    )
    from smsbot.testing.transcript import Reply, Transcript

__all__ = [
    "DEFAULT_NOW",
    "DEFAULT_NUMBER",
    "DEFAULT_PHONE",
    "BotDriver",
    "Chat",
    "ConversationView",
    "Reply",
    "StartRefusedError",
    "StepFailedError",
    "Transcript",
    "driver_settings",
    "make_runtime",
]

_HARNESS = ("DEFAULT_NOW", "DEFAULT_NUMBER", "DEFAULT_PHONE", "Chat", "make_runtime")
_HOME = {name: "smsbot.testing.driver" for name in __all__} | {
    "Reply": "smsbot.testing.transcript",
    "Transcript": "smsbot.testing.transcript",
    **{name: "smsbot.testing.harness" for name in _HARNESS},
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME[name]), name)
