"""A delivery receipt that says a message failed reaches the flow's `on_send_failed`, once.

The flows run on the test kit's real bot (aiohttp app, signed webhooks, sandbox provider,
virtual clock) over SQLite and, when reachable, PostgreSQL. Receipts come either from the
sandbox itself (a number in `failing_numbers` gets Dispatched, then Failed) or, where a test
needs a particular status, as signed webhooks the test posts the way the provider would.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import DBAPIError

from smsbot.app.operations import send_now
from smsbot.channels.divergent.signature import sign
from smsbot.engine.contract import EventKind
from smsbot.pipeline.inbox import InboxEntry
from smsbot.pipeline.metrics import Metrics
from smsbot.pipeline.receipts import apply_receipts
from smsbot.sms.status import DeliveryStatus
from smsbot.store.models import EventState, conversations_t, events_t, messages_t
from smsbot.testing import BotDriver, driver_settings

PARCEL = '''\
"""Tell a customer their parcel is coming; note it when they cannot be reached."""

from smsbot import Conversation, Flow, Message, State


class Parcel(Flow):
    name = "parcel"
    waiting = State(initial=True)
    unreachable = State()

    async def start(self, convo: Conversation) -> State | None:
        await convo.say("Your parcel arrives today. Reply MORE for details.")
        return None

    @waiting.on("MORE")
    async def more(self, convo: Conversation, msg: Message) -> State | None:
        await convo.say("Between 10:00 and 12:00.")
        return None

    async def on_send_failed(self, convo: Conversation, error: str) -> State | None:
        convo.data["failures"] = [*convo.data.get("failures", []), error]
        return self.unreachable
'''

REFUSE_HOOK_SQLITE = [
    "CREATE TRIGGER refuse_hook BEFORE INSERT ON webhook_events WHEN NEW.kind = 'send_failed'"
    " BEGIN SELECT RAISE(ABORT, 'refused for the test'); END"
]
DROP_HOOK_SQLITE = ["DROP TRIGGER refuse_hook"]
REFUSE_HOOK_PG = [
    "CREATE FUNCTION refuse_hook() RETURNS trigger AS $$"
    " BEGIN RAISE EXCEPTION 'refused for the test'; END $$ LANGUAGE plpgsql",
    "CREATE TRIGGER refuse_hook BEFORE INSERT ON webhook_events FOR EACH ROW"
    " WHEN (NEW.kind = 'send_failed') EXECUTE FUNCTION refuse_hook()",
]
DROP_HOOK_PG = ["DROP TRIGGER refuse_hook ON webhook_events", "DROP FUNCTION refuse_hook()"]

FAILING = "+447700900666"  # the sandbox answers every message to it with a Failed receipt
SANDBOX_FAILURE = "delivery failed: Failed (provider error code sandbox-failing-number)"


@pytest.fixture
async def kit(db_url: str, tmp_path: Path) -> AsyncIterator[BotDriver]:
    """The kit's bot running the parcel flow, on each test database."""
    project = tmp_path / "project"
    (project / "flows").mkdir(parents=True)
    (project / "templates").mkdir()
    (project / "flows" / "parcel.py").write_text(PARCEL, encoding="utf-8")
    async with BotDriver(driver_settings(project, db_url)) as driver:
        driver.sandbox.failing_numbers.add(FAILING)
        yield driver


@pytest.fixture
def webhook(kit: BotDriver) -> str:
    """The bot's Divergent webhook URL (kept here: a test may take it away from the sandbox)."""
    assert kit.sandbox.webhook_url is not None
    return kit.sandbox.webhook_url


async def post_receipt(
    kit: BotDriver,
    webhook: str,
    message_id: str,
    status: str,
    error_code: str | None = None,
    *,
    settle: bool = True,
) -> None:
    """POST a signed eventType 1 webhook for `message_id` as the provider would, then run."""
    envelope = {
        "id": f"evt_dr_{uuid.uuid4().hex}",
        "timestamp": "2026-01-15T09:00:00Z",
        "workspaceId": "ws_test",
        "eventType": 1,
        "data": {
            "messageId": f"prov_{message_id}",
            "clientReference": message_id,
            "deliveryStatus": status,
            "errorCode": error_code,
            "processedAt": "2026-01-15T09:00:00Z",
            "deliveredAt": None,
        },
    }
    body = json.dumps(envelope, separators=(",", ":")).encode()
    secret = kit.settings.webhook_secrets()[0]
    timestamp = str(int(kit.clock.now().timestamp()))
    headers = {
        "Content-Type": "application/json",
        "X-Webhook-Timestamp": timestamp,
        "X-Webhook-Signature": sign(secret, timestamp, body),
    }
    async with (
        aiohttp.ClientSession() as http,
        http.post(webhook, data=body, headers=headers) as answer,
    ):
        assert answer.status == 200, await answer.text()
    if settle:
        await kit.advance()  # no time passes: the bot runs until it has nothing left to do


