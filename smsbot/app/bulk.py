"""Start a flow for many recipients at once: validate every row first, then start in chunks."""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import os
import re
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from smsbot.app.operations import (
    OperatorError,
    check_our_sender,
    default_sender,
    workspace_named,
    workspace_senders,
)
from smsbot.clock import Clock
from smsbot.config import Settings
from smsbot.engine.contract import ConversationKey, StepHandler
from smsbot.engine.startdata import StartDataError
from smsbot.pipeline.starts import ChunkResult, Start, commit, prepare, start_event_id
from smsbot.pipeline.stepping import STEP_TIMEOUT
from smsbot.sms.phone import PhoneNumberError, normalize, normalize_sender
from smsbot.store.engine import Database
from smsbot.workspaces import DEFAULT

T = TypeVar("T")
BATCH = 250  # starts per transaction: stepped together, written with one executemany a table
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
    queued: int = 0  # of those started, how many were left to the dispatcher (see starts.py)
    skipped_opted_out: int = 0
    duplicates: int = 0
    invalid: list[RowError] = dataclasses.field(default_factory=list)

    def add(self, chunk: ChunkResult) -> None:
        """Count a chunk's starts (pipeline/starts.py)."""
        self.started += chunk.stepped + chunk.queued
        self.queued += chunk.queued
        self.skipped_opted_out += chunk.skipped_opted_out
        self.duplicates += chunk.duplicates

    def as_json(self) -> dict[str, Any]:
        """The operator API's answer."""
        return {
            "started": self.started,
            "queued": self.queued,
            "skipped_opted_out": self.skipped_opted_out,
            "duplicates": self.duplicates,
            "invalid": [dataclasses.asdict(e) for e in self.invalid],
        }


class BulkInputError(ValueError):
    """The file as a whole cannot be read (not CSV, no `to` column, too many rows)."""


