"""Start a flow for many recipients at once: validate every row first, enqueue in batches."""

from __future__ import annotations

import csv
import dataclasses
import io
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import select

from smsbot.app.operations import (
    OperatorError,
    check_our_sender,
    default_sender,
    inbox_entry,
    workspace_named,
    workspace_senders,
)
from smsbot.config import Settings
from smsbot.engine.contract import EventKind
from smsbot.engine.startdata import StartDataError
from smsbot.pipeline.contacts import suppression_hash
from smsbot.pipeline.inbox import Inbox
from smsbot.sms.phone import PhoneNumberError, normalize, normalize_sender
from smsbot.store.engine import Database
from smsbot.store.models import opt_out_applies, opt_outs_t, suppressions_t
from smsbot.workspaces import DEFAULT

BATCH = 1_000  # rows per INSERT: 100,000 rows are 100 round trips, not 100,000
MAX_ROWS = 200_000


@dataclasses.dataclass(frozen=True, slots=True)
class StartRow:
    """One validated row: start `flow` for `phone` from `virtual_number` with `data`."""

    line: int
    phone: str
    virtual_number: str
    data: dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class RowError:
    """Why one row was refused; `line` is 1-based (CSV: the header is line 1)."""

    line: int
    field: str
    error: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.error}"


@dataclasses.dataclass(slots=True)
class BulkResult:
    """What a bulk start did."""

    started: int = 0
    skipped_opted_out: int = 0
    duplicates: int = 0
    invalid: list[RowError] = dataclasses.field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The operator API's answer."""
        return {
            "started": self.started,
            "skipped_opted_out": self.skipped_opted_out,
            "duplicates": self.duplicates,
            "invalid": [dataclasses.asdict(e) for e in self.invalid],
        }


class BulkInputError(ValueError):
    """The file as a whole cannot be read (not CSV, no `to` column, too many rows)."""


def rows_from_csv(text: str) -> list[tuple[int, dict[str, Any]]]:
    """Read CSV with a header row: `to`, optional `from`, every other column goes to data."""
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "to" not in [f.strip() for f in reader.fieldnames]:
        raise BulkInputError("the CSV needs a header row with a 'to' column")
    rows: list[tuple[int, dict[str, Any]]] = []
    for row in reader:
        if len(rows) >= MAX_ROWS:
            raise BulkInputError(f"more than {MAX_ROWS} rows: split the file")
        if None in row:
            rows.append((reader.line_num, {"__error__": "more fields than the header has"}))
            continue
        clean = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
        to, sender = clean.pop("to", ""), clean.pop("from", "")
        item: dict[str, Any] = {"to": to, "data": {k: v for k, v in clean.items() if v != ""}}
        if sender:
            item["from"] = sender
        rows.append((reader.line_num, item))
    return rows


def rows_from_json(items: object) -> list[tuple[int, dict[str, Any]]]:
    """Accept a JSON list of {"to", "from"?, "data"?} objects; line numbers count from 1."""
    if not isinstance(items, list):
        raise BulkInputError('the body must be a JSON list of {"to", "from", "data"} objects')
    if len(items) > MAX_ROWS:
        raise BulkInputError(f"more than {MAX_ROWS} rows: split the request")
    return [
        (i, item if isinstance(item, dict) else {"__error__": "not an object"})
        for i, item in enumerate(items, start=1)
    ]


