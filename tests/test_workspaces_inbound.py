"""Workspaces, inbound: each client's webhooks, flows, rows, opt-outs and receipts stay its own.

Two workspaces, `a` and `b`, each with its own webhook secret, Divergent workspaceId, number and
flows, in one bot behind its real aiohttp app and a real sandbox on loopback; the webhooks are
signed as each client's provider account would sign them. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import exists, func, select

from smsbot.app.server.app import create_app
from smsbot.channels.sandbox import Sandbox
from smsbot.clock import VirtualClock
from smsbot.config import Settings
from smsbot.engine.contract import EchoHandler
from smsbot.engine.conversation import Conversation
from smsbot.engine.flow import Flow, Message, State
from smsbot.engine.runtime import FlowRuntime
from smsbot.pipeline.bot import Bot
from smsbot.sms.status import DeliveryStatus
from smsbot.sms.templates import SmsTemplates
from smsbot.store.engine import Database
from smsbot.store.models import (
    Direction,
    EventState,
    OutboxState,
    contacts_t,
    conversations_t,
    events_t,
    messages_t,
    opt_out_applies,
    opt_out_blocks,
    opt_outs_t,
    state_changes_t,
    timers_t,
)
from tests.support import (
    PHONE,
    Harness,
    inbound_body,
    make_bot,
    sandbox_clients,
    settings_for,
    signed,
)

T0 = dt.datetime(2026, 1, 15, 14, 0, tzinfo=dt.UTC)
REPO = Path(__file__).resolve().parents[1]
A_VN, B_VN, UNOWNED_VN = "+447700900101", "+447700900202", "+447700900303"
A_SECRET, B_SECRET = "whsec_client_a", "whsec_client_b"
C_TOKEN, DEFAULT_TOKEN = "receipts-a-0123456789", "receipts-default-0123456789"


class Alpha(Flow):
    """Client A's flow: asks a question and waits for YES."""

    name = "alpha"
    triggers = ("HELLO",)
    asked = State(initial=True, timeout=dt.timedelta(hours=1))
    done = State(final=True)

    async def start(self, convo: Conversation) -> State | None:
        await convo.say("Alpha here: reply YES")
        return None

    @asked.on("YES")
    async def yes(self, convo: Conversation, msg: Message) -> State | None:
        await convo.say("Alpha: done")
        return self.done


class Beta(Flow):
    """Client B's flow: the same shape, its own words."""

    name = "beta"
    triggers = ("HOWDY",)
    asked = State(initial=True, timeout=dt.timedelta(hours=1))
    done = State(final=True)

    async def start(self, convo: Conversation) -> State | None:
        await convo.say("Beta here: reply YES")
        return None

    @asked.on("YES")
    async def yes(self, convo: Conversation, msg: Message) -> State | None:
        await convo.say("Beta: done")
        return self.done


def workspace_tables(sandbox_url: str) -> dict[str, dict[str, Any]]:
    """Two clients on Divergent, each with its own secret, workspaceId, number and flows."""
    common = {"provider": "divergent", "url": sandbox_url}
    return {
        "a": {
            **common,
            "api_key": "api-key-client-a-0123",
            "webhook_secret": A_SECRET,
            "workspace_id": "ws_a",
            "numbers": [A_VN],
            "flows": ["alpha"],
            "catch_all": "alpha",
            "compliance": {"help_text": "Client A: reply STOP to opt out."},
        },
        "b": {
            **common,
            "api_key": "api-key-client-b-0123",
            "webhook_secret": B_SECRET,
            "workspace_id": "ws_b",
            "numbers": [B_VN],
            "sender_ids": ["ClinicB"],
            "flows": ["beta"],
            "catch_all": "beta",
            "compliance": {"help_text": "Client B: reply STOP to opt out."},
        },
        "c": {
            "provider": "puresms",
            "api_key": "api-key-client-c-0123",
            "receipts_token": C_TOKEN,
            "numbers": ["+447700900404"],
        },
    }


