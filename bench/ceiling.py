"""The ceiling: the leanest durable intake this stack allows, to put the intake goal in context.

    python -m bench.ceiling        (reads SMSBOT_PORT, SMSBOT_DATABASE_URL, SMSBOT_WEBHOOK_SECRET)

The baseline's app plus only what durability needs: parse the JSON, hand the row to ONE thread
that group-commits with the standard library's sqlite3 (WAL, synchronous=NORMAL, executemany,
deduplicated by event id) and answer once the commit is done. No validation, no phone
numbers, no SQLAlchemy, no dispatcher. smsbot cannot be faster than this on the same machine
with aiohttp and SQLite, so its ratio is the upper bound of what any smsbot intake can reach.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import queue
import sqlite3
import threading

from aiohttp import web

from bench import baseline

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, source TEXT, event_id TEXT,"
    " virtual_number TEXT, phone TEXT, body_sha256 TEXT, payload TEXT, received_at TEXT,"
    " UNIQUE (source, event_id))"
)
INSERT = (
    "INSERT INTO events (source, event_id, virtual_number, phone, body_sha256, payload,"
    " received_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (source, event_id) DO NOTHING"
)


def make_app(secret: str, path: str) -> web.Application:
    """The baseline's app, answering only once the webhook is committed."""
    waiting: queue.SimpleQueue[tuple[tuple[str, ...], asyncio.Future[None]]] = queue.SimpleQueue()

    def writer(loop: asyncio.AbstractEventLoop) -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(SCHEMA)
        while True:
            group = [waiting.get()]
            while not waiting.empty():
                group.append(waiting.get_nowait())
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(INSERT, [row for row, _ in group])
            conn.execute("COMMIT")
            loop.call_soon_threadsafe(_resolve, [future for _, future in group])

    def _resolve(futures: list[asyncio.Future[None]]) -> None:
        for future in futures:
            if not future.done():
                future.set_result(None)

    async def store(body: bytes) -> None:
        event = json.loads(body)
        data = event["data"]
        row = (
            "divergent",
            event["id"],
            data["inboundNumber"],
            data["sender"],
            hashlib.sha256(body).hexdigest(),
            json.dumps({"body": data["body"], "message_id": data["messageId"]}),
            data["receivedAt"],
        )
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiting.put((row, future))
        await future

    async def start(app: web.Application) -> None:
        loop = asyncio.get_running_loop()
        threading.Thread(target=writer, args=(loop,), daemon=True).start()

    app = baseline.make_app(secret, store)
    app.on_startup.append(start)
    return app


def main() -> None:
    path = os.environ["SMSBOT_DATABASE_URL"].split(":///", 1)[1]
    app = make_app(os.environ["SMSBOT_WEBHOOK_SECRET"], path)
    port = int(os.environ["SMSBOT_PORT"])
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
