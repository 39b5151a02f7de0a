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

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hmac
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from smsbot.clock import Clock, SystemClock
from smsbot.providers.base import describe
from smsbot.providers.divergent import utc_iso
from smsbot.webhooks.signature import sign

log = logging.getLogger(__name__)

MAX_BULK = 15_000  # the provider's limit for one bulk call
WORKSPACE_ID = "ws_sandbox"
FAILED_ERROR_CODE = "sandbox-failing-number"
WEBHOOK_TIMEOUT = 45.0  # the provider gives a webhook this long to answer
RECEIPT_WORKERS = 4
# 15,000 messages of JSON are well over aiohttp's default 1 MiB request limit.
MAX_REQUEST_BYTES = 64 * 1024 * 1024
# Loose on purpose: digits with an optional "+" (E.164, or the digits-only form in the reference).
_PHONE = re.compile(r"\+?[0-9]{7,15}")


@dataclass
class SandboxMessage:
    """One message the sandbox accepted, and where its (simulated) delivery has got to."""

    message_id: str
    sender: str
    recipient: str
    content: str
    client_reference: str | None
    send_at: dt.datetime | None
    unicode_mode: str | None
    batch_id: str | None
    index: int  # 0 for the first message accepted, then 1, 2, …
    received_at: dt.datetime
    status: str = "Queued"  # the provider's status names: Queued, Dispatched, Delivered, Failed

    def to_json(self) -> dict[str, Any]:
        """Return the message as GET /sandbox/messages shows it."""
        return {
            "messageId": self.message_id,
            "sender": self.sender,
            "recipient": self.recipient,
            "content": self.content,
            "clientReference": self.client_reference,
            "dateSendAtUtc": utc_iso(self.send_at) if self.send_at else None,
            "unicodeMode": self.unicode_mode,
            "batchId": self.batch_id,
            "index": self.index,
            "receivedAt": utc_iso(self.received_at),
            "status": self.status,
        }


@dataclass(frozen=True)
class SandboxCall:
    """One request to a send route and the status the sandbox answered."""

    path: str
    status: int


@dataclass
class _Failure:
    status: int
    remaining: int | None  # None: every call until reset
    retry_after: float | None
    skip: int


class _RefusedError(Exception):
    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}


