"""The flow API under its original path; it lives in smsbot.engine.flow (import from `smsbot`)."""

from smsbot.engine.flow import Conversation, Flow, FlowError, Message, State

__all__ = ["Conversation", "Flow", "FlowError", "Message", "State"]
