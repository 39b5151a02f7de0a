"""The operator API through the real app, and opt-out enforced end to end."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from smsbot.app.server.app import create_app
from smsbot.channels.sandbox import Sandbox
from smsbot.clock import VirtualClock
from smsbot.engine.runtime import FlowRuntime
from smsbot.sms.status import DeliveryStatus
from smsbot.store.models import messages_t
from tests.support import PHONE, VN, Harness, inbound_body, make_bot

REPO = Path(__file__).resolve().parents[1]
T0 = dt.datetime(2026, 1, 15, 9, 0, tzinfo=dt.UTC)
TOKEN = "operator-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
APPOINTMENT = {"name": "Sam", "starts_at": "2026-01-20T10:30:00+00:00", "location": "Riverside"}


@dataclasses.dataclass
class Api(Harness):
    """A Harness running the example flows, with helpers for the operator API."""

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        headers = {**AUTH, **kwargs.pop("headers", {})}
        resp = await self.client.request(method, path, headers=headers, **kwargs)
        return resp.status, await resp.json()

    async def sent_to(self, phone: str = PHONE) -> list[str]:
        await self.bot.run_until_idle()
        return [m.content for m in self.sandbox.messages if m.recipient == phone]


@pytest.fixture
async def api(db_url: str, sandbox: Sandbox, aiohttp_client: Any) -> Api:
    clock = VirtualClock(T0)
    env = {
        "SMSBOT_API_KEY": TOKEN,
        "SMSBOT_DEFAULT_SENDER": VN,
        "SMSBOT_FLOWS_DIR": str(REPO / "flows"),
        "SMSBOT_TEMPLATES_DIR": str(REPO / "templates"),
    }
    from tests.support import settings_for

    assert sandbox.url is not None
    runtime = FlowRuntime.from_settings(settings_for(db_url, sandbox.url, **env))
    bot = await make_bot(db_url, sandbox, runtime, clock, **env)
    client = await aiohttp_client(create_app(bot, run_workers=False))
    return Api(bot, client, sandbox, clock)


async def test_every_route_needs_the_bearer_token(api: Api) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}):
        resp = await api.client.post("/api/messages", json={}, headers=headers)
        assert resp.status == 401
        assert "SMSBOT_API_KEY" in (await resp.json())["error"]
    resp = await api.client.get("/api/conversations?phone=07700900123")
    assert resp.status == 401
    openapi = await (await api.client.get("/api/openapi.json")).json()
    assert "/api/flows/{name}/start" in openapi["paths"]


async def test_start_a_flow_and_read_the_conversation(api: Api) -> None:
    status, body = await api.call(
        "POST", "/api/flows/appointment/start", json={"to": "07700 900123", "data": APPOINTMENT}
    )
    assert (status, body["status"], body["to"], body["from"]) == (202, "queued", PHONE, VN)
    [ask] = await api.sent_to()
    assert "Sam" in ask and "Riverside" in ask
    status, body = await api.call("GET", "/api/conversations?phone=%2B447700900123")
    assert status == 200
    [convo] = body["conversations"]
    assert (convo["flow"], convo["state"], convo["active"]) == ("appointment", "waiting", True)
    assert convo["data"]["name"] == "Sam"
    assert [(m["direction"], m["status"]) for m in convo["messages"]] == [("out", "accepted")]


@pytest.mark.parametrize(
    ("path", "payload", "status", "field"),
    [
        ("/api/flows/appointment/start", {"to": "garbage", "data": APPOINTMENT}, 400, None),
        ("/api/flows/appointment/start", {"to": PHONE, "data": []}, 400, "data"),
        (
            "/api/flows/appointment/start",
            {"to": PHONE, "data": {"name": "Sam"}},
            400,
            "data.starts_at",
        ),
        ("/api/flows/appointment/start", {"data": APPOINTMENT}, 400, "to"),
        ("/api/flows/appointment/start", {"to": PHONE, "policy": "x"}, 400, "policy"),
        ("/api/flows/nope/start", {"to": PHONE}, 404, None),
        ("/api/messages", {"to": PHONE}, 400, "text"),
        (
            "/api/messages",
            {"to": PHONE, "text": "a", "template": "keywords/hours.txt"},
            400,
            "text",
        ),
        ("/api/messages", {"to": PHONE, "template": "no/such.txt"}, 400, "template"),
        ("/api/messages", {"to": PHONE, "text": 5}, 400, "text"),
    ],
)
async def test_bad_input_is_a_400_naming_the_field_and_queues_nothing(
    api: Api, path: str, payload: dict[str, Any], status: int, field: str | None
) -> None:
    code, body = await api.call("POST", path, json=payload)
    assert code == status, body
    assert body["error"]
    if field:
        assert body["field"] == field
    assert await api.event_count() == 0


async def test_a_body_that_is_not_json_is_a_400(api: Api) -> None:
    code, body = await api.call("POST", "/api/messages", data=b"{nope")
    assert code == 400
    assert body["field"] == "body"


async def test_send_text_and_template(api: Api) -> None:
    code, _ = await api.call("POST", "/api/messages", json={"to": PHONE, "text": "Hello there"})
    assert code == 202
    code, _ = await api.call(
        "POST", "/api/messages", json={"to": PHONE, "template": "keywords/hours.txt"}
    )
    assert code == 202
    sent = await api.sent_to()
    assert sent[0] == "Hello there"
    assert len(sent) == 2 and sent[1]


async def test_idempotency_key_makes_a_retried_request_a_no_op(api: Api) -> None:
    for _ in range(2):
        code, _ = await api.call(
            "POST",
            "/api/messages",
            json={"to": PHONE, "text": "once"},
            headers={"Idempotency-Key": "k-1"},
        )
        assert code == 202
    assert await api.sent_to() == ["once"]


async def test_after_stop_nothing_but_the_confirmation_reaches_the_phone(api: Api) -> None:
    # A flow start queues its question; STOP arrives before the sender has sent it.
    await api.call("POST", "/api/flows/appointment/start", json={"to": PHONE, "data": APPOINTMENT})
    await api.bot.dispatcher.run_until_idle()  # the question is queued, not yet sent
    assert (await api.post(inbound_body("evt_stop", " Stop! "))).status == 200
    await api.bot.dispatcher.run_until_idle()
    sent = await api.sent_to()
    assert len(sent) == 1 and "START" in sent[0]  # only the confirmation
    async with api.bot.db.session() as s:
        statuses = (
            (await s.execute(select(messages_t.c.status).where(messages_t.c.direction == "out")))
            .scalars()
            .all()
        )
    assert DeliveryStatus.SUPPRESSED in statuses

    code, body = await api.call("POST", "/api/messages", json={"to": PHONE, "text": "hi"})
    assert code == 409 and "opted out" in body["error"]
    code, _ = await api.call(
        "POST", "/api/flows/appointment/start", json={"to": PHONE, "data": APPOINTMENT}
    )
    assert code == 409
    await api.post(inbound_body("evt_after", "HOURS"))  # a keyword: no answer after STOP
    assert len(await api.sent_to()) == 1

    await api.post(inbound_body("evt_start", "START"))
    sent = await api.sent_to()
    assert len(sent) == 2  # the START confirmation
    code, _ = await api.call("POST", "/api/messages", json={"to": PHONE, "text": "welcome back"})
    assert code == 202
    assert (await api.sent_to())[-1] == "welcome back"


async def test_start_many_validates_every_row_first(api: Api) -> None:
    rows = [
        {"to": "+447700900001", "data": APPOINTMENT},
        {"to": "not a phone", "data": APPOINTMENT},
        {"to": "+447700900003", "data": {"name": "Kim"}},
        {"to": "+447700900004", "data": APPOINTMENT},
    ]
    code, body = await api.call("POST", "/api/flows/appointment/start-many", json=rows)
    assert code == 400
    assert [(e["line"], e["field"]) for e in body["invalid"]] == [(2, "to"), (3, "data.starts_at")]
    assert await api.event_count() == 0  # a bad file starts nothing
    code, body = await api.call(
        "POST", "/api/flows/appointment/start-many?skip_invalid=true", json=rows
    )
    assert code == 202
    assert body["started"] == 2 and len(body["invalid"]) == 2
    await api.bot.run_until_idle()
    assert {m.recipient for m in api.sandbox.messages} == {"+447700900001", "+447700900004"}


async def test_start_many_from_csv_skips_and_counts_opted_out_phones(api: Api) -> None:
    await api.post(inbound_body("evt_s", "STOP", sender="+447700900002"))
    await api.bot.run_until_idle()
    csv = (
        "to,name,starts_at,location\n"
        "+447700900001,Ann,2026-01-20T10:30:00+00:00,Riverside\n"
        "+447700900002,Bob,2026-01-20T11:30:00+00:00,Riverside\n"
    )
    code, body = await api.call(
        "POST", "/api/flows/appointment/start-many", data=csv, headers={"Content-Type": "text/csv"}
    )
    assert code == 202
    assert (body["started"], body["skipped_opted_out"]) == (1, 1)
    await api.bot.run_until_idle()
    assert [m.recipient for m in api.sandbox.messages if "Ann" in m.content] == ["+447700900001"]
    assert not [m for m in api.sandbox.messages if "Bob" in m.content]
