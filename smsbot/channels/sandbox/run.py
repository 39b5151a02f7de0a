"""Running a sandbox on its own: what `smsbot sandbox` calls."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from smsbot.channels.sandbox.server import Sandbox
from smsbot.channels.sandbox.wire import WORKSPACE_ID

log = logging.getLogger(__name__)


async def serve_forever(
    *,
    host: str = "127.0.0.1",
    port: int = 8081,
    api_key: str = "sandbox",
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
    failing_numbers: Iterable[str] = (),
    receipt_delay: float = 0.0,
    workspace_id: str = WORKSPACE_ID,
) -> None:
    """Run a sandbox until cancelled."""
    sandbox = Sandbox(
        api_key=api_key,
        webhook_url=webhook_url,
        webhook_secret=webhook_secret,
        failing_numbers=failing_numbers,
        receipt_delay=receipt_delay,
        workspace_id=workspace_id,
    )
    url = await sandbox.start(host, port)
    try:
        log.info("sandbox listening on %s (webhooks to %s)", url, webhook_url or "nowhere")
        await asyncio.Event().wait()
    finally:
        await sandbox.stop()


def run_sandbox(
    host: str,
    port: int,
    webhook_url: str | None,
    webhook_secret: str | None,
    api_key: str = "sandbox",
    *,
    failing_numbers: Iterable[str] = (),
    receipt_delay: float = 0.0,
    workspace_id: str = WORKSPACE_ID,
) -> None:
    """Run a sandbox in the foreground until Ctrl-C: what `smsbot sandbox` calls."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            serve_forever(
                host=host,
                port=port,
                api_key=api_key,
                webhook_url=webhook_url,
                webhook_secret=webhook_secret,
                failing_numbers=failing_numbers,
                receipt_delay=receipt_delay,
                workspace_id=workspace_id,
            )
        )
