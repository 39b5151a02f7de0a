"""The turns ceiling: the leanest whole turn this stack allows, in one process (benchmark 2).

    python -m bench.turns_ceiling   (reads SMSBOT_PORT, SMSBOT_DATABASE_URL of a migrated SQLite
                                     file, SMSBOT_WEBHOOK_SECRET, SMSBOT_DIVERGENT_URL,
                                     SMSBOT_DIVERGENT_API_KEY, SMSBOT_DEFAULT_SENDER)

A turn is what `smsbot serve --echo` does with an inbound text, with nothing of smsbot's in the
way: the baseline's app (same route, same signature check) parses the webhook's JSON and hands
it to ONE writer thread. The writer group-commits whatever is waiting, in one transaction, with
the standard library's `sqlite3` (WAL, `synchronous=NORMAL`, checkpoints in a thread of their
own: as smsbot) into smsbot's real schema and its indexes:

- the event, stored done (a duplicate event id is answered and not stepped);
- the conversation, inserted or moved on a version;
- the inbound message and the echo reply ("You said: …"), written already in flight;
- the outcomes of the last provider call (sent, its batch id).

The webhook is answered once that commit is done. Each commit's replies go to the provider in
one bulk call (aiohttp's client, one call at a time), whose outcome the next group writes.

What smsbot does and this leaves out: number and envelope checks, a step through a flow
runtime (router, opt-outs, templates, the message's segments), separate intake and step
transactions (a crash between them loses no event in smsbot; here they are one), the dispatcher's
fair lanes, leases and retries, SQLAlchemy. A smsbot turn cannot cost less CPU than this one on
the same machine: the ratio it reaches bounds what benchmark 2 can show.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
import queue
import sqlite3
import threading
import uuid
from typing import Any

import aiohttp
from aiohttp import web

from bench import baseline
from smsbot.store.checkpoint import FALLBACK_PAGES, Checkpointer

INSERT_EVENT = (
    "INSERT INTO webhook_events (source, event_id, kind, workspace, virtual_number, phone,"
    " body_sha256, payload, state, attempts, received_at, processed_at)"
    " VALUES ('divergent', ?, 'inbound', 'default', ?, ?, ?, ?, 'done', 0, ?, ?)"
    " ON CONFLICT (source, event_id) DO NOTHING"
)
UPSERT_CONVERSATION = (
    "INSERT INTO conversations (virtual_number, phone, workspace, data, version,"
    " last_activity_at) VALUES (?, ?, 'default', '{}', 1, ?)"
    " ON CONFLICT (virtual_number, phone) DO UPDATE SET version = version + 1,"
    " last_activity_at = excluded.last_activity_at"
)
INSERT_MESSAGE = (
    "INSERT INTO messages (id, direction, workspace, virtual_number, phone, body, origin, status,"
    " provider_message_id, segments, encoding, event_id, outbox, send_after, attempts,"
    " lease_until, created_at, status_at) VALUES (?, ?, 'default', ?, ?, ?, ?, ?, ?, 1, 'GSM-7',"
    " ?, ?, ?, ?, ?, ?, ?)"
)
SENT = (
    "UPDATE messages SET outbox = 'done', status = 'sent', batch_id = ?, sent_at = ?,"
    " status_at = ?, lease_until = NULL WHERE id = ?"
)


def _ts(moment: dt.datetime) -> str:
    return moment.replace(tzinfo=None).isoformat(" ", "microseconds")


class Turns:
    """The writer thread and the sender task of one app."""

    def __init__(self, path: str, provider: str, api_key: str, sender: str) -> None:
        self.path = path
        self.url = provider.rstrip("/") + "/sms/send/bulk"
        self.headers = {"X-Api-Key": api_key, "Content-Type": "application/json"}
        self.sender = sender
        # ("turn", (event fields), future), ("sent", (batch id, message ids), None) or
        # ("stop", None, None)
        self.waiting: queue.SimpleQueue[tuple[str, Any, asyncio.Future[None] | None]] = (
            queue.SimpleQueue()
        )
        self.replies: list[tuple[str, str, str]] = []  # (message id, phone, text) to send
        self.ready = asyncio.Event()

    def write_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA wal_autocheckpoint={FALLBACK_PAGES}")
        checkpoints = Checkpointer(self.path)  # as smsbot: checkpoints in a thread of their own
        cursor = conn.cursor()
        while True:
            group = [self.waiting.get()]
            while not self.waiting.empty():
                group.append(self.waiting.get_nowait())
            if group[-1][0] == "stop":  # the app's cleanup: nothing follows it
                checkpoints.close()
                conn.close()
                return
            now = dt.datetime.now(dt.UTC)
            stamp = _ts(now)
            lease = _ts(now + dt.timedelta(seconds=30))
            conversations: list[tuple[Any, ...]] = []
            messages: list[tuple[Any, ...]] = []
            sent: list[tuple[Any, ...]] = []
            replies: list[tuple[str, str, str]] = []
            futures: list[asyncio.Future[None]] = []
            cursor.execute("BEGIN IMMEDIATE")
            for kind, item, future in group:
                if kind == "sent":
                    batch, ids = item
                    sent += [(batch, stamp, stamp, i) for i in ids]
                    continue
                assert future is not None
                futures.append(future)
                event_id, number, phone, digest, payload, received, body, message_id = item
                cursor.execute(
                    INSERT_EVENT, (event_id, number, phone, digest, payload, received, stamp)
                )
                if cursor.rowcount == 0:
                    continue  # a duplicate: answered, not stepped again
                event = cursor.lastrowid
                conversations.append((number, phone, stamp))
                reply_id = uuid.uuid4().hex
                text = "You said: " + body
                messages.append(
                    (uuid.uuid4().hex, "inbound", number, phone, body, None, None, message_id,
                     event, None, None, 0, None, received, None)
                )  # fmt: skip
                messages.append(
                    (reply_id, "outbound", number, phone, text, "flow", "queued", None, event,
                     "inflight", stamp, 1, lease, stamp, stamp)
                )  # fmt: skip
                replies.append((reply_id, phone, text))
            cursor.executemany(UPSERT_CONVERSATION, conversations)
            cursor.executemany(INSERT_MESSAGE, messages)
            cursor.executemany(SENT, sent)
            cursor.execute("COMMIT")
            checkpoints.wake()
            loop.call_soon_threadsafe(self._committed, futures, replies)

    def _committed(
        self, futures: list[asyncio.Future[None]], replies: list[tuple[str, str, str]]
    ) -> None:
        for future in futures:
            if not future.done():
                future.set_result(None)
        if replies:
            self.replies += replies
            self.ready.set()

    async def send_loop(self) -> None:
        async with aiohttp.ClientSession(headers=self.headers) as session:
            while True:
                await self.ready.wait()
                self.ready.clear()
                batch, self.replies = self.replies, []
                body = {
                    "messages": [
                        {"sender": self.sender, "recipient": phone, "content": text,
                         "clientReference": message_id}
                        for message_id, phone, text in batch
                    ]
                }  # fmt: skip
                async with session.post(self.url, data=json.dumps(body)) as response:
                    answer = await response.json()
                ids = [message_id for message_id, _, _ in batch]
                self.waiting.put(("sent", (answer.get("batchId"), ids), None))

    async def store(self, raw: bytes) -> None:
        """The baseline's `store`: hand the webhook to the writer, answer after its commit."""
        event = json.loads(raw)
        data = event["data"]
        fields = (
            event["id"],
            data["inboundNumber"],
            data["sender"],
            hashlib.sha256(raw).hexdigest(),
            json.dumps({"body": data["body"], "message_id": data["messageId"]}),
            _ts(dt.datetime.fromisoformat(data["receivedAt"])),
            data["body"],
            data["messageId"],
        )
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.put(("turn", fields, future))
        await future


