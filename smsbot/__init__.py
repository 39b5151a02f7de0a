"""smsbot: two-way SMS conversational bots on the PureSMS / Divergent Connect API.

What a flow author needs is importable from here::

    from smsbot import Conversation, Flow, Message, State
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from smsbot.clock import Clock, SystemClock, VirtualClock
    from smsbot.flow import Conversation, Flow, FlowError, Message, State
    from smsbot.status import DeliveryStatus
    from smsbot.templates import RenderedSms, TemplateError

# Loaded on first use: pytest imports the package for its plugin in every project that has
# smsbot installed, and the flow API pulls in SQLAlchemy.
_EXPORTS = {
    "Clock": "smsbot.clock",
    "SystemClock": "smsbot.clock",
    "VirtualClock": "smsbot.clock",
    "Conversation": "smsbot.flow",
    "Flow": "smsbot.flow",
    "FlowError": "smsbot.flow",
    "Message": "smsbot.flow",
    "State": "smsbot.flow",
    "DeliveryStatus": "smsbot.status",
    "RenderedSms": "smsbot.templates",
    "TemplateError": "smsbot.templates",
}

__all__ = [
    "Clock",
    "Conversation",
    "DeliveryStatus",
    "Flow",
    "FlowError",
    "Message",
    "RenderedSms",
    "State",
    "SystemClock",
    "TemplateError",
    "VirtualClock",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first access."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'smsbot' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
