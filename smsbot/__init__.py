"""smsbot: two-way SMS conversational bots on the PureSMS / Divergent Connect API."""

from smsbot.clock import Clock, SystemClock, VirtualClock
from smsbot.status import DeliveryStatus

__all__ = ["Clock", "DeliveryStatus", "SystemClock", "VirtualClock"]
__version__ = "0.1.0"
