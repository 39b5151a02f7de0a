"""smsbot: two-way SMS conversational bots on the PureSMS / Divergent Connect API.

What a flow author needs is importable from here::

    from smsbot import Conversation, Flow, Message, State
    from smsbot import Future, Length, Range    # markers for a flow's start_data fields
    from smsbot import Campaign                  # a message or flow timed by a contact's date

These come from the flow engine, which loads neither SQLAlchemy nor aiohttp.
"""

from smsbot.clock import Clock, SystemClock, VirtualClock
from smsbot.engine.campaign import Campaign
from smsbot.engine.contact import Contact, FieldTypeError
from smsbot.engine.conversation import Conversation
from smsbot.engine.flow import Flow, FlowError, Message, State
from smsbot.engine.startdata import Future, Length, Range, StartDataError
from smsbot.sms.status import DeliveryStatus
from smsbot.sms.templates import RenderedSms, TemplateError

__all__ = [
    "Campaign",
    "Clock",
    "Contact",
    "Conversation",
    "DeliveryStatus",
    "FieldTypeError",
    "Flow",
    "FlowError",
    "Future",
    "Length",
    "Message",
    "Range",
    "RenderedSms",
    "StartDataError",
    "State",
    "SystemClock",
    "TemplateError",
    "VirtualClock",
]
__version__ = "0.1.0"
