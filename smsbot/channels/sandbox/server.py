"""The sandbox's aiohttp app: the provider's routes, receipts and inbound SMS to the bot."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import aiohttp
from aiohttp import web

from smsbot.channels.base import describe
from smsbot.channels.divergent.client import utc_iso
from smsbot.channels.divergent.signature import sign
from smsbot.channels.sandbox.wire import (
    FAILED_ERROR_CODE,
    MAX_BULK,
    MAX_REQUEST_BYTES,
    RECEIPT_WORKERS,
    WEBHOOK_TIMEOUT,
    WORKSPACE_ID,
    Failure,
    NumberSet,
    RefusedError,
    SandboxCall,
    SandboxMessage,
    json_object,
    number_key,
    outbound_fields,
    parse_json,
    text_field,
)
from smsbot.clock import Clock, SystemClock

log = logging.getLogger(__name__)


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
        workspace_id: str = WORKSPACE_ID,
    ) -> None:
        self.api_key = api_key
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret  # signs every webhook; None: sent unsigned
        # The account's workspaceId, in every webhook: two sandboxes with their own ids and
        # secrets are two clients' accounts (a workspace's workspace_id in smsbot.toml).
        self.workspace_id = workspace_id
        self.failing_numbers = NumberSet(failing_numbers)
        self.receipt_delay = receipt_delay
        self.clock = clock or SystemClock()
        self.messages: list[SandboxMessage] = []
        self.calls: list[SandboxCall] = []
        self.hang = False  # True: send calls wait until reset() or stop(), to test timeouts
        self.receipt_retry_delays: tuple[float, ...] = (0.5, 2.0, 5.0)
        self.url: str | None = None  # set by start()
        self._failure: Failure | None = None
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
            self._failure = Failure(status, count, retry_after, after)

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
            payload = parse_json(await request.read())
            response = web.json_response(accept(payload))
        except RefusedError as refused:
            response = web.json_response(
                {"error": refused.reason}, status=refused.status, headers=refused.headers
            )
        self.calls.append(SandboxCall(request.path, response.status))
        return response

    async def _gate(self, request: web.Request) -> None:
        """Apply the test controls (hang, injected failure), then check the API key."""
        if self.hang:
            await self._release.wait()
            raise RefusedError(503, "sandbox: this request was held by `hang` and then released")
        failure = self._take_failure()
        if failure is not None:
            headers = {}
            if failure.retry_after is not None:
                headers["Retry-After"] = f"{failure.retry_after:g}"
            raise RefusedError(failure.status, "sandbox: simulated failure", headers)
        given = request.headers.get("X-Api-Key", "")
        if not hmac.compare_digest(given.encode(), self.api_key.encode()):
            raise RefusedError(401, "missing or wrong X-Api-Key header")

    def _take_failure(self) -> Failure | None:
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
        fields = outbound_fields(payload, "")
        message = self._record(fields, batch_id=None)
        return {"messageId": message.message_id, "clientReference": message.client_reference}

    def _accept_bulk(self, payload: object) -> dict[str, Any]:
        items = payload.get("messages") if isinstance(payload, dict) else None
        if not isinstance(items, list) or not items:
            raise RefusedError(400, 'body must be {"messages": [...]} with at least one message')
        if len(items) > MAX_BULK:
            raise RefusedError(400, f"too many messages: {len(items)} (at most {MAX_BULK} a call)")
        # Check every message before recording any: a rejected call accepts nothing.
        checked = [outbound_fields(item, f"messages[{i}].") for i, item in enumerate(items)]
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
            messages = [m for m in messages if number_key(m.recipient) == number_key(to)]
        return web.json_response({"messages": [m.to_json() for m in messages]})

    async def _handle_inbound(self, request: web.Request) -> web.Response:
        try:
            payload = json_object(parse_json(await request.read()), "the body")
            sender = text_field(payload, "from", "")
            to = text_field(payload, "to", "")
            body = text_field(payload, "text", "", allow_empty=True)
        except RefusedError as refused:
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
        failing = message.recipient in self.failing_numbers
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
            "workspaceId": self.workspace_id,
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