@dataclasses.dataclass
class Rig:
    bot: Bot
    client: TestClient[Any, Any]
    sandbox: Sandbox
    clock: VirtualClock

    async def post(
        self, body: bytes, secret: str, path: str = "/webhooks/divergent"
    ) -> tuple[int, Any]:
        resp = await self.client.post(path, data=body, headers=signed(body, self.clock, secret))
        return resp.status, await resp.json()

    async def rows(self, query: Any) -> list[Any]:
        async with self.bot.db.session() as s:
            return list((await s.execute(query)).all())


def envelope(event_type: int, data: dict[str, Any], workspace_id: str | None) -> bytes:
    body = {
        "id": f"evt_{uuid.uuid4().hex}",
        "timestamp": "2026-01-15T14:00:00Z",
        "eventType": event_type,
        "data": data,
        **({"workspaceId": workspace_id} if workspace_id else {}),
    }
    return json.dumps(body, separators=(",", ":")).encode()


def inbound(to: str, text: str, workspace_id: str | None, sender: str = PHONE) -> bytes:
    return envelope(
        2,
        {"messageId": f"inb_{uuid.uuid4().hex[:8]}", "inboundNumber": to, "sender": sender,
         "body": text, "receivedAt": "2026-01-15T14:00:00Z"},
        workspace_id,
    )  # fmt: skip


def receipt(reference: str, workspace_id: str | None) -> bytes:
    return envelope(
        1,
        {"messageId": f"m_{uuid.uuid4().hex[:8]}", "clientReference": reference,
         "deliveryStatus": "Delivered", "processedAt": "2026-01-15T14:00:00Z"},
        workspace_id,
    )  # fmt: skip


def two_client_settings(db_url: str, sandbox_url: str) -> Settings:
    base = settings_for(db_url, sandbox_url, SMSBOT_PURESMS_WEBHOOK_TOKEN=DEFAULT_TOKEN)
    return base.replace(workspace_tables=workspace_tables(sandbox_url))


@pytest.fixture
async def rig(db_url: str, sandbox: Sandbox, aiohttp_client: Any) -> AsyncIterator[Rig]:
    assert sandbox.url is not None
    settings = two_client_settings(db_url, sandbox.url)
    runtime = FlowRuntime(settings, SmsTemplates(REPO / "templates"), [Alpha, Beta])
    db = Database(db_url)
    await db.create_all()
    # every workspace's account is the one sandbox here (test_workspaces_outbound has two)
    providers = sandbox_clients(settings, sandbox.url)
    clock = VirtualClock(T0)
    bot = Bot(
        settings, providers=providers, handler=runtime, clock=clock, db=db, poll_interval=0.01
    )
    client = await aiohttp_client(create_app(bot, run_workers=False))
    yield Rig(bot, client, sandbox, clock)


def sent(rig: Rig, sender: str) -> list[str]:
    return [m.content for m in rig.sandbox.messages if m.sender == sender]


async def test_each_clients_inbound_reaches_only_its_flows_and_rows_are_tagged(rig: Rig) -> None:
    # The same phone texts the same word to both clients: each number runs its own flows.
    assert await rig.post(inbound(A_VN, "HELLO", "ws_a"), A_SECRET) == (200, {"status": "new"})
    assert await rig.post(inbound(B_VN, "HELLO", "ws_b"), B_SECRET) == (200, {"status": "new"})
    await rig.bot.run_until_idle()
    assert sent(rig, A_VN) == ["Alpha here: reply YES"]
    assert sent(rig, B_VN) == ["Beta here: reply YES"]  # Beta is B's catch-all: HELLO is A's

    # Found by number when the envelope's workspaceId is not one smsbot knows.
    assert (await rig.post(inbound(A_VN, "YES", "ws_unknown"), A_SECRET))[0] == 200
    await rig.bot.run_until_idle()
    assert sent(rig, A_VN) == ["Alpha here: reply YES", "Alpha: done"]

    by_number = {A_VN: "a", B_VN: "b"}
    for table in (conversations_t, messages_t, events_t, opt_outs_t):
        for vn, workspace in await rig.rows(select(table.c.virtual_number, table.c.workspace)):
            assert workspace == by_number[vn], (table.name, vn, workspace)
    changes = await rig.rows(
        select(conversations_t.c.virtual_number, state_changes_t.c.workspace).join(
            conversations_t, conversations_t.c.id == state_changes_t.c.conversation_id
        )
    )
    assert changes and all(ws == by_number[vn] for vn, ws in changes)
    timers = await rig.rows(
        select(conversations_t.c.virtual_number, timers_t.c.workspace).join(
            conversations_t, conversations_t.c.id == timers_t.c.conversation_id
        )
    )
    assert set(timers) == {(A_VN, "a"), (B_VN, "b")}  # a wait timeout and an expiry each
    # One person, two clients: a contact in each workspace.
    contacts = await rig.rows(select(contacts_t.c.workspace, contacts_t.c.phone))
    assert sorted(contacts) == [("a", PHONE), ("b", PHONE)]
    assert (
        rig.bot.metrics.value(
            "smsbot_webhooks_total", source="divergent", result="new", workspace="a"
        )
        == 2
    )
    assert (
        rig.bot.metrics.value(
            "smsbot_events_processed_total", kind="inbound", result="ok", workspace="b"
        )
        == 1
    )