async def outbound(kit: BotDriver) -> list[Any]:
    """Outbound messages, oldest first."""
    async with kit.bot.db.session() as s:
        query = select(messages_t).where(messages_t.c.direction == "out")
        return list((await s.execute(query.order_by(messages_t.c.created_at))).all())


async def undo_receipts(kit: BotDriver, message_id: str) -> None:
    """Put a message back to queued, as if its receipts were still to come."""
    async with kit.bot.db.session() as s, s.begin():
        query = update(messages_t).where(messages_t.c.id == message_id)
        await s.execute(query.values(status=DeliveryStatus.QUEUED.value))


async def send_failed_events(kit: BotDriver) -> list[Any]:
    """Every SEND_FAILED event the inbox holds."""
    async with kit.bot.db.session() as s:
        query = select(events_t).where(events_t.c.kind == EventKind.SEND_FAILED.value)
        return list((await s.execute(query.order_by(events_t.c.id))).all())


async def test_a_failed_receipt_from_the_provider_runs_the_hook_once(kit: BotDriver) -> None:
    await kit.start("parcel", to=FAILING)  # the sandbox posts Dispatched, then Failed
    kit.expect_reply(contains="Your parcel arrives today", to=FAILING)
    convo = kit.conversation()
    assert (convo.state, convo.data["failures"]) == ("unreachable", [SANDBOX_FAILURE])
    [message] = await outbound(kit)
    assert message.status == DeliveryStatus.FAILED
    assert message.error == "provider error code sandbox-failing-number"
    [event] = await send_failed_events(kit)
    assert (event.source, event.event_id, event.state) == (
        "internal",
        f"send-failed:{message.id}",
        EventState.DONE,
    )
    assert (event.virtual_number, event.phone) == (kit.virtual_number, FAILING)
    assert event.payload == {
        "message_id": message.id,
        "error": SANDBOX_FAILURE,
        "text": "Your parcel arrives today. Reply MORE for details.",
        "origin": "flow",
        "created_at": message.created_at.isoformat(),
    }
    kit.expect_no_reply()


async def test_a_delivered_receipt_tells_the_flow_nothing(kit: BotDriver) -> None:
    await kit.start("parcel")  # the sandbox posts Dispatched, then Delivered
    await kit.send("more")
    assert kit.conversation().state == "waiting"
    assert "failures" not in kit.conversation().data
    assert [m.status for m in await outbound(kit)] == [DeliveryStatus.DELIVERED] * 2
    assert await send_failed_events(kit) == []


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        ("Rejected", "123", "delivery failed: Rejected (provider error code 123)"),
        ("Expired", None, "delivery failed: Expired"),
        ("Failed", "7", "delivery failed: Failed (provider error code 7)"),
    ],
)
async def test_each_delivery_failure_status_runs_the_hook(
    kit: BotDriver, webhook: str, status: str, code: str | None, error: str
) -> None:
    kit.sandbox.webhook_url = None  # the sandbox posts no receipts: the test does
    await kit.start("parcel")
    [message] = await outbound(kit)
    await post_receipt(kit, webhook, message.id, "Dispatched")
    assert kit.conversation().state == "waiting"
    await post_receipt(kit, webhook, message.id, status, code)
    convo = kit.conversation()
    assert (convo.state, convo.data["failures"]) == ("unreachable", [error])
    [event] = await send_failed_events(kit)
    assert event.state == EventState.DONE


@pytest.mark.parametrize("status", ["Cancelled", "Deleted"])
async def test_a_message_stopped_on_purpose_is_not_a_failure(
    kit: BotDriver, webhook: str, status: str
) -> None:
    kit.sandbox.webhook_url = None  # the sandbox posts no receipts: the test does
    await kit.start("parcel")
    [message] = await outbound(kit)
    await post_receipt(kit, webhook, message.id, status)
    assert [m.status for m in await outbound(kit)] == [status.lower()]
    assert kit.conversation().state == "waiting"
    assert await send_failed_events(kit) == []