class Sandbox:
    """A fake Divergent Connect: records messages, sends receipts, lets a developer text the bot."""

    def __init__(
        self,
        *,
        api_key: str = "sandbox",
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        failing_numbers: Iterable[str] = (),
        receipt_delay: float = 0.0,
        clock: Clock | None = None,
    ) -> None:
        self.api_key = api_key
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self.failing_numbers = {_number_key(n) for n in failing_numbers}
        self.receipt_delay = receipt_delay
        self.clock = clock or SystemClock()
        self.messages: list[SandboxMessage] = []
        self.calls: list[SandboxCall] = []
        self.hang = False  # True: send calls wait until reset() or stop(), to test timeouts
        self.receipt_retry_delays: tuple[float, ...] = (0.5, 2.0, 5.0)
        self.url: str | None = None  # set by start()
        self._failure: _Failure | None = None
        self._release = asyncio.Event()
        self._receipts: asyncio.Queue[SandboxMessage] = asyncio.Queue()
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None

        self.app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        self.app.add_routes(
            [
                web.post("/sms/send", self._handle_send),
                web.post("/sms/send/bulk", self._handle_bulk),
                web.get("/sandbox/messages", self._handle_list),
                web.post("/sandbox/inbound", self._handle_inbound),
            ]
        )
        self.app.cleanup_ctx.append(self._background)
        # Shutdown waits for open requests, so free any hung ones first.
        self.app.on_shutdown.append(self._release_hung)

    # -- controls for tests -------------------------------------------------------------------

    def set_failure(
        self,
        status: int | None,
        *,
        count: int | None = None,
        retry_after: float | None = None,
        after: int = 0,
    ) -> None:
        """Answer the next `count` send calls (all if None) with `status`; None clears it.

        `after` lets that many calls through first; `retry_after` adds a Retry-After header.
        """
        if status is None:
            self._failure = None
        else:
            self._failure = _Failure(status, count, retry_after, after)

    def reset(self) -> None:
        """Forget messages and calls, clear failures, and release hung requests."""
        self.messages.clear()
        self.calls.clear()
        self._failure = None
        self.hang = False
        self._release.set()
        self._release = asyncio.Event()

    async def wait_for_receipts(self) -> None:
        """Wait until every accepted message's receipts have been posted (or dropped)."""
        await self._receipts.join()

    # -- running ------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on host:port (0: a free port) and return the base URL, also kept in `url`."""
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        bound_host = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.url = f"http://{bound_host}:{bound_port}"
        return self.url

    async def stop(self) -> None:
        """Stop serving; receipts still queued are dropped."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Sandbox:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def text_bot(self, sender: str, to: str, body: str) -> int:
        """Post an inbound SMS (eventType 2) to the bot's webhook; return the bot's HTTP status.

        Raises aiohttp.ClientError or TimeoutError when the bot cannot be reached.
        """
        _event_id, status = await self._post_inbound(sender, to, body)
        return status

    # -- the provider's API -------------------------------------------------------------------

    async def _handle_send(self, request: web.Request) -> web.Response:
        return await self._answer(request, self._accept_single)

    async def _handle_bulk(self, request: web.Request) -> web.Response:
        return await self._answer(request, self._accept_bulk)

    async def _answer(
        self, request: web.Request, accept: Callable[[object], dict[str, Any]]
    ) -> web.Response:
        try:
            await self._gate(request)
            # The reference's cURL example sends --json; any content type that parses is fine.
            payload = _parse_json(await request.read())
            response = web.json_response(accept(payload))
        except _RefusedError as refused:
            response = web.json_response(
                {"error": refused.reason}, status=refused.status, headers=refused.headers
            )
        self.calls.append(SandboxCall(request.path, response.status))
        return response

    async def _gate(self, request: web.Request) -> None:
        """Apply the test controls (hang, injected failure), then check the API key."""
        if self.hang:
            await self._release.wait()
            raise _RefusedError(503, "sandbox: this request was held by `hang` and then released")
        failure = self._take_failure()
        if failure is not None:
            headers = {}
            if failure.retry_after is not None:
                headers["Retry-After"] = f"{failure.retry_after:g}"
            raise _RefusedError(failure.status, "sandbox: simulated failure", headers)
        given = request.headers.get("X-Api-Key", "")
        if not hmac.compare_digest(given.encode(), self.api_key.encode()):
            raise _RefusedError(401, "missing or wrong X-Api-Key header")

    def _take_failure(self) -> _Failure | None:
        failure = self._failure
        if failure is None:
            return None
        if failure.skip > 0:
            failure.skip -= 1
            return None
        if failure.remaining is not None:
            failure.remaining -= 1
            if failure.remaining <= 0:
                self._failure = None
        return failure

    def _accept_single(self, payload: object) -> dict[str, Any]:
        fields = _outbound(payload, "")
        message = self._record(fields, batch_id=None)
        return {"messageId": message.message_id, "clientReference": message.client_reference}

    def _accept_bulk(self, payload: object) -> dict[str, Any]:
        items = payload.get("messages") if isinstance(payload, dict) else None
        if not isinstance(items, list) or not items:
            raise _RefusedError(400, 'body must be {"messages": [...]} with at least one message')
        if len(items) > MAX_BULK:
            raise _RefusedError(400, f"too many messages: {len(items)} (at most {MAX_BULK} a call)")
        # Check every message before recording any: a rejected call accepts nothing.
        checked = [_outbound(item, f"messages[{i}].") for i, item in enumerate(items)]
        batch_id = f"sb_batch_{uuid.uuid4().hex[:16]}"
        for fields in checked:
            self._record(fields, batch_id=batch_id)
        return {"batchId": batch_id, "messageCount": len(checked)}

    def _record(self, fields: dict[str, Any], *, batch_id: str | None) -> SandboxMessage:
        message = SandboxMessage(
            message_id=f"sb_{uuid.uuid4().hex[:16]}",
            batch_id=batch_id,
            index=len(self.messages),
            received_at=self.clock.now(),
            **fields,
        )
        self.messages.append(message)
        self._receipts.put_nowait(message)
        return message

    # -- sandbox routes -----------------------------------------------------------------------

    async def _handle_list(self, request: web.Request) -> web.Response:
        to = request.query.get("to")
        messages = self.messages
        if to:
            # "+" in a query string reads as a space, so compare numbers without it.
            messages = [m for m in messages if _number_key(m.recipient) == _number_key(to)]
        return web.json_response({"messages": [m.to_json() for m in messages]})

    async def _handle_inbound(self, request: web.Request) -> web.Response:
        try:
            payload = _object(_parse_json(await request.read()), "the body")
            sender = _text(payload, "from", "")
            to = _text(payload, "to", "")
            body = _text(payload, "text", "", allow_empty=True)
        except _RefusedError as refused:
            return web.json_response({"error": refused.reason}, status=refused.status)
        if self.webhook_url is None:
            return web.json_response(
                {"error": "the sandbox has no webhook URL to deliver to; start it with one"},
                status=409,
            )
        try:
            event_id, status = await self._post_inbound(sender, to, body)
        except (aiohttp.ClientError, TimeoutError) as err:
            return web.json_response(
                {"error": f"could not reach the bot at {self.webhook_url}: {describe(err)}"},
                status=502,
            )
        return web.json_response({"eventId": event_id, "status": status})

    # -- webhooks -----------------------------------------------------------------------------

    async def _background(self, app: web.Application) -> AsyncIterator[None]:
        """Own the webhook session and the receipt workers for as long as the app runs."""
        timeout = aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            self._session = session
            workers = [
                asyncio.create_task(self._deliver_receipts()) for _ in range(RECEIPT_WORKERS)
            ]
            try:
                yield
            finally:
                for worker in workers:
                    worker.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
                self._session = None
                dropped = 0
                while not self._receipts.empty():
                    self._receipts.get_nowait()
                    self._receipts.task_done()
                    dropped += 1
                if dropped:
                    log.info("sandbox stopped; dropped receipts for %d messages", dropped)

    async def _release_hung(self, app: web.Application) -> None:
        self._release.set()

    async def _deliver_receipts(self) -> None:
        while True:
            message = await self._receipts.get()
            try:
                await self._walk_lifecycle(message)
            except Exception:  # one bad receipt must not stop the worker
                log.exception("sandbox: receipt for %s failed", message.message_id)
            finally:
                self._receipts.task_done()

    async def _walk_lifecycle(self, message: SandboxMessage) -> None:
        failing = _number_key(message.recipient) in self.failing_numbers
        for status in ("Dispatched", "Failed" if failing else "Delivered"):
            if self.receipt_delay > 0:
                await asyncio.sleep(self.receipt_delay)
            message.status = status
            if self.webhook_url is not None:
                await self._post_receipt(message, status)

    async def _post_receipt(self, message: SandboxMessage, status: str) -> None:
        """Post one delivery receipt, retrying a few times, then give up with a log line."""
        now = self.clock.now()
        envelope = self._envelope(
            "evt_dr",
            1,
            {
                "messageId": message.message_id,
                "clientReference": message.client_reference,
                "deliveryStatus": status,
                "errorCode": FAILED_ERROR_CODE if status == "Failed" else None,
                "processedAt": utc_iso(message.received_at),
                "deliveredAt": utc_iso(now) if status == "Delivered" else None,
            },
        )
        problem = ""
        for delay in (0.0, *self.receipt_retry_delays):
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                answer = await self._post_webhook(envelope)
            except (aiohttp.ClientError, TimeoutError) as err:
                problem = describe(err)
                continue
            if 200 <= answer < 300:
                return
            problem = f"HTTP {answer}"
        log.warning(
            "sandbox: dropped %s receipt for %s after %d attempts (%s)",
            status,
            message.message_id,
            1 + len(self.receipt_retry_delays),
            problem,
        )

    async def _post_inbound(self, sender: str, to: str, body: str) -> tuple[str, int]:
        envelope = self._envelope(
            "evt_in",
            2,
            {
                "messageId": f"inb_{uuid.uuid4().hex[:16]}",
                "inboundNumber": to,
                "sender": sender,
                "body": body,
                "receivedAt": utc_iso(self.clock.now()),
            },
        )
        return envelope["id"], await self._post_webhook(envelope)

    def _envelope(self, prefix: str, event_type: int, data: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": f"{prefix}_{uuid.uuid4().hex[:16]}",
            "timestamp": utc_iso(self.clock.now()),
            "workspaceId": WORKSPACE_ID,
            "eventType": event_type,
            "data": data,
        }

    async def _post_webhook(self, envelope: dict[str, Any]) -> int:
        """POST one envelope to the webhook URL, signed over the exact bytes sent."""
        if self.webhook_url is None:
            raise RuntimeError("the sandbox has no webhook_url to post to")
        if self._session is None:
            raise RuntimeError("the sandbox is not running; use `async with Sandbox()` or start()")
        body = json.dumps(envelope, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"}
        if self.webhook_secret:  # the provider signs only when a secret is configured
            timestamp = str(int(self.clock.now().timestamp()))
            headers["X-Webhook-Timestamp"] = timestamp
            headers["X-Webhook-Signature"] = sign(self.webhook_secret, timestamp, body)
        async with self._session.post(self.webhook_url, data=body, headers=headers) as response:
            await response.read()
            return response.status


async def serve_forever(
    *,
    host: str = "127.0.0.1",
    port: int = 8081,
    api_key: str = "sandbox",
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
    failing_numbers: Iterable[str] = (),
    receipt_delay: float = 0.0,
) -> None:
    """Run a sandbox until cancelled."""
    sandbox = Sandbox(
        api_key=api_key,
        webhook_url=webhook_url,
        webhook_secret=webhook_secret,
        failing_numbers=failing_numbers,
        receipt_delay=receipt_delay,
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
            )
        )


def _number_key(number: str) -> str:
    """Return a number without spaces or a leading "+", for matching only."""
    return number.replace(" ", "").lstrip("+")


def _parse_json(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        raise _RefusedError(400, "the body is not valid JSON") from None


def _object(payload: object, what: str) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise _RefusedError(400, f"{what} must be a JSON object")
    return payload


def _text(payload: dict[str, Any], key: str, where: str, *, allow_empty: bool = False) -> str:
    value = payload.get(key)
    if not isinstance(value, str) or (not value and not allow_empty):
        raise _RefusedError(400, f"{where}{key} is required and must be a non-empty string")
    return value


def _outbound(raw: object, where: str) -> dict[str, Any]:
    """Check one message as the provider would; return SandboxMessage fields or raise 400."""
    payload = _object(raw, where.rstrip(".") or "the body")
    sender = _text(payload, "sender", where)
    recipient = _text(payload, "recipient", where)
    content = _text(payload, "content", where)
    if not _PHONE.fullmatch(recipient):
        raise _RefusedError(400, f"{where}recipient must be a phone number, not {recipient[:40]!r}")
    reference = payload.get("clientReference")
    if reference is not None and not isinstance(reference, str):
        raise _RefusedError(400, f"{where}clientReference must be a string")
    unicode_mode = payload.get("unicodeMode")
    if unicode_mode is not None and not isinstance(unicode_mode, str):
        raise _RefusedError(400, f"{where}unicodeMode must be a string such as 'Allow'")
    return {
        "sender": sender,
        "recipient": recipient,
        "content": content,
        "client_reference": reference,
        "send_at": _send_at(payload.get("dateSendAtUtc"), where),
        "unicode_mode": unicode_mode,
    }


def _send_at(raw: object, where: str) -> dt.datetime | None:
    if raw is None:
        return None
    try:
        if not isinstance(raw, str):
            raise ValueError(raw)
        when = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise _RefusedError(400, f"{where}dateSendAtUtc must be an ISO 8601 date-time") from None
    # The field is UTC by name, so a time without an offset is UTC.
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)
