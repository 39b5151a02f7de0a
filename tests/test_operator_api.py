"""The operator API through the real app, and opt-out enforced end to end."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from smsbot.app.cli import main
from smsbot.app.operations import OperatorError, send_now
from smsbot.app.server.app import create_app
from smsbot.channels.sandbox import Sandbox
from smsbot.clock import VirtualClock
from smsbot.engine.runtime import FlowRuntime
from smsbot.sms.status import DeliveryStatus
from smsbot.store.models import events_t, messages_t
from tests.support import EXAMPLE_FLOWS, PHONE, VN, Harness, inbound_body, make_bot, settings_for

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


async def _api(db_url: str, sandbox: Sandbox, aiohttp_client: Any, **extra: str) -> Api:
    clock = VirtualClock(T0)
    env = {**EXAMPLE_FLOWS, "SMSBOT_API_KEY": TOKEN, "SMSBOT_DEFAULT_SENDER": VN, **extra}
    assert sandbox.url is not None
    runtime = FlowRuntime.from_settings(settings_for(db_url, sandbox.url, **env))
    bot = await make_bot(db_url, sandbox, runtime, clock, **env)
    client = await aiohttp_client(create_app(bot, run_workers=False))
    return Api(bot, client, sandbox, clock)


@pytest.fixture
async def api(db_url: str, sandbox: Sandbox, aiohttp_client: Any) -> Api:
    return await _api(db_url, sandbox, aiohttp_client)


async def test_every_route_needs_the_bearer_token(api: Api) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}):
        resp = await api.client.post("/api/messages", json={}, headers=headers)
        assert resp.status == 401
        assert "SMSBOT_API_KEY" in (await resp.json())["error"]
    resp = await api.client.get("/api/conversations?phone=07700900123")
    assert resp.status == 401
    openapi = await (await api.client.get("/api/openapi.json")).json()
    assert "/api/flows/appointment/start" in openapi["paths"]


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
    assert (convo["end_reason"], convo["end_state"]) == (None, None)
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
    _, body = await api.call("GET", "/api/conversations?phone=%2B447700900123")
    [convo] = body["conversations"]
    assert (convo["active"], convo["end_reason"], convo["end_state"]) == (
        False,
        "opted out",
        "waiting",  # where it was: the outcome stays readable after the end
    )

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


async def test_start_many_policy_is_checked_and_honoured(api: Api) -> None:
    path = "/api/flows/appointment/start-many"
    rows = [{"to": PHONE, "data": APPOINTMENT, "policy": "AAA"}]
    code, body = await api.call("POST", path, json=rows)
    assert code == 400
    assert [(e["line"], e["field"]) for e in body["invalid"]] == [(1, "policy")]
    code, body = await api.call("POST", f"{path}?policy=AAA", json=rows[:0])
    assert (code, body["field"]) == (400, "policy")
    code, body = await api.call("POST", f"{path}?skip_invalid=maybe", json=rows[:0])
    assert (code, body["field"]) == (400, "skip_invalid")
    assert await api.event_count() == 0
    code, body = await api.call(
        "POST", f"{path}?policy=reject", json=[{"to": PHONE, "data": APPOINTMENT}]
    )
    assert (code, body["started"]) == (202, 1)
    async with api.bot.db.session() as s:
        [payload] = (await s.execute(select(events_t.c.payload))).scalars().all()
    assert payload["policy"] == "reject"


@pytest.mark.parametrize(
    ("path", "payload", "field"),
    [
        ("/api/messages", {"to": "", "text": "hi"}, "to"),
        ("/api/messages", {"to": PHONE, "text": "hi", "txt": "typo"}, "txt"),
        ("/api/messages", {"to": PHONE, "text": "   "}, "text"),
        ("/api/messages", {"to": PHONE, "text": "hi", "from": ""}, "from"),
        ("/api/messages", {"to": PHONE, "text": "hi", "from": None}, "from"),
        ("/api/flows/appointment/start", {"to": "", "data": APPOINTMENT}, "to"),
        ("/api/flows/appointment/start", {"to": PHONE, "data": APPOINTMENT, "x": 1}, "x"),
    ],
)
async def test_what_the_schema_refuses_the_server_refuses(
    api: Api, path: str, payload: dict[str, Any], field: str
) -> None:
    code, body = await api.call("POST", path, json=payload)
    assert (code, body.get("field")) == (400, field), body
    assert await api.event_count() == 0


async def test_the_openapi_document_says_what_the_server_checks(api: Api) -> None:
    doc = await (await api.client.get("/api/openapi.json")).json()
    message = doc["paths"]["/api/messages"]["post"]["requestBody"]["content"]["application/json"]
    schema = message["schema"]
    assert schema["properties"]["to"]["minLength"] == 1
    assert schema["additionalProperties"] is False
    assert schema["oneOf"] == [{"required": ["text"]}, {"required": ["template"]}]
    many = doc["paths"]["/api/flows/appointment/start-many"]["post"]
    params = {p["name"]: p["schema"] for p in many["parameters"]}
    assert params["policy"]["enum"] == ["interrupt", "reject"]
    start = doc["paths"]["/api/flows/appointment/start"]["post"]["requestBody"]["content"]
    assert start["application/json"]["schema"]["properties"]["data"]["type"] == "object"


# --- the sender: one of ours, and an alphanumeric one respects every opt-out ------------------

CLINIC = "CLINIC"
OTHER = "+447700900456"


@pytest.fixture
async def clinic(db_url: str, sandbox: Sandbox, aiohttp_client: Any) -> Api:
    """The deployment sends from CLINIC by default and receives on VN (its [numbers] table)."""
    harness = await _api(db_url, sandbox, aiohttp_client, SMSBOT_DEFAULT_SENDER=CLINIC)
    harness.bot.settings = harness.bot.settings.replace(numbers={VN: {}})
    return harness


async def test_from_must_be_one_of_the_deployments_senders(api: Api) -> None:
    for payload in (
        {"to": PHONE, "from": "+447700900999", "text": "hi"},
        {"to": PHONE, "from": "CLINIC", "text": "hi"},
    ):
        code, body = await api.call("POST", "/api/messages", json=payload)
        assert (code, body["field"]) == (400, "from"), body
        assert "not one of this deployment's senders (+447700900100)" in body["error"]
    code, body = await api.call(
        "POST", "/api/flows/appointment/start-many", json=[{"to": PHONE, "from": "NOTOURS"}]
    )
    assert code == 400 and body["invalid"][0]["field"] == "from"
    assert await api.event_count() == 0


async def test_an_alphanumeric_sender_respects_an_opt_out_from_our_number(clinic: Api) -> None:
    assert (await clinic.post(inbound_body("evt_stop", "STOP"))).status == 200
    await clinic.bot.run_until_idle()
    for path, payload in (
        ("/api/messages", {"to": PHONE, "text": "hi"}),
        ("/api/messages", {"to": PHONE, "from": CLINIC, "text": "hi"}),
        ("/api/flows/appointment/start", {"to": PHONE, "data": APPOINTMENT}),
    ):
        code, body = await clinic.call("POST", path, json=payload)
        assert code == 409, body
        assert "alphanumeric" in body["error"]
    code, body = await clinic.call(
        "POST",
        "/api/flows/appointment/start-many",
        json=[{"to": PHONE, "data": APPOINTMENT}, {"to": OTHER, "data": APPOINTMENT}],
    )
    assert (code, body["started"], body["skipped_opted_out"]) == (202, 1, 1)
    await clinic.bot.run_until_idle()
    assert len(await clinic.sent_to(PHONE)) == 1  # the STOP confirmation, nothing from CLINIC

    await clinic.post(inbound_body("evt_start", "START"))
    await clinic.bot.run_until_idle()
    code, _ = await clinic.call("POST", "/api/messages", json={"to": PHONE, "text": "welcome"})
    assert code == 202
    assert (await clinic.sent_to(PHONE))[-1] == "welcome"


async def test_a_stop_after_queueing_stops_an_alphanumeric_message(clinic: Api) -> None:
    code, _ = await clinic.call("POST", "/api/messages", json={"to": OTHER, "text": "queued"})
    assert code == 202
    await clinic.bot.dispatcher.run_until_idle()  # queued in the outbox, not yet sent
    await clinic.post(inbound_body("evt_stop_other", "STOP", sender=OTHER))
    sent = await clinic.sent_to(OTHER)
    assert len(sent) == 1 and "START" in sent[0]  # only the confirmation, from VN
    async with clinic.bot.db.session() as s:
        status = await s.scalar(select(messages_t.c.status).where(messages_t.c.body == "queued"))
    assert status == DeliveryStatus.SUPPRESSED


async def test_smsbot_send_keeps_the_same_rules(clinic: Api) -> None:
    await clinic.post(inbound_body("evt_stop", "STOP"))
    await clinic.bot.run_until_idle()
    settings = clinic.bot.settings
    with pytest.raises(OperatorError, match="alphanumeric"):
        await send_now(settings, to=PHONE, text="hi", sender=CLINIC)
    with pytest.raises(OperatorError, match="not one of this deployment's senders"):
        await send_now(settings, to=OTHER, text="hi", sender="+447700900999")
    with pytest.raises(OperatorError, match="one SMS has at most 255"):
        await send_now(settings, to=OTHER, text="x" * 40_000, sender=CLINIC)
    assert "from CLINIC to +447700900456" in await send_now(
        settings, to=OTHER, text="It’s ready", sender=None
    )
    assert clinic.sandbox.messages[-1].content == "It's ready"  # smart quote replaced


def test_smsbot_start_refuses_a_from_that_is_not_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = tmp_path / "rows.csv"
    rows.write_text("to,name\n+447700900123,Sam\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SMSBOT_DEFAULT_SENDER", VN)
    assert main(["start", "appointment", "--csv", str(rows), "--from", "NOTOURS"]) == 2
    err = capsys.readouterr().err
    assert "NOTOURS is not one of this deployment's senders (+447700900100)" in err
    assert "Traceback" not in err


# --- operator text is checked like a template's output ------------------------------------


async def test_an_operator_text_over_255_segments_is_refused(api: Api) -> None:
    code, body = await api.call(
        "POST", "/api/messages", json={"to": PHONE, "text": "a" * 1_000_000}
    )
    assert (code, body["field"]) == (400, "text")
    assert "6536 segments; one SMS has at most 255" in body["error"]
    assert await api.event_count() == 0


async def test_operator_text_follows_the_segment_policy(
    db_url: str, sandbox: Sandbox, aiohttp_client: Any
) -> None:
    seven = "b" * 1000  # 7 segments of 153
    strict = await _api(db_url, sandbox, aiohttp_client, SMSBOT_SEGMENT_POLICY="fail")
    code, body = await strict.call("POST", "/api/messages", json={"to": PHONE, "text": seven})
    assert (code, body["field"]) == (400, "text")
    assert "7 segments, over the limit of 6" in body["error"]
    assert "SMSBOT_MAX_SEGMENTS" in body["error"]
    assert await strict.event_count() == 0


async def test_operator_text_is_sent_as_checked(api: Api) -> None:
    seven = "b" * 1000
    code, body = await api.call("POST", "/api/messages", json={"to": PHONE, "text": seven})
    assert (code, body["segments"]) == (202, 7)
    assert "SMSBOT_MAX_SEGMENTS" in body["warning"]  # the default policy warns and sends
    text = "It’s “fine” — really…"
    code, body = await api.call("POST", "/api/messages", json={"to": PHONE, "text": text})
    assert (code, body["encoding"]) == (202, "GSM-7")
    assert (await api.sent_to())[-1] == 'It\'s "fine" - really...'
