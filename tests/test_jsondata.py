"""engine/jsondata: the quick check and copy of conversation data agree with json.dumps and
copy.deepcopy on every kind of value a flow may leave in convo.data."""

from __future__ import annotations

import copy
import datetime as dt
import enum
import json
import uuid
from typing import Any

import pytest

from smsbot.engine.flow import FlowError, require_json
from smsbot.engine.jsondata import copy_json, is_plain_json


class Colour(enum.IntEnum):
    RED = 1


class Text(str):
    pass


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


PLAIN = [
    None,
    True,
    0,
    -(10**30),
    1.5,
    "",
    "Sam",
    [],
    {},
    {"name": "Sam", "starts_at": "2026-01-20T10:30:00+00:00", "n": 3, "ok": False, "x": None},
    {"a": [1, 2.5, {"b": ["c", None]}], "_smsbot": {"timers": {"reminder": "remind"}}},
]
# JSON to json.dumps, but not plain: the check looks closer (json.dumps) and says yes.
JSON_BUT_NOT_PLAIN = [(1, 2), {"a": (1,)}, Colour.RED, Text("x"), {1: "int key"}, {None: 1}]
NOT_JSON = [
    float("nan"),
    float("inf"),
    {"a": -float("inf")},
    dt.datetime(2026, 1, 20, tzinfo=dt.UTC),
    uuid.UUID(int=1),
    {1, 2},
    b"bytes",
    OPAQUE := {"a": [object()]},
    {(1, 2): "tuple key"},
]


def dumps_ok(value: object) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


@pytest.mark.parametrize("value", PLAIN, ids=repr)
def test_plain_values_are_plain_and_json(value: object) -> None:
    assert is_plain_json(value) and dumps_ok(value)
    require_json(value, "data")


@pytest.mark.parametrize("value", JSON_BUT_NOT_PLAIN, ids=repr)
def test_other_json_is_left_to_json_dumps(value: object) -> None:
    assert not is_plain_json(value) and dumps_ok(value)
    require_json(value, "data")  # accepted, as before


@pytest.mark.parametrize("value", NOT_JSON, ids=repr)
def test_what_json_refuses_is_refused(value: object) -> None:
    assert not is_plain_json(value) and not dumps_ok(value)
    with pytest.raises(FlowError, match="data must be JSON"):
        require_json(value, "data")


def test_data_deeper_than_python_recurses_is_not_called_plain() -> None:
    deep = nested(100_000)
    assert not is_plain_json(deep)
    assert is_plain_json(nested(50))


COMPARABLE = [v for v in NOT_JSON if v == v and v is not OPAQUE]  # not NaN, nor an object()


@pytest.mark.parametrize("value", PLAIN + JSON_BUT_NOT_PLAIN + COMPARABLE, ids=repr)
def test_copy_json_copies_as_deepcopy_does(value: Any) -> None:
    copied = copy_json(value)
    assert copied == copy.deepcopy(value) and type(copied) is type(value)


def test_a_copy_shares_nothing_mutable_with_its_original() -> None:
    data = {"list": [1, {"inner": [2]}], "dict": {"k": "v"}, "tuple": ([3],)}
    copied = copy_json(data)
    copied["list"][1]["inner"].append(99)
    copied["dict"]["k"] = "changed"
    copied["tuple"][0].append(4)
    assert data == {"list": [1, {"inner": [2]}], "dict": {"k": "v"}, "tuple": ([3],)}
