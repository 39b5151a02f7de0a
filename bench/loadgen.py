"""The load generator, in its own process: signed inbound webhooks over N keep-alive connections.

    python -m bench.loadgen --url URL [--url URL2] --secret S --duration 20 [--connections 32]
                            [--mode intake|turns] [--phones 1000] [--provider-port P]

Every request carries a unique event id (and message id), so none is a cheap duplicate; each
body is signed as it is sent (HMAC-SHA256 of a few hundred bytes: microseconds).

intake  open loop: each connection posts the next webhook as soon as the last one is answered.
turns   closed loop: the fake provider runs in this process; each connection drives --slots
        phones and sends a phone's next message only once smsbot's reply to the previous one
        was accepted by the provider, so the backlog stays bounded and what is measured is
        whole turns: webhook → inbox → step → outbox → provider.

Prints one JSON object: counts, rates, latency percentiles (ms) and this process's CPU use.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
import uuid
from typing import Any

import aiohttp
import yarl

from smsbot.channels.divergent.signature import sign

VN = "+447700900100"
TEMPLATE = (
    '{"id":"evt_%s","timestamp":"2026-01-15T14:22:30Z","workspaceId":"ws_bench","eventType":2,'
    '"data":{"messageId":"inb_%s","inboundNumber":"' + VN + '","sender":"%s","body":"%s",'
    '"receivedAt":"2026-01-15T14:22:30Z"}}'
)

PATH = "/webhooks/divergent"
HEAD = (
    "POST " + PATH + " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    "Content-Length: %d\r\nX-Webhook-Timestamp: %s\r\nX-Webhook-Signature: %s\r\n\r\n"
)


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50/p95/p99/max of `values` (seconds) in milliseconds."""
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] * 1000

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": ordered[-1] * 1000}