async def test_a_second_failed_receipt_does_not_run_the_hook_again(
    kit: BotDriver, webhook: str
) -> None:
    await kit.start("parcel", to=FAILING)
    [message] = await outbound(kit)
    # The provider may report a failure twice, under new event ids, or change its mind.
    await post_receipt(kit, webhook, message.id, "Failed", "1")
    await post_receipt(kit, webhook, message.id, "Rejected", "2")
    assert kit.conversation().data["failures"] == [SANDBOX_FAILURE]
    assert len(await send_failed_events(kit)) == 1


async def test_a_failed_receipt_after_a_permanent_send_error_does_not_run_the_hook_again(
    kit: BotDriver,
    webhook: str,
) -> None:
    kit.sandbox.set_failure(400)  # the provider refuses the message outright
    await kit.start("parcel")
    [refused] = kit.conversation().data["failures"]
    assert "400" in refused
    assert kit.conversation().state == "unreachable"
    kit.sandbox.set_failure(None)
    [message] = await outbound(kit)
    assert message.status == DeliveryStatus.FAILED
    await post_receipt(kit, webhook, message.id, "Failed", "123")
    assert kit.conversation().data["failures"] == [refused]
    [event] = await send_failed_events(kit)
    assert event.payload["error"] == refused  # the sender's event, not a second one


async def test_a_late_delivered_receipt_after_a_failure_changes_nothing(
    kit: BotDriver, webhook: str
) -> None:
    await kit.start("parcel", to=FAILING)
    [message] = await outbound(kit)
    await post_receipt(kit, webhook, message.id, "Delivered")
    [after] = await outbound(kit)
    assert (after.status, after.error) == (DeliveryStatus.FAILED, message.error)
    convo = kit.conversation()
    assert (convo.state, convo.data["failures"]) == ("unreachable", [SANDBOX_FAILURE])
    assert len(await send_failed_events(kit)) == 1


async def test_a_failed_message_outside_any_conversation_is_handled_quietly(
    kit: BotDriver,
) -> None:
    # `smsbot send` writes its message and calls the provider itself: no flow is involved.
    assert kit.sandbox.url is not None
    port = urlsplit(kit.sandbox.url).port
    assert port is not None
    settings = kit.settings.replace(sandbox_port=port)
    text = "Our office is closed today"
    await send_now(settings, to=FAILING, text=text, sender=kit.virtual_number)
    await kit.advance()  # the sandbox's Failed receipt arrives and is applied
    kit.expect_reply(equals=text, to=FAILING)
    [message] = await outbound(kit)
    assert message.status == DeliveryStatus.FAILED
    [event] = await send_failed_events(kit)  # no step failed: the kit would have raised
    assert (event.state, event.attempts, event.last_error) == (EventState.DONE, 0, None)
    assert not kit.conversation(FAILING).active


async def test_an_operator_message_failing_does_not_run_the_flows_hook(
    kit: BotDriver, webhook: str
) -> None:
    await kit.start("parcel")
    kit.expect_reply(contains="Your parcel arrives today")
    settings = kit.settings.replace(sandbox_port=urlsplit(kit.sandbox.url or "").port)
    await send_now(settings, to=kit.phone, text="Closed today", sender=kit.virtual_number)
    await kit.advance()
    kit.expect_reply(equals="Closed today")
    operator_message = (await outbound(kit))[-1]
    await undo_receipts(kit, operator_message.id)  # the sandbox said Delivered at once
    await post_receipt(kit, webhook, operator_message.id, "Failed", "9")
    [event] = await send_failed_events(kit)
    assert event.payload["origin"] == "operator"
    assert event.state == EventState.DONE  # handled: the parcel flow was not told
    assert kit.conversation().state == "waiting"
    assert "failures" not in kit.conversation().data


async def test_a_message_from_an_earlier_run_failing_does_not_reach_the_new_flow(
    kit: BotDriver, webhook: str
) -> None:
    await kit.start("parcel")
    kit.expect_reply(contains="Your parcel arrives today")
    old = (await outbound(kit))[-1]
    # Its receipt is still to come (the sandbox already said Delivered: undo that) when a new
    # run starts for the same phone.
    await undo_receipts(kit, old.id)
    await kit.advance(dt.timedelta(minutes=1))
    async with kit.bot.db.session() as s, s.begin():
        await s.execute(
            update(conversations_t).values(started_at=kit.clock.now())  # a later run
        )
    await post_receipt(kit, webhook, old.id, "Failed", "3")
    [event] = await send_failed_events(kit)
    assert event.state == EventState.DONE
    assert "failures" not in kit.conversation().data
    assert kit.conversation().state == "waiting"


