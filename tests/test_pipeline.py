"""The message path through the real application: webhook → inbox → step → outbox → provider."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import event, select, update

from smsbot.app.server.app import create_app
from smsbot.channels.sandbox import Sandbox
from smsbot.clock import VirtualClock
from smsbot.engine.contract import (
    ConversationSnapshot,
    DispatchEvent,
    EchoHandler,
    Origin,
    OutgoingSms,
    StepResult,
)
from smsbot.pipeline.receipts import apply_receipts
from smsbot.pipeline.sender import Sender
from smsbot.sms.status import DeliveryStatus
from smsbot.store.models import EventState, events_t, messages_t
from tests.support import PHONE, VN, Harness, inbound_body, make_bot, receipt_body, signed

T0 = dt.datetime(2026, 1, 15, 14, 22, 30, tzinfo=dt.UTC)


@pytest.fixture
async def harness(db_url: str, sandbox: Sandbox, aiohttp_client: Any) -> Harness:
    """Workers off: tests drive the dispatcher and sender themselves, on a virtual clock."""
    clock = VirtualClock(T0)
    bot = await make_bot(db_url, sandbox, EchoHandler(), clock)
    client = await aiohttp_client(create_app(bot, run_workers=False))
    return Harness(bot, client, sandbox, clock)


async def test_a_signed_inbound_webhook_gets_one_reply(harness: Harness) -> None:
    resp = await harness.post(inbound_body("evt_1", "hello"))
    assert resp.status == 200
    assert (await resp.json())["status"] == "new"
    await harness.bot.run_until_idle()
    [sent] = harness.sandbox.messages
    assert (sent.sender, sent.recipient, sent.content) == (VN, PHONE, "You said: hello")
    async with harness.bot.db.session() as s:
        rows = (await s.execute(select(messages_t).order_by(messages_t.c.created_at))).all()
    assert [(r.direction, r.body) for r in rows] == [("in", "hello"), ("out", "You said: hello")]
    assert sent.client_reference == rows[1].id  # clientReference is our message id
    assert rows[1].status == DeliveryStatus.ACCEPTED


def _bad_requests() -> list[Any]:
    body = inbound_body("evt_bad")
    return [
        pytest.param(body, {"X-Webhook-Timestamp": "1"}, 401, id="missing-signature"),
        pytest.param(body, {"X-Webhook-Signature": "x"}, 401, id="missing-timestamp"),
        pytest.param(body, "wrong-secret", 401, id="bad-signature"),
        pytest.param(body, "stale", 401, id="stale-timestamp"),
        pytest.param(body, "future", 401, id="future-timestamp"),
        pytest.param(b"not json", None, 400, id="not-json"),
        pytest.param(b'{"id":"e","eventType":2,"data":{}}', None, 400, id="wrong-shape"),
        pytest.param(inbound_body("evt_x", sender="garbage"), None, 400, id="bad-phone"),
        pytest.param(b"x" * (1_048_576 + 1), None, 413, id="too-large"),
    ]


@pytest.mark.parametrize(("body", "headers", "status"), _bad_requests())
async def test_bad_input_gets_a_clear_4xx_and_changes_nothing(
    harness: Harness, body: bytes, headers: Any, status: int
) -> None:
    clock = harness.clock
    if headers is None:
        headers = signed(body, clock)
    elif headers == "wrong-secret":
        headers = signed(body, clock, secret="another-secret")
    elif headers in ("stale", "future"):
        skew = dt.timedelta(seconds=301 if headers == "future" else -301)
        headers = signed(body, VirtualClock(clock.now() + skew))
    resp = await harness.post(body, headers)
    assert resp.status == status
    assert (await resp.json())["error"]  # a reason, not a bare status
    await harness.bot.run_until_idle()
    assert await harness.event_count() == 0
    assert harness.sandbox.messages == []


async def test_an_oversized_chunked_body_is_refused_too(harness: Harness) -> None:
    body = b"x" * (1_048_576 + 1)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit applies on read
        for i in range(0, len(body), 65_536):
            yield body[i : i + 65_536]

    resp = await harness.client.post(
        "/webhooks/divergent", data=chunks(), headers=signed(body, harness.clock)
    )
    assert resp.status == 413
    assert await harness.event_count() == 0


async def test_unknown_event_type_is_acknowledged_and_ignored(harness: Harness) -> None:
    body = b'{"id":"evt_9","timestamp":"2026-01-15T10:30:00Z","eventType":9,"data":{}}'
    resp = await harness.post(body)
    assert resp.status == 200
    assert (await resp.json())["status"] == "ignored"
    assert await harness.event_count() == 0


async def test_the_same_event_three_times_concurrently_gets_one_reply(harness: Harness) -> None:
    body = inbound_body("evt_dup", "once")
    responses = await asyncio.gather(*(harness.post(body) for _ in range(3)))
    assert [r.status for r in responses] == [200, 200, 200]
    statuses = sorted([(await r.json())["status"] for r in responses])
    assert statuses == ["duplicate", "duplicate", "new"]
    await harness.bot.run_until_idle()
    assert await harness.event_count() == 1
    assert [m.content for m in harness.sandbox.messages] == ["You said: once"]


async def test_a_duplicate_a_day_later_is_still_a_duplicate(harness: Harness) -> None:
    body = inbound_body("evt_late", "hi")
    assert (await harness.post(body)).status == 200
    await harness.bot.run_until_idle()
    harness.clock.advance(dt.timedelta(hours=26))
    resp = await harness.post(body)
    assert (await resp.json())["status"] == "duplicate"
    await harness.bot.run_until_idle()
    assert len(harness.sandbox.messages) == 1


async def test_same_id_with_a_different_body_is_acknowledged_not_processed(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    assert (await harness.post(inbound_body("evt_c", "first"))).status == 200
    resp = await harness.post(inbound_body("evt_c", "second"))
    assert resp.status == 200
    assert (await resp.json())["status"] == "conflict"
    assert "different body" in caplog.text
    await harness.bot.run_until_idle()
    assert [m.content for m in harness.sandbox.messages] == ["You said: first"]


class OrderRecorder:
    """A handler that records the order it sees events in and any overlap per conversation."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.active = 0
        self.max_active = 0

    async def handle(
        self, event: DispatchEvent, convo: ConversationSnapshot, now: dt.datetime
    ) -> StepResult:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await asyncio.sleep(0.001)  # give any concurrent step of this key a chance to overlap
            self.seen.append(event.payload["body"])
            result = StepResult.unchanged(convo)
            result.data = {**convo.data, "n": int(convo.data.get("n", 0)) + 1}
            result.replies.append(OutgoingSms(f"ack {event.payload['body']}", Origin.REPLY))
            return result
        finally:
            self.active -= 1


