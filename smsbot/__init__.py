"""smsbot: two-way SMS conversational bots on the PureSMS / Divergent Connect API.

What a flow author needs is importable from here::

    from smsbot import Conversation, Flow, Message, State
"""

from smsbot.clock import Clock, SystemClock, VirtualClock
from smsbot.flow import Conversation, Flow, FlowError, Message, State
from smsbot.status import DeliveryStatus
from smsbot.templates import RenderedSms, TemplateError

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
