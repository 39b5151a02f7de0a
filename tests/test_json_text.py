"""store/types.json_text: the engines write JSON columns with orjson, and fall back to the
standard library for what orjson will not write; every backend reads back what was written."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from sqlalchemy import select

from smsbot.store.engine import Database
from smsbot.store.models import conversations_t
from smsbot.store.types import json_text

T0 = dt.datetime(2026, 12, 6, 9, 0, tzinfo=dt.UTC)
BIG = 2**70  # beyond orjson's 64 bits


def test_json_text_writes_what_json_dumps_would_read_the_same() -> None:
    value = {"name": "Zoë", "n": 2, "ratio": 0.1, "nested": [1, {"a": None, "b": True}]}
    assert json_text(value) == '{"name":"Zoë","n":2,"ratio":0.1,"nested":[1,{"a":null,"b":true}]}'
    assert json.loads(json_text(value)) == value
    assert json_text({1: "a"}) == '{"1":"a"}'  # as json.dumps writes a key that is no string
    assert json.loads(json_text({"big": BIG})) == {"big": BIG}  # the standard library's text


@pytest.mark.parametrize("value", [T0, {"at": T0}, {"x": object()}])
def test_json_text_refuses_what_json_refuses(value: object) -> None:
    with pytest.raises(TypeError):
        json_text(value)


async def test_json_columns_read_back_what_was_written(db: Database) -> None:
    data = {"name": "Zoë 👋", "big": BIG, "nested": {"list": [1.5, "x", None]}}
    row = {
        "workspace": "default",
        "virtual_number": "+447700900100",
        "phone": "+447700900001",
        "flow": "appointment",
        "state": "asked",
        "data": data,
        "version": 0,
        "started_at": T0,
        "last_activity_at": T0,
    }
    await db.write(lambda conn: conn.execute(conversations_t.insert(), [row]))
    async with db.session() as s:
        found = (await s.execute(select(conversations_t.c.data))).scalar_one()
    assert found == data