async def test_fifty_replies_from_one_phone_run_one_at_a_time_in_order(
    db_url: str, sandbox: Sandbox, aiohttp_client: Any
) -> None:
    from smsbot.clock import SystemClock

    recorder = OrderRecorder()
    bot = await make_bot(db_url, sandbox, recorder, SystemClock(), SMSBOT_WORKERS="8")
    client = await aiohttp_client(create_app(bot, run_workers=True))
    harness = Harness(bot, client, sandbox, SystemClock())
    bodies = [inbound_body(f"evt_{i:02d}", f"m{i:02d}") for i in range(50)]
    responses = await asyncio.gather(*(harness.post(b) for b in bodies))
    assert all(r.status == 200 for r in responses)
    async with bot.db.session() as s:
        arrival = [
            row.payload["body"]
            for row in (await s.execute(select(events_t).order_by(events_t.c.id))).all()
        ]
    async with asyncio.timeout(30):
        while len(sandbox.messages) < 50:
            await asyncio.sleep(0.02)
    assert recorder.seen == arrival  # arrival order, each exactly once
    assert recorder.max_active == 1
    assert sorted(m.content for m in sandbox.messages) == sorted(f"ack {b}" for b in arrival)
    async with bot.db.session() as s:
        states = (await s.execute(select(events_t.c.state))).scalars().all()
    assert set(states) == {EventState.DONE}


async def test_delivery_receipts_move_status_forward_never_back(harness: Harness) -> None:
    harness.sandbox.webhook_url = str(harness.client.make_url("/webhooks/divergent"))
    harness.sandbox.webhook_secret = "whsec_pipeline_test"
    harness.sandbox.clock = harness.clock
    await harness.post(inbound_body("evt_r", "hi"))
    await harness.bot.run_until_idle()
    await harness.sandbox.wait_for_receipts()  # the sandbox posts Dispatched, then Delivered
    await harness.bot.run_until_idle()
    async with harness.bot.db.session() as s:
        out = (await s.execute(select(messages_t).where(messages_t.c.direction == "out"))).one()
    assert out.status == DeliveryStatus.DELIVERED
    late = receipt_body(out.id, "Dispatched")
    assert (await harness.post(late)).status == 200
    await harness.bot.run_until_idle()
    async with harness.bot.db.session() as s:
        again = await s.execute(select(messages_t.c.status).where(messages_t.c.id == out.id))
        assert again.scalar_one() == DeliveryStatus.DELIVERED