def make_app(secret: str, turns: Turns) -> web.Application:
    """The baseline's app, a turn per webhook."""
    tasks: list[asyncio.Task[None]] = []

    threads: list[threading.Thread] = []

    async def start(app: web.Application) -> None:
        loop = asyncio.get_running_loop()
        threads.append(threading.Thread(target=turns.write_loop, args=(loop,), daemon=True))
        threads[0].start()
        tasks.append(asyncio.create_task(turns.send_loop()))

    async def stop(app: web.Application) -> None:
        for task in tasks:
            task.cancel()
        turns.waiting.put(("stop", None, None))
        await asyncio.to_thread(threads[0].join)

    app = baseline.make_app(secret, turns.store)
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return app


def main() -> None:
    env = os.environ
    turns = Turns(
        env["SMSBOT_DATABASE_URL"].split(":///", 1)[1],
        env["SMSBOT_DIVERGENT_URL"],
        env["SMSBOT_DIVERGENT_API_KEY"],
        env["SMSBOT_DEFAULT_SENDER"],
    )
    app = make_app(env["SMSBOT_WEBHOOK_SECRET"], turns)
    web.run_app(app, host="127.0.0.1", port=int(env["SMSBOT_PORT"]), access_log=None, print=None)


if __name__ == "__main__":
    main()