async def test_a_webhook_signed_with_another_workspaces_secret_is_refused(rig: Rig) -> None:
    for body in (
        inbound(A_VN, "HELLO", None),  # A's number, found by number
        inbound(A_VN, "HELLO", "ws_a"),  # A's workspaceId
        receipt("m1", "ws_a"),
    ):
        status, problem = await rig.post(body, B_SECRET)
        assert status == 401
        assert "another workspace's" in problem["error"]
    # Nobody's secret at all: refused before anything is read, as before workspaces.
    assert (await rig.post(inbound(A_VN, "HELLO", "ws_a"), "not-a-secret"))[0] == 401
    assert await rig.rows(select(events_t.c.id)) == []
    await rig.bot.run_until_idle()
    assert rig.sandbox.messages == []
    assert (
        rig.bot.metrics.value("smsbot_webhooks_total", source="divergent", result="unauthorized")
        == 4
    )


async def test_an_sms_for_a_number_no_workspace_owns_is_kept_but_never_runs(rig: Rig) -> None:
    for body, secret in (
        (inbound(UNOWNED_VN, "HELLO", "ws_a"), A_SECRET),  # A's account, a number A lacks
        (inbound(UNOWNED_VN, "HELLO", None), B_SECRET),  # no workspaceId at all
        (inbound(A_VN, "HELLO", "ws_b"), B_SECRET),  # B's account reports A's number
    ):
        assert await rig.post(body, secret) == (200, {"status": "unowned"})
    await rig.bot.run_until_idle()
    events = await rig.rows(select(events_t.c.state, events_t.c.workspace, events_t.c.phone))
    assert events == [(EventState.UNMATCHED.value, None, PHONE)] * 3
    assert await rig.rows(select(conversations_t.c.id)) == []
    assert await rig.rows(select(messages_t.c.id)) == []
    assert rig.sandbox.messages == []
    assert rig.bot.metrics.value("smsbot_webhooks_total", source="divergent", result="unowned") == 3
    assert 'smsbot_webhooks_total{result="unowned",source="divergent"} 3' in (
        await (await rig.client.get("/metrics")).text()
    )
    # A redelivery is a duplicate like any other.
    again = inbound(UNOWNED_VN, "HELLO", "ws_a")
    assert await rig.post(again, A_SECRET) == (200, {"status": "unowned"})
    assert await rig.post(again, A_SECRET) == (200, {"status": "duplicate"})


async def test_stop_to_one_client_does_not_silence_another(rig: Rig) -> None:
    assert (await rig.post(inbound(A_VN, "STOP", "ws_a"), A_SECRET))[0] == 200
    await rig.bot.run_until_idle()
    assert (await rig.post(inbound(B_VN, "HOWDY", "ws_b"), B_SECRET))[0] == 200
    assert (await rig.post(inbound(A_VN, "HELLO", "ws_a"), A_SECRET))[0] == 200
    await rig.bot.run_until_idle()
    assert sent(rig, B_VN) == ["Beta here: reply YES"]
    assert len(sent(rig, A_VN)) == 1  # only the STOP's confirmation
    opted = await rig.rows(select(opt_outs_t.c.workspace, opt_outs_t.c.virtual_number))
    assert opted == [("a", A_VN)]
    help_b = inbound(B_VN, "HELP", "ws_b")
    assert (await rig.post(help_b, B_SECRET))[0] == 200
    await rig.bot.run_until_idle()
    assert sent(rig, B_VN)[-1] == "Client B: reply STOP to opt out."  # B's own HELP text


