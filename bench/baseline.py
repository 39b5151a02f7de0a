"""The baseline: a minimal aiohttp app that verifies the same HMAC and answers 200, nothing else.

    python -m bench.baseline --port P --secret S

Same route, same signature check (smsbot.channels.divergent.signature.verify), same body
limit and no access log, like `smsbot serve`; it stores nothing and starts no background work.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from smsbot.channels.divergent.signature import SignatureError, verify

MAX_BODY = 1_048_576


def make_app(
    secret: str, store: Callable[[bytes], Awaitable[None]] | None = None
) -> web.Application:
    """The baseline's app; `store` (bench/ceiling.py) is awaited with each verified body."""
    secrets = [secret]

    async def webhook(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            verify(
                body=body,
                timestamp=request.headers.get("X-Webhook-Timestamp"),
                signature=request.headers.get("X-Webhook-Signature"),
                secrets=secrets,
                now=time.time(),
                tolerance_seconds=300,
            )
        except SignatureError as exc:
            return web.json_response({"error": exc.reason}, status=401)
        if store is not None:
            await store(body)
        return web.json_response({"status": "new"})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post("/webhooks/divergent", webhook)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    args = parser.parse_args()
    web.run_app(
        make_app(args.secret), host="127.0.0.1", port=args.port, access_log=None, print=None
    )


if __name__ == "__main__":
    main()
