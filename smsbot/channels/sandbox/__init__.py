"""A local fake of the Divergent Connect API, for development, tests and `make run`.

It answers the provider's routes by the provider's rules, records every message it accepts, and
posts signed delivery receipts and inbound SMS to the bot's webhook as the real service does:

    POST /sms/send, /sms/send/bulk   the provider's API (header X-Api-Key, JSON)
    GET  /sandbox/messages[?to=N]    what was accepted, with each message's delivery status
    POST /sandbox/inbound            {"from", "to", "text"}: text the bot from a "phone"

From the shell, `smsbot sandbox --port 8081` runs `run_sandbox`. From Python::

    async with Sandbox(webhook_url="http://127.0.0.1:8080/webhooks/divergent",
                       webhook_secret="s3cret") as sandbox:
        client = DivergentClient("sandbox", sandbox.url)

Tests can also serve `Sandbox().app` with pytest-aiohttp's `aiohttp_client`.
"""

from smsbot.channels.sandbox.run import run_sandbox, serve_forever
from smsbot.channels.sandbox.server import Sandbox
from smsbot.channels.sandbox.wire import MAX_BULK, SandboxCall, SandboxMessage

__all__ = ["MAX_BULK", "Sandbox", "SandboxCall", "SandboxMessage", "run_sandbox", "serve_forever"]
