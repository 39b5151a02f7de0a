"""Conversation data as JSON values: a quick check that a value is plain JSON, and a copy of it.

A step copies the conversation's data (the snapshot stays untouched, so a step can be retried)
and checks, when it ends, that what the flow left can be stored as JSON. `copy.deepcopy` and
`json.dumps` did both for every step; for data made of dicts, lists, strings, numbers, booleans
and None (nearly all of it) a walk of the values does the same in a fraction of the time
(~1.5 µs against ~10 for a start's data of four strings). Anything else takes the general way,
so the answers are deepcopy's and json.dumps' (but for a list or dict held twice in the data,
which the copy copies twice, as storing it as JSON would).
"""

from __future__ import annotations

import copy
import math
from typing import TypeVar

T = TypeVar("T")

_SCALARS = frozenset({str, int, bool, type(None)})


def is_plain_json(value: object) -> bool:
    """Whether `value` is made only of dict (str keys), list, str, int, bool, None and finite
    floats: what json.dumps(allow_nan=False) always writes. False says "look closer", not
    "not JSON" (a tuple or an int subclass is JSON too)."""
    try:
        return _plain(value)
    except RecursionError:  # deeper than Python recurses: json.dumps will say what it says
        return False


def _plain(value: object) -> bool:
    kind = type(value)
    if kind in _SCALARS:
        return True
    if kind is float:
        return math.isfinite(value)  # type: ignore[arg-type]
    if kind is dict:
        for key, item in value.items():  # type: ignore[attr-defined]
            # loops, not all(): most values are scalars, checked here without a call
            if type(key) is not str or (type(item) not in _SCALARS and not _plain(item)):
                return False
        return True
    if kind is list:
        for item in value:  # type: ignore[attr-defined]  # noqa: SIM110 (a loop: no generator)
            if type(item) not in _SCALARS and not _plain(item):
                return False
        return True
    return False


def copy_json(value: T) -> T:
    """A deep copy of `value` (copy.deepcopy's, but a list or dict held twice is copied twice, as
    JSON would store it); quick for plain JSON values."""
    kind = type(value)
    if kind is dict:
        return {  # type: ignore[return-value]
            k: v if type(v) in _SCALARS else copy_json(v)
            for k, v in value.items()  # type: ignore[attr-defined]
        }
    if kind is list:
        return [v if type(v) in _SCALARS else copy_json(v) for v in value]  # type: ignore[attr-defined,return-value]
    if kind in _SCALARS or kind is float:
        return value
    return copy.deepcopy(value)