async def test_the_running_dispatcher_picks_up_the_hook_after_the_receipt(
    kit: BotDriver, webhook: str
) -> None:
    kit.sandbox.webhook_url = None  # the sandbox posts no receipts: the test does
    await kit.start("parcel")
    [message] = await outbound(kit)

    async def hook_ran() -> bool:
        events = await send_failed_events(kit)
        return bool(events) and events[0].state == EventState.DONE

    dispatcher = kit.bot.dispatcher
    loop = asyncio.create_task(dispatcher.run())  # the loop `smsbot serve` runs, not the kit's
    try:
        await post_receipt(kit, webhook, message.id, "Rejected", "123", settle=False)
        async with asyncio.timeout(10):
            while not await hook_ran():
                await asyncio.sleep(0.02)
    finally:
        dispatcher.stop()
        await loop
    await kit.advance()  # refresh the kit's view of the conversation
    assert kit.conversation().data["failures"] == [
        "delivery failed: Rejected (provider error code 123)"
    ]


async def test_the_status_and_the_hook_are_written_together_or_not_at_all(
    kit: BotDriver,
) -> None:
    kit.sandbox.webhook_url = None  # the sandbox posts no receipts: the test does
    await kit.start("parcel")
    [message] = await outbound(kit)
    payload = {"client_reference": message.id, "status": "failed", "error_code": "9"}
    await kit.bot.inbox.accept(InboxEntry("divergent", "evt_fail", EventKind.RECEIPT, payload))

    # The database refuses the hook's event (a trigger): the status must not change either.
    postgres = kit.bot.db.is_postgres
    async with kit.bot.db.session() as s, s.begin():
        for statement in REFUSE_HOOK_PG if postgres else REFUSE_HOOK_SQLITE:
            await s.execute(text(statement))
    with pytest.raises(DBAPIError, match="refused for the test"):
        await apply_receipts(kit.bot.db, kit.clock, Metrics())
    [unchanged] = await outbound(kit)
    assert unchanged.status == DeliveryStatus.ACCEPTED
    assert await send_failed_events(kit) == []
    async with kit.bot.db.session() as s, s.begin():
        states = await s.execute(select(events_t.c.state).where(events_t.c.kind == "receipt"))
        assert list(states.scalars()) == [EventState.PENDING]
        for statement in DROP_HOOK_PG if postgres else DROP_HOOK_SQLITE:
            await s.execute(text(statement))

    await kit.advance()  # applied again: the status and the hook's event commit together
    [failed] = await outbound(kit)
    assert failed.status == DeliveryStatus.FAILED
    assert len(await send_failed_events(kit)) == 1
    assert kit.conversation().data["failures"] == [
        "delivery failed: Failed (provider error code 9)"
    ]


async def test_a_receipt_with_no_known_status_is_parked_and_holds_back_nothing(
    kit: BotDriver,
) -> None:
    kit.sandbox.webhook_url = None
    await kit.start("parcel")
    [message] = await outbound(kit)

    def receipt(event_id: str, status: object) -> InboxEntry:
        payload = {"client_reference": message.id, "status": status, "error_code": None}
        return InboxEntry("divergent", event_id, EventKind.RECEIPT, payload)

    # Only a direct inbox write can hold such a status; the parsers map every provider status.
    await kit.bot.inbox.accept_many([receipt("evt_bad", "?"), receipt("evt_ok", "delivered")])
    assert await apply_receipts(kit.bot.db, kit.clock, Metrics()) == 2
    [delivered] = await outbound(kit)
    assert delivered.status == DeliveryStatus.DELIVERED
    async with kit.bot.db.session() as s:
        rows = await s.execute(
            select(events_t.c.event_id, events_t.c.state, events_t.c.last_error)
            .where(events_t.c.kind == "receipt")
            .order_by(events_t.c.id)
        )
        assert [tuple(r) for r in rows] == [
            ("evt_bad", EventState.FAILED, "no known delivery status"),
            ("evt_ok", EventState.DONE, None),
        ]
