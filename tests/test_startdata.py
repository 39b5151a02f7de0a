"""Start data: one declaration checks the operator API, CSV starts and the OpenAPI schema.

The hostile values are the ones a probe got past the appointment example (issue 11, hole 6):
each was accepted with 202 and then failed the flow's step five times.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, NotRequired, TypedDict

import pytest

from smsbot import Flow, Future, Length, Range, StartDataError, State
from smsbot.app.bulk_cli import start_from_csv
from smsbot.app.operations import OperatorError
from smsbot.config import Settings
from smsbot.engine.startdata import parse_start_data, start_fields
from smsbot.engine.startschema import start_data_schema
from smsbot.testing.harness import make_runtime
from tests import test_operator_api as operator_api
from tests.support import PHONE, VN

REPO = Path(__file__).resolve().parents[1]
NOW = operator_api.T0  # 2026-01-15 09:00 UTC, the operator API fixture's clock
GOOD = {"name": "Sam", "starts_at": "2026-01-20T10:30:00+00:00", "location": "Riverside"}

HOSTILE = [
    pytest.param({"remind_before_minutes": "abc"}, "data.remind_before_minutes", id="text"),
    pytest.param({"remind_before_minutes": 1e30}, "data.remind_before_minutes", id="1e30"),
    pytest.param({"remind_before_minutes": -5}, "data.remind_before_minutes", id="negative"),
    pytest.param({"remind_before_minutes": True}, "data.remind_before_minutes", id="bool"),
    pytest.param({"starts_at": "2026-01-14T10:30:00+00:00"}, "data.starts_at", id="past"),
    pytest.param({"starts_at": "9999-12-31T23:00:00-23:59"}, "data.starts_at", id="year-9999"),
    pytest.param({"starts_at": "2026-01-20 10:30"}, "data.starts_at", id="no-offset"),
    pytest.param({"starts_at": 1768905000}, "data.starts_at", id="a-number"),
    pytest.param({"name": "  "}, "data.name", id="blank-name"),
    pytest.param({"name": "S" * 41}, "data.name", id="long-name"),
    pytest.param({"locaton": "typo"}, "data.locaton", id="unknown-key"),
    pytest.param({"timezone": "Mars/Base"}, "data.timezone", id="bad-zone"),
    pytest.param({"timezone": "Europe/" + "x" * 300}, "data.timezone", id="zone-too-long"),
]


def appointment() -> type[Flow]:
    return make_runtime(flows_dir=REPO / "flows", templates=REPO / "templates").flows["appointment"]


# --- the declaration --------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "field"), HOSTILE)
def test_hostile_appointment_data_is_refused_naming_the_field(
    change: dict[str, Any], field: str
) -> None:
    with pytest.raises(StartDataError) as refused:
        appointment().parse_start_data({**GOOD, **change}, now=NOW)
    assert refused.value.field == field
    assert str(refused.value).startswith(field)


def test_good_data_comes_back_as_given() -> None:
    flow = appointment()
    data = {**GOOD, "remind_before_minutes": 90, "timezone": "Europe/Paris"}
    assert flow.parse_start_data(data, now=NOW) == data
    # JSON Schema counts 90.0 as an integer, so the server does too
    assert (
        flow.parse_start_data({**GOOD, "remind_before_minutes": 90.0}, now=NOW)[
            "remind_before_minutes"
        ]
        == 90
    )
    # without a clock (a START already queued) only the past check is left to the flow
    assert flow.parse_start_data({**GOOD, "starts_at": "2020-01-01T00:00:00Z"})


def test_the_messages_say_what_to_give() -> None:
    flow = appointment()
    cases = {
        "remind_before_minutes": (
            "abc",
            "data.remind_before_minutes must be a whole number from 0 to 40320, got 'abc'",
        ),
        "starts_at": ("2026-01-14T10:30:00+00:00", "has passed (now is 2026-01-15T09:00:00+00:00)"),
    }
    for key, (value, message) in cases.items():
        with pytest.raises(StartDataError, match=re.escape(message)):
            flow.parse_start_data({**GOOD, key: value}, now=NOW)
    with pytest.raises(StartDataError, match=r"data.starts_at is required: give a date and time"):
        flow.parse_start_data({"name": "Sam", "location": "Riverside"}, now=NOW)
    with pytest.raises(StartDataError, match=r"\(did you mean 'location'\?\)"):
        flow.parse_start_data({**GOOD, "locaton": "x"}, now=NOW)


def test_csv_text_is_read_as_the_declared_types() -> None:
    @dataclasses.dataclass
    class Row:
        count: int
        ratio: float
        vip: bool
        note: Annotated[str, Length(min=0)] = ""

    text = {"count": " 42 ", "ratio": "0.5", "vip": "yes", "note": ""}
    assert parse_start_data(Row, text, from_text=True) == {
        "count": 42,
        "ratio": 0.5,
        "vip": True,
        "note": "",
    }
    with pytest.raises(StartDataError, match=r"data\.count must be a whole number"):
        parse_start_data(Row, text)  # JSON gives numbers as numbers
    for bad in ({"ratio": "nan"}, {"ratio": "inf"}, {"vip": "maybe"}, {"count": "1e30"}):
        with pytest.raises(StartDataError, match=f"data.{next(iter(bad))}"):
            parse_start_data(Row, {**text, **bad}, from_text=True)


def test_a_typed_dict_with_optional_and_nullable_fields() -> None:
    class Booking(TypedDict):
        when: Annotated[dt.datetime, Future()]
        party: Annotated[int, Range(1, 12)]
        note: NotRequired[str | None]

    fields = {f.name: f for f in start_fields(Booking)}
    assert fields["when"].future and fields["party"].required
    assert not fields["note"].required and fields["note"].nullable
    data = {"when": "2026-02-01T19:00:00+01:00", "party": 4, "note": None}
    assert parse_start_data(Booking, data, now=NOW) == data
    with pytest.raises(StartDataError, match=r"data\.party must be a whole number from 1 to 12"):
        parse_start_data(Booking, {**data, "party": 13}, now=NOW)


@pytest.mark.parametrize(
    ("annotation", "message"),
    [
        (list[str], "use str, int, float, bool or datetime"),
        (Annotated[str, Range(0, 1)], "Range() bounds numbers"),
        (Annotated[int, Length(max=3)], "Length() bounds text"),
        (Annotated[str, Future()], "Future() is for datetime fields"),
    ],
)
def test_a_declaration_smsbot_cannot_check_is_refused(annotation: Any, message: str) -> None:
    declaration = dataclasses.make_dataclass("Bad", [("field", annotation)])
    with pytest.raises(TypeError, match=re.escape(message)):
        start_fields(declaration)
    with pytest.raises(TypeError, match="dataclass or a TypedDict"):
        start_fields(dict)


def test_the_schema_comes_from_the_declaration() -> None:
    schema = start_data_schema(appointment().start_data)
    assert schema["required"] == ["name", "starts_at", "location"]
    assert schema["additionalProperties"] is False
    props = schema["properties"]
    assert props["starts_at"]["format"] == "date-time"
    assert "in the future" in props["starts_at"]["description"]
    assert props["remind_before_minutes"] == {
        "type": "integer",
        "minimum": 0,
        "maximum": 40320,
        "default": 1440,
    }
    assert props["name"] == {"type": "string", "pattern": r"\S", "maxLength": 40}
    assert props["timezone"]["type"] == "string"
    assert start_data_schema(None) == {
        "type": "object",
        "description": "the conversation's initial data",
    }


def test_a_flow_without_a_declaration_takes_any_data() -> None:
    class Free(Flow):
        name = "free"
        only = State(initial=True, final=True)

    assert Free.parse_start_data({"anything": [1, 2]}) == {"anything": [1, 2]}


# --- the operator API and the CLI -------------------------------------------------------------


# The operator API's own test fixture: the real app over the example flows, the clock at NOW.
api = operator_api.api
Api = operator_api.Api


@pytest.mark.parametrize(("change", "field"), HOSTILE)
async def test_the_operator_api_refuses_hostile_data_with_a_400(
    api: Api, change: dict[str, Any], field: str
) -> None:
    body = {"to": PHONE, "data": {**GOOD, **change}}
    code, answer = await api.call("POST", "/api/flows/appointment/start", json=body)
    assert (code, answer["field"]) == (400, field), answer
    assert answer["error"].startswith(field)
    assert await api.event_count() == 0


async def test_start_many_names_the_field_of_each_bad_row(api: Api) -> None:
    rows = [
        {"to": PHONE, "data": GOOD},
        {"to": "+447700900002", "data": {**GOOD, "remind_before_minutes": "abc"}},
        {"to": "+447700900003", "data": {**GOOD, "starts_at": "2026-01-01T10:30:00+00:00"}},
    ]
    code, answer = await api.call("POST", "/api/flows/appointment/start-many", json=rows)
    assert code == 400
    invalid = [(e["line"], e["field"]) for e in answer["invalid"]]
    assert invalid == [(2, "data.remind_before_minutes"), (3, "data.starts_at")]
    assert await api.event_count() == 0
    # a CSV's cells are text: "90" is read as the integer the flow declared
    csv = "to,name,starts_at,location,remind_before_minutes\n"
    csv += f"{PHONE},Sam,2026-01-20T10:30:00+00:00,Riverside,90\n"
    code, answer = await api.call(
        "POST",
        "/api/flows/appointment/start-many",
        data=csv.encode(),
        headers={"Content-Type": "text/csv"},
    )
    assert (code, answer["started"]) == (202, 1), answer


async def test_the_openapi_document_describes_each_flows_data(api: Api) -> None:
    resp = await api.client.get("/api/openapi.json")
    doc = await resp.json()
    start = doc["paths"]["/api/flows/appointment/start"]["post"]
    data = start["requestBody"]["content"]["application/json"]["schema"]["properties"]["data"]
    assert data == start_data_schema(appointment().start_data)
    assert not [p for p in start.get("parameters", []) if p["in"] == "path"]
    # start-many takes any list (a bad row is reported in `invalid`); a row's schema is here:
    assert doc["components"]["schemas"]["appointment.StartRow"]["properties"]["data"] == data
    keywords = doc["paths"]["/api/flows/keywords/start"]["post"]["requestBody"]["content"]
    assert keywords["application/json"]["schema"]["properties"]["data"]["properties"] == {
        "timezone": data["properties"]["timezone"]
    }
    assert "/api/flows/{name}/start" in doc["paths"]  # still there for other clients


async def test_smsbot_start_csv_names_the_field_of_a_bad_row(tmp_path: Path) -> None:
    csv = tmp_path / "patients.csv"
    csv.write_text(
        "to,name,starts_at,location,remind_before_minutes\n"
        "07700 900001,Ann,2030-01-20T10:30:00+00:00,Riverside,abc\n"
        "07700 900002,Bob,2020-01-20T10:30:00+00:00,Riverside,60\n"
        "07700 900003,Cy,9999-12-31T23:00:00-23:59,Riverside,60\n"
    )
    settings = Settings(
        flows_dir=REPO / "flows",
        templates_dir=REPO / "templates",
        default_sender=VN,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'never.db'}",
    )
    with pytest.raises(OperatorError) as refused:
        await start_from_csv(settings, "appointment", csv, skip_invalid=False)
    text = str(refused.value)
    assert "3 invalid row(s)" in text and "nothing was started" in text
    assert f"{csv}:line 2: data.remind_before_minutes: must be a whole number" in text
    assert f"{csv}:line 3: data.starts_at: '2020-01-20T10:30:00+00:00' has passed" in text
    assert f"{csv}:line 4: data.starts_at: '9999-12-31T23:00:00-23:59' is out of range" in text
    assert not (tmp_path / "never.db").exists()


def test_a_flow_can_add_a_rule_and_name_the_field() -> None:
    @dataclasses.dataclass
    class Visit:
        starts_at: Annotated[dt.datetime, Future()]

    class Clinic(Flow):
        name = "clinic"
        start_data = Visit
        only = State(initial=True, final=True)

        @classmethod
        def check_start_data(cls, data: Mapping[str, Any]) -> None:
            if dt.datetime.fromisoformat(data["starts_at"]).weekday() == 6:
                raise StartDataError("starts_at", "is on a Sunday: choose a weekday")

    with pytest.raises(StartDataError) as refused:
        Clinic.parse_start_data({"starts_at": "2026-01-18T10:00:00+00:00"}, now=NOW)
    assert (refused.value.field, str(refused.value)) == (
        "data.starts_at",
        "data.starts_at is on a Sunday: choose a weekday",
    )