async def test_a_receipt_for_an_unknown_message_is_kept_for_reconciliation(
    harness: Harness,
) -> None:
    resp = await harness.post(receipt_body("no-such-message", "Delivered"))
    assert resp.status == 200
    await harness.bot.run_until_idle()
    async with harness.bot.db.session() as s:
        state = (await s.execute(select(events_t.c.state))).scalar_one()
    assert state == EventState.UNMATCHED


async def test_provider_outage_then_recovery_sends_each_reply_once(harness: Harness) -> None:
    harness.sandbox.set_failure(503)  # down until cleared
    for i in range(3):
        await harness.post(inbound_body(f"evt_o{i}", f"o{i}", sender=f"+4477009001{i:02d}"))
    await harness.bot.run_until_idle()
    assert harness.sandbox.messages == []
    for _ in range(3):  # time passes; each retry meets the outage again
        harness.clock.advance(dt.timedelta(minutes=2))
        await harness.bot.run_until_idle()
    assert harness.sandbox.messages == []
    harness.sandbox.set_failure(None)
    harness.clock.advance(dt.timedelta(minutes=2))
    await harness.bot.run_until_idle()
    assert sorted(m.content for m in harness.sandbox.messages) == [
        "You said: o0",
        "You said: o1",
        "You said: o2",
    ]
    harness.clock.advance(dt.timedelta(hours=1))
    await harness.bot.run_until_idle()
    assert len(harness.sandbox.messages) == 3


async def test_429_waits_for_retry_after(harness: Harness) -> None:
    harness.sandbox.set_failure(429, retry_after=120)
    await harness.post(inbound_body("evt_429", "x"))
    await harness.bot.run_until_idle()
    harness.sandbox.set_failure(None)
    harness.clock.advance(dt.timedelta(seconds=119))
    await harness.bot.run_until_idle()
    assert harness.sandbox.messages == []  # still inside Retry-After
    harness.clock.advance(dt.timedelta(seconds=2))
    await harness.bot.run_until_idle()
    assert len(harness.sandbox.messages) == 1


async def test_a_permanent_provider_error_fails_the_message_and_tells_the_flow(
    harness: Harness,
) -> None:
    harness.sandbox.set_failure(400)
    await harness.post(inbound_body("evt_400", "x"))
    await harness.bot.run_until_idle()
    async with harness.bot.db.session() as s:
        out = (await s.execute(select(messages_t).where(messages_t.c.direction == "out"))).one()
        kinds = (await s.execute(select(events_t.c.kind).order_by(events_t.c.id))).scalars().all()
    assert out.status == DeliveryStatus.FAILED
    assert kinds == ["inbound", "send_failed"]


class Exploding:
    """A handler that always raises: the event is retried, then parked."""

    async def handle(
        self, event: DispatchEvent, convo: ConversationSnapshot, now: dt.datetime
    ) -> StepResult:
        raise RuntimeError("flow bug")


async def test_a_step_that_keeps_failing_is_parked_and_the_conversation_moves_on(
    db_url: str, sandbox: Sandbox, aiohttp_client: Any
) -> None:
    clock = VirtualClock(T0)
    bot = await make_bot(db_url, sandbox, Exploding(), clock, SMSBOT_STEP_MAX_ATTEMPTS="3")
    client = await aiohttp_client(create_app(bot, run_workers=False))
    h = Harness(bot, client, sandbox, clock)
    await h.post(inbound_body("evt_f1", "a"))
    await h.post(inbound_body("evt_f2", "b"))
    for _ in range(5):
        await bot.run_until_idle()
        clock.advance(dt.timedelta(minutes=5))
    async with bot.db.session() as s:
        rows = (await s.execute(select(events_t).order_by(events_t.c.id))).all()
    assert [(r.state, r.attempts) for r in rows] == [("failed", 3), ("failed", 3)]
    assert "RuntimeError: flow bug" in rows[0].last_error


async def test_healthz_and_metrics(harness: Harness) -> None:
    assert (await harness.client.get("/healthz")).status == 200
    for n, sender in enumerate(["+447700900201", "+447700900202", "+447700900203"]):
        await harness.post(inbound_body(f"evt_m{n}", "x", sender=sender))
    await harness.bot.run_until_idle()
    text = await (await harness.client.get("/metrics")).text()
    assert 'smsbot_webhooks_total{result="new",source="divergent",workspace="default"} 3' in text
    assert 'smsbot_messages_sent_total{workspace="default"} 3' in text
    assert 'smsbot_queue_depth{queue="inbox"} 0' in text
    processed = 'smsbot_events_processed_total{kind="inbound",result="ok",workspace="default"} 3'
    assert processed in text
    assert "smsbot_step_seconds_count 3" in text  # one batch of three steps: three observations