def validate(
    rows: Sequence[tuple[int, Mapping[str, Any]]],
    settings: Settings,
    parse_data: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    *,
    workspace: str = DEFAULT,
    sender: str | None = None,
) -> tuple[list[StartRow], list[RowError]]:
    """Check every row for `workspace`; return the good ones and an error per bad one.

    `parse_data` checks a row's data against the flow's start_data (Flow.parse_start_data)
    and returns it with the declared types. `sender` is for rows without a "from" (else the
    workspace's default sender).
    """
    good: list[StartRow] = []
    bad: list[RowError] = []
    seen: set[tuple[str, str]] = set()
    region = workspace_named(settings, workspace).default_region
    ours = workspace_senders(settings, workspace)
    fallback = sender or default_sender(settings, workspace)
    missing = (
        "missing: give a 'from' or set SMSBOT_DEFAULT_SENDER"
        if workspace == DEFAULT
        else f"missing: give a 'from', or add numbers to [workspaces.{workspace}]"
    )
    for line, row in rows:
        if "__error__" in row:
            bad.append(RowError(line, "row", str(row["__error__"])))
            continue
        try:
            phone = normalize(str(row.get("to") or ""), region)
        except PhoneNumberError as exc:
            bad.append(RowError(line, "to", str(exc)))
            continue
        chosen = row.get("from") or fallback
        if not chosen:
            bad.append(RowError(line, "from", missing))
            continue
        try:
            virtual_number = normalize_sender(str(chosen), region)
            check_our_sender(settings, virtual_number, ours, workspace=workspace)
        except (PhoneNumberError, OperatorError) as exc:
            bad.append(RowError(line, "from", str(exc)))
            continue
        data = row.get("data", {})
        if not isinstance(data, dict):
            bad.append(RowError(line, "data", "must be an object"))
            continue
        if parse_data is not None:
            try:
                data = parse_data(data)
            except StartDataError as exc:
                bad.append(RowError(line, exc.field, exc.reason))
                continue
            except (ValueError, TypeError, KeyError) as exc:
                bad.append(RowError(line, "data", str(exc).strip("'\"")))
                continue
        if (virtual_number, phone) in seen:
            bad.append(RowError(line, "to", f"{phone} appears twice in this file"))
            continue
        seen.add((virtual_number, phone))
        good.append(StartRow(line, phone, virtual_number, data))
    return good, bad


async def enqueue_starts(
    db: Database,
    inbox: Inbox,
    flow: str,
    requests: Sequence[StartRow],
    *,
    policy: str = "interrupt",
    progress: Callable[[int, int], None] | None = None,
    workspace: str = DEFAULT,
) -> BulkResult:
    """Queue a START event per request, in batches; opted-out phones are skipped and counted."""
    result = BulkResult()
    run = uuid.uuid4().hex[:12]
    for start in range(0, len(requests), BATCH):
        chunk = requests[start : start + BATCH]
        opted = await _opted_out(db, [(r.virtual_number, r.phone) for r in chunk], workspace)
        entries = []
        for r in chunk:
            if (r.virtual_number, r.phone) in opted:
                result.skipped_opted_out += 1
                continue
            entries.append(
                inbox_entry(
                    workspace,
                    source="api",
                    event_id=f"bulk:{run}:{r.line}",
                    kind=EventKind.START,
                    payload={"flow": flow, "data": r.data, "policy": policy},
                    virtual_number=r.virtual_number,
                    phone=r.phone,
                )
            )
        outcomes = await inbox.accept_many(entries)
        result.started += sum(o.value == "new" for o in outcomes)
        result.duplicates += sum(o.value != "new" for o in outcomes)
        if progress is not None:
            progress(min(start + BATCH, len(requests)), len(requests))
    return result


async def _opted_out(
    db: Database, keys: Iterable[tuple[str, str]], workspace: str
) -> set[tuple[str, str]]:
    keys = list(keys)
    if not keys:
        return set()
    phones = sorted({phone for _, phone in keys})
    hashes = {suppression_hash(phone): phone for phone in phones}
    async with db.session() as s:
        rows = await s.execute(
            select(opt_outs_t.c.virtual_number, opt_outs_t.c.phone).where(
                opt_outs_t.c.phone.in_(phones), opt_outs_t.c.workspace == workspace
            )
        )
        # and the opt-outs of erased phones, kept as keyed hashes (smsbot contacts erase)
        hashed = await s.execute(
            select(suppressions_t.c.virtual_number, suppressions_t.c.phone_hash).where(
                suppressions_t.c.phone_hash.in_(list(hashes)),
                suppressions_t.c.workspace == workspace,
            )
        )
        opted: dict[str, list[str]] = {}
        for number, phone in rows.all():
            opted.setdefault(phone, []).append(number)
        for number, key in hashed.all():
            opted.setdefault(hashes[key], []).append(number)
    return {
        (sender, phone)
        for sender, phone in keys
        if any(opt_out_applies(number, sender) for number in opted.get(phone, ()))
    }
