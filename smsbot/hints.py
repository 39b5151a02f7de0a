"""Error-message hints shared by every layer: the "did you mean …?" of a misspelt name."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, choices: Iterable[str], shown: str = "{}") -> str:
    """Return "did you mean X?" for the choice closest to `name`, or "" when none is close.

    `shown` formats the suggestion, e.g. "{!r}" to quote it or "self.{}" for an attribute.
    """
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f"did you mean {shown.format(close[0])}?" if close else ""