async def test_legacy_puresms_receipts_need_the_url_token_and_apply_in_batches(
    db_url: str, sandbox: Sandbox, aiohttp_client: Any
) -> None:
    clock = VirtualClock(T0)
    bot = await make_bot(
        db_url, sandbox, EchoHandler(), clock, SMSBOT_PURESMS_WEBHOOK_TOKEN="tok-1234567890abcdef"
    )
    client = await aiohttp_client(create_app(bot, run_workers=False))
    h = Harness(bot, client, sandbox, clock)
    await h.post(inbound_body("evt_p", "hi"))
    await bot.run_until_idle()
    async with bot.db.session() as s:
        out_id = (
            await s.execute(select(messages_t.c.id).where(messages_t.c.direction == "out"))
        ).scalar_one()
    batch = json.dumps(
        [
            {
                "reference": "R1",
                "clientReference": out_id,
                "batchReference": None,
                "deliveryStatus": status,
            }
            for status in (1, 2)
        ]
    ).encode()
    assert (await client.post("/webhooks/puresms/wrong", data=batch)).status == 401
    resp = await client.post("/webhooks/puresms/tok-1234567890abcdef", data=batch)
    assert resp.status == 200
    assert (await resp.json())["new"] == 2
    assert (
        await client.post("/webhooks/puresms/tok-1234567890abcdef", data=batch)
    ).status == 200  # replay
    await bot.run_until_idle()
    async with bot.db.session() as s:
        row = (await s.execute(select(messages_t).where(messages_t.c.id == out_id))).one()
        receipts = (
            await s.execute(select(events_t.c.id).where(events_t.c.kind == "receipt"))
        ).all()
    assert row.status == DeliveryStatus.DELIVERED
    assert row.provider_message_id == "R1"
    assert len(receipts) == 2
    bad = b'[{"reference":"R1","deliveryStatus":12}]'
    resp = await client.post("/webhooks/puresms/tok-1234567890abcdef", data=bad)
    assert resp.status == 400
    assert "deliveryStatus" in (await resp.json())["error"]


async def test_storage_down_answers_503_so_the_provider_retries(
    sandbox: Sandbox, aiohttp_client: Any, tmp_path: Any
) -> None:
    from smsbot.channels.divergent.client import DivergentClient
    from smsbot.pipeline.bot import Bot
    from smsbot.store.engine import Database
    from tests.support import settings_for

    down = "postgresql+asyncpg://postgres@127.0.0.1:1/nowhere"  # nothing listens on port 1
    assert sandbox.url is not None
    settings = settings_for(down, sandbox.url)
    clock = VirtualClock(T0)
    bot = Bot(
        settings,
        provider=DivergentClient("k", sandbox.url),
        handler=EchoHandler(),
        clock=clock,
        db=Database(down),
    )
    client = await aiohttp_client(create_app(bot, run_workers=False))
    assert (await client.get("/healthz")).status == 503
    body = inbound_body("evt_down")
    resp = await client.post("/webhooks/divergent", data=body, headers=signed(body, clock))
    assert resp.status == 503
    assert "retry" in (await resp.json())["error"]


