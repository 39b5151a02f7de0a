"""The fake provider: smsbot's Sandbox with receipts off, plus two cheap read-outs for the bench.

    python -m bench.provider --port P [--api-key K]

    GET /bench/count               {"count": n}: messages accepted so far
    GET /bench/stats?since=i       accept times (Unix seconds) and contents from message i on

The sandbox has no webhook URL, so it posts no receipts back: the bench measures smsbot's work
on a turn, not the receipt traffic a real provider would add.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from smsbot.channels.sandbox import Sandbox, SandboxMessage


class CountingSandbox(Sandbox):
    """A Sandbox that stamps each accepted message and can call back on each one."""

    def __init__(
        self, *, api_key: str, on_message: Callable[[SandboxMessage, float], None] | None = None
    ) -> None:
        super().__init__(api_key=api_key, webhook_url=None)
        self.on_message = on_message
        self.accepted_at: list[float] = []
        self.app.router.add_get("/bench/count", self._handle_count)
        self.app.router.add_get("/bench/stats", self._handle_stats)
        self.app.router.add_get("/bench/to", self._handle_to)
        self.first_to: dict[str, float] = {}  # recipient -> when its first message came

    def _record(self, fields: dict[str, Any], *, batch_id: str | None) -> SandboxMessage:
        message = super()._record(fields, batch_id=batch_id)
        now = time.time()
        self.accepted_at.append(now)
        self.first_to.setdefault(message.recipient, now)
        if self.on_message is not None:
            self.on_message(message, now)
        return message

    async def _handle_count(self, request: web.Request) -> web.Response:
        return web.json_response({"count": len(self.messages)})

    async def _handle_to(self, request: web.Request) -> web.Response:
        """When the first message to ?phone= was accepted (wall clock), or null."""
        return web.json_response({"at": self.first_to.get(request.query.get("phone", ""))})

    async def _handle_stats(self, request: web.Request) -> web.Response:
        since = int(request.query.get("since", "0"))
        return web.json_response(
            {
                "count": len(self.messages),
                "times": self.accepted_at[since:],
                "contents": [m.content for m in self.messages[since:]],
                "calls": len(self.calls),
            }
        )


async def _serve(port: int, api_key: str) -> None:
    sandbox = CountingSandbox(api_key=api_key)
    await sandbox.start("127.0.0.1", port)
    try:
        await asyncio.Event().wait()
    finally:
        await sandbox.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--api-key", default="sandbox")
    args = parser.parse_args()
    loop = asyncio.new_event_loop()
    task = loop.create_task(_serve(args.port, args.api_key))
    import signal

    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
        loop.run_until_complete(task)
    loop.close()


if __name__ == "__main__":
    main()