async def test_a_sender_id_is_stopped_only_by_opt_outs_in_its_own_workspace(db: Database) -> None:
    async with db.session() as s, s.begin():
        await s.execute(
            opt_outs_t.insert().values(
                workspace="a", virtual_number=A_VN, phone=PHONE, keyword="STOP", created_at=T0
            )
        )
        for workspace, sender in (("a", "ClinicA"), ("b", "ClinicB"), ("b", A_VN)):
            await s.execute(
                messages_t.insert().values(
                    id=f"{workspace}-{sender}",
                    direction=Direction.OUTBOUND.value,
                    workspace=workspace,
                    virtual_number=sender,
                    phone=PHONE,
                    body="hi",
                    created_at=T0,
                )
            )
    m = messages_t
    blocked = exists().where(opt_out_blocks(m.c.virtual_number, m.c.phone, m.c.workspace))
    async with db.session() as s:
        stopped = set((await s.execute(select(m.c.id).where(blocked))).scalars())
        anywhere = exists().where(opt_out_blocks(m.c.virtual_number, m.c.phone))
        legacy = set((await s.execute(select(m.c.id).where(anywhere))).scalars())
        by_name = exists().where(opt_out_blocks("ClinicB", PHONE, "b"))
        assert not (await s.execute(select(by_name))).scalar_one()
    # A's sender ID: stopped by A's STOP. B's sender ID: not. A's number: stopped, whoever
    # sends from it now (a STOP to a number always holds).
    assert stopped == {"a-ClinicA", f"b-{A_VN}"}
    assert legacy == {"a-ClinicA", "b-ClinicB", f"b-{A_VN}"}  # no workspace: any number's
    assert opt_out_applies(A_VN, "ClinicA", "a", "a")
    assert not opt_out_applies(A_VN, "ClinicB", "a", "b")
    assert opt_out_applies(A_VN, "ClinicB")  # callers that name no workspace: as before
    assert opt_out_applies(A_VN, A_VN, "default", "a")


async def outbound_row(rig: Rig, workspace: str, vn: str) -> str:
    message_id = f"out-{workspace}-{uuid.uuid4().hex[:8]}"
    async with rig.bot.db.session() as s, s.begin():
        await s.execute(
            messages_t.insert().values(
                id=message_id,
                direction=Direction.OUTBOUND.value,
                workspace=workspace,
                virtual_number=vn,
                phone=PHONE,
                body="hi",
                status=DeliveryStatus.ACCEPTED.value,
                outbox=OutboxState.DONE.value,
                created_at=T0,
            )
        )
    return message_id


async def statuses(rig: Rig) -> dict[str, str]:
    return {i: st for i, st in await rig.rows(select(messages_t.c.id, messages_t.c.status))}


async def test_a_receipt_moves_only_a_message_of_its_own_workspace(rig: Rig) -> None:
    of_a, of_b = await outbound_row(rig, "a", A_VN), await outbound_row(rig, "b", B_VN)
    # B's account reports on A's message: kept for reconciliation, A's message untouched.
    assert (await rig.post(receipt(of_a, "ws_b"), B_SECRET))[0] == 200
    # No workspaceId: the only workspace whose secret signed it (B) is the receipt's.
    assert (await rig.post(receipt(of_a, None), B_SECRET))[0] == 200
    await rig.bot.run_until_idle()
    assert (await statuses(rig))[of_a] == DeliveryStatus.ACCEPTED.value
    assert (await rig.post(receipt(of_a, "ws_a"), A_SECRET))[0] == 200
    assert (await rig.post(receipt(of_b, None), B_SECRET))[0] == 200
    await rig.bot.run_until_idle()
    assert await statuses(rig) == {of_a: "delivered", of_b: "delivered"}
    events = await rig.rows(select(events_t.c.workspace, events_t.c.state).order_by(events_t.c.id))
    assert events == [("b", "unmatched"), ("b", "unmatched"), ("a", "done"), ("b", "done")]
    assert rig.bot.metrics.value("smsbot_receipts_total", result="unmatched", workspace="b") == 2