async def test_insecure_no_signature_accepts_unsigned_webhooks_and_warns_at_start(
    db_url: str, sandbox: Sandbox, aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    clock = VirtualClock(T0)
    bot = await make_bot(db_url, sandbox, EchoHandler(), clock, SMSBOT_INSECURE_NO_SIGNATURE="1")
    with caplog.at_level("WARNING"):
        client = await aiohttp_client(create_app(bot, run_workers=False))
    assert "NOT verified" in caplog.text
    resp = await client.post("/webhooks/divergent", data=inbound_body("evt_unsigned", "hi"))
    assert resp.status == 200
    await bot.run_until_idle()
    assert [m.content for m in sandbox.messages] == ["You said: hi"]


class Writes:
    """The write transactions a Database runs while recording, each as its statements.

    From engine events: a transaction begun on an engine that writes (on PostgreSQL, one not
    marked READ ONLY) until it commits or rolls back. On SQLite every one of them holds the
    single writer's lock.
    """

    def __init__(self, db: Any) -> None:
        self.engines = db.write_engines
        self.transactions: list[list[str]] = []
        self._open: dict[int, list[str]] = {}

    def __enter__(self) -> Writes:
        for engine in self.engines:
            event.listen(engine, "begin", self._begin)
            event.listen(engine, "before_cursor_execute", self._statement)
            event.listen(engine, "commit", self._end)
            event.listen(engine, "rollback", self._end)
        return self

    def __exit__(self, *exc: object) -> None:
        for engine in self.engines:
            event.remove(engine, "begin", self._begin)
            event.remove(engine, "before_cursor_execute", self._statement)
            event.remove(engine, "commit", self._end)
            event.remove(engine, "rollback", self._end)

    def _begin(self, conn: Any) -> None:
        if not conn.get_execution_options().get("postgresql_readonly"):
            self._open[id(conn)] = statements = []
            self.transactions.append(statements)

    def _statement(self, conn: Any, _cursor: Any, sql: str, *_: Any) -> None:
        if id(conn) in self._open and not sql.startswith("BEGIN"):
            self._open[id(conn)].append(" ".join(sql.split()))

    def _end(self, conn: Any) -> None:
        self._open.pop(id(conn), None)

    def empty(self) -> list[list[str]]:
        """The transactions that changed nothing: no INSERT, UPDATE or DELETE."""
        return [t for t in self.transactions if not any(_changes(s) for s in t)]


def _changes(sql: str) -> bool:
    return sql.startswith(("INSERT", "UPDATE", "DELETE"))


async def test_an_idle_dispatcher_round_takes_no_write_transaction(harness: Harness) -> None:
    with Writes(harness.bot.db) as writes:
        assert await harness.bot.dispatcher.dispatch_round() is False  # receipts, then due keys
        assert await harness.bot.run_until_idle() == 0
    assert writes.transactions == []


async def test_a_reply_is_claimed_and_recorded_in_two_transactions_of_one_update_each(
    harness: Harness,
) -> None:
    await harness.post(inbound_body("evt_tx", "hi"))
    assert await harness.bot.dispatcher.run_until_idle() == 1
    with Writes(harness.bot.db) as writes:
        assert await harness.bot.sender.send_until_idle() == 1
    [claim, record] = writes.transactions  # and no empty claim after the useful one
    # the interactive lane (a SELECT for each answers' origin: outbox.INTERACTIVE), then the
    # send-order lane for the room left; one UPDATE claims
    assert [s.split()[0] for s in claim] == ["SELECT", "SELECT", "SELECT", "UPDATE"]
    assert [s.split()[0] for s in record] == ["UPDATE"]
    [sent] = harness.sandbox.messages
    async with harness.bot.db.session() as s:
        out = (await s.execute(select(messages_t).where(messages_t.c.direction == "out"))).one()
    assert (out.status, out.outbox, out.provider_message_id) == (
        DeliveryStatus.ACCEPTED,
        "done",
        sent.message_id,
    )


async def test_receipts_are_applied_in_a_transaction_only_when_there_are_some(
    harness: Harness,
) -> None:
    await harness.post(inbound_body("evt_rc", "hi"))
    await harness.bot.run_until_idle()
    [sent] = harness.sandbox.messages
    await harness.post(receipt_body(sent.client_reference, "Delivered"))
    with Writes(harness.bot.db) as writes:
        assert await apply_receipts(harness.bot.db, harness.clock, harness.bot.metrics) == 1
        assert await apply_receipts(harness.bot.db, harness.clock, harness.bot.metrics) == 0
    assert len(writes.transactions) == 1
    assert writes.empty() == []


class ReceiptFirst:
    """A provider whose answer comes back after the message's delivery receipt was applied."""

    def __init__(self, inner: Any, db: Any) -> None:
        self.inner, self.db = inner, db
        self.max_batch = inner.max_batch

    async def send(self, message: Any) -> Any:
        result = await self.inner.send(message)
        delivered = (
            update(messages_t)
            .where(messages_t.c.id == message.client_reference)
            .values(status=DeliveryStatus.DELIVERED.value, error="provider error code 7")
        )
        await self.db.write(lambda conn: conn.execute(delivered))
        return result

    async def send_many(self, messages: Any) -> Any:
        raise NotImplementedError

    async def close(self) -> None:
        await self.inner.close()


async def test_recording_a_send_never_moves_a_receipts_status_back(harness: Harness) -> None:
    bot = harness.bot
    await harness.post(inbound_body("evt_rf", "hi"))
    await bot.dispatcher.run_until_idle()
    sender = Sender(bot.db, ReceiptFirst(bot.provider, bot.db), harness.clock)
    assert await sender.send_until_idle() == 1
    async with bot.db.session() as s:
        out = (await s.execute(select(messages_t).where(messages_t.c.direction == "out"))).one()
    assert (out.status, out.error, out.outbox) == (
        DeliveryStatus.DELIVERED,
        "provider error code 7",
        "done",
    )
    assert out.sent_at == harness.clock.now()
