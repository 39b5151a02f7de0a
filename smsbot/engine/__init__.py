"""The flow engine: decides what an event does to a conversation. No I/O happens here.

router, compliance and quiet hours choose who handles an event; runtime and step run the flow's
handler on a copy of the conversation and return a StepResult (contract.py) for the pipeline to
write. Importing this package loads neither SQLAlchemy nor aiohttp (a test enforces it).
"""