def puresms_batch(reference: str) -> bytes:
    return json.dumps(
        [{"reference": "R1", "clientReference": reference, "deliveryStatus": 2}]
    ).encode()


async def test_each_puresms_workspace_has_its_own_receipts_url(rig: Rig) -> None:
    of_c = await outbound_row(rig, "c", "+447700900404")
    of_default = await outbound_row(rig, "default", "+447700900100")
    post = rig.client.post
    assert (await post("/webhooks/puresms/wrong-token-0123456789", data=b"[]")).status == 401
    # The default workspace's URL (SMSBOT_PURESMS_WEBHOOK_TOKEN): c's message is not its own.
    default_url, c_url = f"/webhooks/puresms/{DEFAULT_TOKEN}", f"/webhooks/puresms/{C_TOKEN}"
    assert (await post(default_url, data=puresms_batch(of_c))).status == 200
    await rig.bot.run_until_idle()
    assert (await statuses(rig))[of_c] == DeliveryStatus.ACCEPTED.value
    # c's own URL: the same receipt applies.
    assert (await post(c_url, data=puresms_batch(of_c))).status == 200
    assert (await post(default_url, data=puresms_batch(of_default))).status == 200
    await rig.bot.run_until_idle()
    assert await statuses(rig) == {of_c: "delivered", of_default: "delivered"}
    events = await rig.rows(select(events_t.c.workspace, events_t.c.state).order_by(events_t.c.id))
    assert events == [("default", "unmatched"), ("c", "done"), ("default", "done")]


async def test_the_sandbox_can_play_two_clients_accounts(rig: Rig) -> None:
    """Two sandboxes with their own workspaceId and secret text the bot as A's and B's accounts."""
    url = str(rig.client.make_url("/webhooks/divergent"))
    async with (
        Sandbox(
            webhook_url=url, webhook_secret=A_SECRET, workspace_id="ws_a", clock=rig.clock
        ) as a,
        Sandbox(
            webhook_url=url, webhook_secret=B_SECRET, workspace_id="ws_b", clock=rig.clock
        ) as b,
    ):
        assert await a.text_bot(PHONE, A_VN, "HELLO") == 200
        assert await b.text_bot(PHONE, B_VN, "HELLO") == 200
        assert await b.text_bot(PHONE, A_VN, "HELLO") == 200  # B's account, A's number: unowned
        wrong = Sandbox(webhook_url=url, webhook_secret=B_SECRET, workspace_id="ws_a")
        async with wrong:
            assert await wrong.text_bot(PHONE, A_VN, "HELLO") == 401
    await rig.bot.run_until_idle()
    assert sent(rig, A_VN) == ["Alpha here: reply YES"]
    assert sent(rig, B_VN) == ["Beta here: reply YES"]
    async with rig.bot.db.session() as s:
        counted = select(events_t.c.workspace, func.count()).group_by(events_t.c.workspace)
        assert dict((await s.execute(counted)).tuples().all()) == {"a": 1, "b": 1, None: 1}


async def test_a_single_account_config_is_the_default_workspace(
    db_url: str, sandbox: Sandbox, aiohttp_client: Any
) -> None:
    """No [workspaces] table: every number is the default workspace's, as before."""
    clock = VirtualClock(T0)
    bot = await make_bot(db_url, sandbox, EchoHandler(), clock)
    client = await aiohttp_client(create_app(bot, run_workers=False))
    h = Harness(bot, client, sandbox, clock)
    assert (await h.post(inbound_body("evt_one", "hi", to=UNOWNED_VN))).status == 200
    assert (await h.post(inbound_body("evt_two", "hi"))).status == 200
    await bot.run_until_idle()
    assert len(sandbox.messages) == 2
    for table in (messages_t, conversations_t, events_t, contacts_t):
        async with bot.db.session() as s:
            found = set((await s.execute(select(table.c.workspace))).scalars())
        assert found == {"default"}, table.name