class RawConnection(asyncio.Protocol):
    """A minimal HTTP/1.1 keep-alive client connection: far cheaper per request than aiohttp's
    client, so the generator is not what limits the baseline. Expects Content-Length answers."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        length = 0
        for line in bytes(self.buffer[:end]).split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(self.buffer) < end + 4 + length:
            return
        status = int(self.buffer[9:12])
        del self.buffer[: end + 4 + length]
        if not self.waiter.done():
            self.waiter.set_result(status)

    async def request(self, head: bytes, body: bytes) -> int:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(head + body)
        return await self.waiter


class Generator:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run = uuid.uuid4().hex[:8]
        self.secret = args.secret
        self.start = 0.0
        self.window_start = 0.0
        self.window_end = 0.0
        self.stop_at = 0.0
        self.latencies: list[float] = []
        self.turn_latencies: list[float] = []
        self.statuses: dict[str, int] = {}
        self.errors = 0
        self.lost_turns = 0
        self.waiting: dict[str, tuple[float, asyncio.Future[float]]] = {}
        self.completed_in_window = 0

    def body(self, worker: int, n: int, phone_index: int) -> tuple[bytes, str]:
        key = f"{self.run}_{worker}_{n}"
        text = f"t{worker}.{n}"
        phone = f"+4477009{phone_index % 100_000:05d}"
        return (TEMPLATE % (key, key, phone, text)).encode(), text

    async def connect(self, w: int) -> Any:
        """This worker's connection: an aiohttp session (one connection) or a raw one."""
        url = yarl.URL(self.args.url[w % len(self.args.url)])
        if self.args.client == "aiohttp":
            connector = aiohttp.TCPConnector(limit=1)
            timeout = aiohttp.ClientTimeout(total=30)
            return aiohttp.ClientSession(connector=connector, timeout=timeout)
        loop = asyncio.get_running_loop()
        assert url.host is not None and url.port is not None  # an http://host:port URL
        _, conn = await loop.create_connection(RawConnection, url.host, url.port)
        return conn

    async def post(self, client: Any, w: int, body: bytes) -> bool:
        url = self.args.url[w % len(self.args.url)]
        ts = str(int(time.time()))
        signature = sign(self.secret, ts, body)
        started = time.monotonic()
        try:
            if isinstance(client, aiohttp.ClientSession):
                headers = {
                    "Content-Type": "application/json",
                    "X-Webhook-Timestamp": ts,
                    "X-Webhook-Signature": signature,
                }
                async with client.post(url + PATH, data=body, headers=headers) as resp:
                    await resp.read()
                    status = resp.status
            else:
                head = HEAD % (len(body), ts, signature)
                status = await asyncio.wait_for(client.request(head.encode(), body), 30)
        except (aiohttp.ClientError, OSError, TimeoutError):
            self.errors += 1
            return False
        if self.window_start <= started < self.window_end:
            self.latencies.append(time.monotonic() - started)
            self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1
        return 200 <= status < 300

    async def intake_worker(self, w: int) -> None:
        client = await self.connect(w)
        n = 0
        try:
            while time.monotonic() < self.stop_at:
                body, _ = self.body(w, n, w + self.args.connections * n)
                await self.post(client, w, body)
                n += 1
        finally:
            await self.close(client)

    async def close(self, client: Any) -> None:
        if isinstance(client, aiohttp.ClientSession):
            await client.close()
        elif client.transport is not None:
            client.transport.close()

    async def turns_worker(self, w: int) -> None:
        client = await self.connect(w)
        slots: list[asyncio.Future[float] | None] = [None] * self.args.slots
        n = 0
        try:
            while time.monotonic() < self.stop_at:
                j = n % self.args.slots
                previous = slots[j]
                if previous is not None:
                    try:
                        await asyncio.wait_for(previous, max(0.1, self.stop_at - time.monotonic()))
                    except TimeoutError:
                        break
                phone_index = (w * self.args.slots + j) % self.args.phones
                body, token = self.body(w, n, phone_index)
                future: asyncio.Future[float] | None = asyncio.get_running_loop().create_future()
                assert future is not None
                self.waiting[token] = (time.monotonic(), future)
                if not await self.post(client, w, body):
                    self.waiting.pop(token, None)
                    future = None
                slots[j] = future
                n += 1
        finally:
            await self.close(client)

    def on_message(self, message: Any, _wall: float) -> None:
        content: str = message.content
        if not content.startswith("You said: "):
            return
        entry = self.waiting.pop(content[10:], None)
        if entry is None:
            return
        sent, future = entry
        now = time.monotonic()
        if self.window_start <= now < self.window_end:
            self.completed_in_window += 1
            self.turn_latencies.append(now - sent)
        if not future.done():
            future.set_result(now)

    async def main(self) -> dict[str, Any]:
        args = self.args
        sandbox = None
        if args.mode == "turns":
            from bench.provider import CountingSandbox

            sandbox = CountingSandbox(api_key=args.api_key, on_message=self.on_message)
            await sandbox.start("127.0.0.1", args.provider_port)
        try:
            self.start = time.monotonic()
            self.window_start = self.start + args.warmup
            self.window_end = self.window_start + args.duration
            self.stop_at = self.window_end
            cpu0 = time.process_time()
            worker = self.turns_worker if args.mode == "turns" else self.intake_worker
            await asyncio.gather(*(worker(w) for w in range(args.connections)))
            cpu = time.process_time() - cpu0
        finally:
            if sandbox is not None:
                await sandbox.stop()
        elapsed = time.monotonic() - self.start
        ok = sum(v for k, v in self.statuses.items() if k.startswith("2"))
        result: dict[str, Any] = {
            "mode": args.mode,
            "client": args.client,
            "connections": args.connections,
            "duration": args.duration,
            "requests": sum(self.statuses.values()),
            "ok": ok,
            "statuses": self.statuses,
            "errors": self.errors,
            "rps": ok / args.duration,
            "latency_ms": percentiles(self.latencies),
            "generator_cpu_share": cpu / elapsed,
        }
        if args.mode == "turns":
            result["turns"] = self.completed_in_window
            result["turns_per_s"] = self.completed_in_window / args.duration
            result["turn_latency_ms"] = percentiles(self.turn_latencies)
            result["outstanding_at_end"] = len(self.waiting)
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", action="append", required=True, help="server base URL")
    parser.add_argument("--secret", required=True)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--mode", choices=["intake", "turns"], default="intake")
    parser.add_argument("--phones", type=int, default=1000)
    parser.add_argument("--slots", type=int, default=8, help="turns: phones per connection")
    parser.add_argument("--provider-port", type=int, default=0)
    parser.add_argument("--api-key", default="sandbox")
    parser.add_argument("--client", choices=["raw", "aiohttp"], default="raw")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(Generator(args).main())))


if __name__ == "__main__":
    main()
