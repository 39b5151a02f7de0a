"""The flow API under its original path: smsbot.engine.flow and .conversation (import `smsbot`)."""

from smsbot.engine.conversation import Conversation
from smsbot.engine.flow import Flow, FlowError, Message, State

__all__ = ["Conversation", "Flow", "FlowError", "Message", "State"]