def csv_rows(lines: Iterable[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Read CSV with a header row as it comes: `to`, optional `from`, other columns go to data.

    Yields (line, row) one row at a time, so a file of any length is read in constant memory.
    A row with more fields than the header is yielded as {"__error__": why}.
    """
    reader = csv.DictReader(lines)
    if not reader.fieldnames or "to" not in [f.strip() for f in reader.fieldnames]:
        raise BulkInputError("the CSV needs a header row with a 'to' column")
    for row in reader:
        if None in row:
            yield reader.line_num, {"__error__": "more fields than the header has"}
            continue
        clean = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
        to, sender = clean.pop("to", ""), clean.pop("from", "")
        item: dict[str, Any] = {"to": to, "data": {k: v for k, v in clean.items() if v != ""}}
        if sender:
            item["from"] = sender
        yield reader.line_num, item


def rows_from_csv(text: str) -> list[tuple[int, dict[str, Any]]]:
    """The rows of a CSV held in memory (an API request body), at most MAX_ROWS."""
    rows: list[tuple[int, dict[str, Any]]] = []
    for row in csv_rows(io.StringIO(text)):
        if len(rows) >= MAX_ROWS:
            raise BulkInputError(f"more than {MAX_ROWS} rows: split the file")
        rows.append(row)
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


class SeenKeys:
    """The recipients seen so far, to refuse one that comes twice: a set in memory."""

    def __init__(self) -> None:
        self._keys: set[int] = set()

    def add(self, key: int) -> bool:
        """Remember `key`; False if it was there already."""
        if key in self._keys:
            return False
        self._keys.add(key)
        return True


class SeenOnDisk(SeenKeys):
    """The same, in a temporary SQLite file: a file of any length in constant memory (one
    B-tree probe a row, a few microseconds; `smsbot start --csv`)."""

    def __init__(self) -> None:
        super().__init__()
        # "": a private temporary file that SQLite deletes when the connection closes
        self._db = sqlite3.connect("", isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("CREATE TABLE seen (key INTEGER PRIMARY KEY)")
        self._db.execute("BEGIN")
        self._pending = 0

    def add(self, key: int) -> bool:
        """Remember `key` on disk; False if it was there already."""
        inserted = self._db.execute("INSERT OR IGNORE INTO seen VALUES (?)", (key,)).rowcount
        self._pending += 1
        if self._pending >= 10_000:  # commit now and then: the journal stays small
            self._db.execute("COMMIT")
            self._db.execute("BEGIN")
            self._pending = 0
        return bool(inserted)

    def close(self) -> None:
        """Drop the file."""
        self._db.close()


class SeenNothing(SeenKeys):
    """No recipient seen: for start processes that each check a share of a file, whose
    parent finds the repeats across all of them (LinesByKey)."""

    def add(self, key: int) -> bool:
        """Always new."""
        return True


def recipient_key(sender: int, phone: str) -> int:
    """A (sender, phone) as one int: the sender's index and the phone's digits (E.164 has at
    most 15)."""
    return sender * 10**15 + int(phone[1:])


class LinesByKey:
    """The (recipient, line) of every good row of a file checked by several processes, in a
    temporary SQLite file: which lines repeat an earlier line's recipient. The start processes
    read the answer (`repeats` table) from the same file, so no list of lines is held in
    memory whatever the file's length."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, "recipients.sqlite")
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("CREATE TABLE seen (key INTEGER, line INTEGER, PRIMARY KEY (key, line))")
        self._db.execute("BEGIN")
        self._senders: dict[str, int] = {}

    def add(self, rows: Iterable[tuple[int, str, str]]) -> None:
        """Remember each (line, sender, phone)."""
        senders = self._senders
        self._db.executemany(
            "INSERT OR IGNORE INTO seen VALUES (?, ?)",
            [
                (recipient_key(senders.setdefault(vn, len(senders)), phone), line)
                for line, vn, phone in rows
            ],
        )

    def find_repeats(self) -> int:
        """Find the lines whose recipient an earlier line has; return how many."""
        self._db.execute("COMMIT")
        self._db.execute("CREATE TABLE repeats (line INTEGER PRIMARY KEY, key INTEGER)")
        # In the primary key's order: each key's lines side by side, the first one kept.
        return self._db.execute(
            "INSERT INTO repeats SELECT line, key FROM (SELECT line, key, row_number() OVER"
            " (PARTITION BY key ORDER BY line) AS n FROM seen) WHERE n > 1"
        ).rowcount

    def first_repeats(self, limit: int) -> list[RowError]:
        """The errors of the first `limit` repeated lines (after find_repeats)."""
        found = self._db.execute("SELECT line, key FROM repeats ORDER BY line LIMIT ?", (limit,))
        return [
            RowError(line, "to", f"+{key % 10**15} appears twice in this file")
            for line, key in found
        ]

    def close(self) -> None:
        """Close the file (its directory is the caller's to remove)."""
        self._db.close()


def repeated_lines(path: str, first: int, last: int) -> set[int]:
    """The lines from `first` to `last` that LinesByKey at `path` found repeated."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        found = db.execute("SELECT line FROM repeats WHERE line BETWEEN ? AND ?", (first, last))
        return {line for (line,) in found}
    finally:
        db.close()


class Validator:
    """Checks start rows one at a time for a workspace, and refuses a recipient seen before."""

    def __init__(
        self,
        settings: Settings,
        parse_data: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        *,
        workspace: str = DEFAULT,
        sender: str | None = None,
        seen: SeenKeys | None = None,
    ) -> None:
        self.settings = settings
        self.parse_data = parse_data
        self.workspace = workspace
        self.region = workspace_named(settings, workspace).default_region
        self.ours = workspace_senders(settings, workspace)
        self.fallback = sender or default_sender(settings, workspace)
        self.missing = (
            "missing: give a 'from' or set SMSBOT_DEFAULT_SENDER"
            if workspace == DEFAULT
            else f"missing: give a 'from', or add numbers to [workspaces.{workspace}]"
        )
        self._senders: dict[str, int] = {}
        self._seen = seen if seen is not None else SeenKeys()

    def check(self, line: int, row: Mapping[str, Any]) -> StartRow | RowError:
        """The row as a StartRow, or the RowError that says what is wrong with it."""
        if "__error__" in row:
            return RowError(line, "row", str(row["__error__"]))
        try:
            phone = normalize(str(row.get("to") or ""), self.region)
        except PhoneNumberError as exc:
            return RowError(line, "to", str(exc))
        chosen = row.get("from") or self.fallback
        if not chosen:
            return RowError(line, "from", self.missing)
        try:
            virtual_number = normalize_sender(str(chosen), self.region)
            check_our_sender(self.settings, virtual_number, self.ours, workspace=self.workspace)
        except (PhoneNumberError, OperatorError) as exc:
            return RowError(line, "from", str(exc))
        data = row.get("data", {})
        if not isinstance(data, dict):
            return RowError(line, "data", "must be an object")
        if self.parse_data is not None:
            try:
                data = self.parse_data(data)
            except StartDataError as exc:
                return RowError(line, exc.field, exc.reason)
            except (ValueError, TypeError, KeyError) as exc:
                return RowError(line, "data", str(exc).strip("'\""))
        sender = self._senders.setdefault(virtual_number, len(self._senders))
        if not self._seen.add(recipient_key(sender, phone)):
            return RowError(line, "to", f"{phone} appears twice in this file")
        return StartRow(line, phone, virtual_number, data)


def validate(
    rows: Iterable[tuple[int, Mapping[str, Any]]],
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
    validator = Validator(settings, parse_data, workspace=workspace, sender=sender)
    good: list[StartRow] = []
    bad: list[RowError] = []
    for line, row in rows:
        checked = validator.check(line, row)
        if isinstance(checked, RowError):
            bad.append(checked)
        else:
            good.append(checked)
    return good, bad


# A bulk start's run id: hex digits, in each of its starts' event ids (bulk:RUN:LINE).
_RUN_DIGITS = 12
RUN_ID = re.compile(f"[0-9a-f]{{{_RUN_DIGITS}}}")


def new_run_id() -> str:
    """A fresh run id (RUN_ID)."""
    return uuid.uuid4().hex[:_RUN_DIGITS]


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """`items` in lists of `size` (the last may be shorter); itertools.batched from 3.12."""
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


async def enqueue_starts(
    db: Database,
    handler: StepHandler,
    clock: Clock,
    flow: str,
    requests: Iterable[StartRow],
    *,
    policy: str = "interrupt",
    progress: Callable[[int], None] | None = None,
    workspace: str = DEFAULT,
    run: str | None = None,
    step_timeout: float = STEP_TIMEOUT,
) -> BulkResult:
    """Start `flow` for every request, a chunk at a time (pipeline/starts.py): stepped here and
    written in one transaction per chunk, or queued for the dispatcher when that is not safe.

    Opted-out phones are skipped and counted; `progress` gets the number of requests done.
    `run` names this bulk start in its events' ids (several processes share one; app/bulk_jobs).
    A first step that waits longer than `step_timeout` seconds (SMSBOT_STEP_TIMEOUT: pass
    `settings.step_timeout`) is cut short and queued, as a step that raises is: the run goes on.
    """
    result = BulkResult()
    run = run or new_run_id()
    done = 0
    # One chunk at a time: read and step it, then write it. Stepping the next chunk while this
    # one is written was tried: the steps' Python then competes for the GIL with the writer
    # thread, which holds SQLite's one write lock meanwhile; with two `--jobs` the lock was
    # held 3.5 times as long (3.96 against 1.11 s for 40,000 starts) and the run took longer
    # (8.3 against 7.0 s). The other processes' steps use the other cores instead, and a
    # writer of another process (a person's answer in `smsbot serve`) that waited for a commit
    # takes the database while this one steps its next chunk (sqlite_writer.WriterHandoff).
    for chunk in chunks(requests, BATCH):
        starts = [
            Start(start_event_id(run, r.line), ConversationKey(r.virtual_number, r.phone), r.data)
            for r in chunk
        ]
        ready = await prepare(
            db,
            handler,
            clock.now(),
            flow,
            starts,
            workspace=workspace,
            policy=policy,
            step_timeout=step_timeout,
        )
        result.add(await commit(db, ready))
        done += len(chunk)
        if progress is not None:
            progress(done)
    return result
