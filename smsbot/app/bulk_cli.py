"""`smsbot start FLOW --csv FILE`: check every row, then start them all, in constant memory.

Two passes over the file, neither of which holds it: the first reads the CSV as a stream,
checks each row and spools the good ones to a temporary file (pickled chunks); only if every
row is good (or --skip-invalid) does the second read the spool back a chunk at a time and start
it (app/bulk.enqueue_starts). The recipients already seen, to refuse one that comes twice, are
kept in a temporary SQLite file too (app/bulk.SeenOnDisk): memory does not grow with the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import functools
import os
import pickle
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from smsbot.app.bulk import (
    BATCH,
    BulkInputError,
    RowError,
    SeenOnDisk,
    StartRow,
    Validator,
    csv_rows,
    enqueue_starts,
)
from smsbot.app.bulk_jobs import Job, JobError, start_in_processes
from smsbot.app.database import migrate
from smsbot.app.heap import settle_heap
from smsbot.app.operations import OperatorError
from smsbot.clock import SystemClock
from smsbot.config import Settings
from smsbot.engine.runtime import FlowRuntime
from smsbot.store.engine import Database
from smsbot.workspaces import DEFAULT

SHOWN_ERRORS = 20
MANY_ROWS = 20_000  # from this many good rows on, start them in one process per core
MAX_JOBS = 4
CHECKED_EVERY = 10_000  # rows between two "checked" lines on a terminal


def progress(done: int, total: int) -> None:
    """Draw a progress bar on stderr when it is a terminal (`smsbot start`, `contacts import`)."""
    if not sys.stderr.isatty():
        return
    width = 30
    filled = width * done // max(total, 1)
    end = "\n" if done >= total else ""
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done:,}/{total:,}{end}")
    sys.stderr.flush()


def _checked(n: int, final: bool = False) -> None:
    """Say how many rows were checked so far, on a terminal (called every CHECKED_EVERY)."""
    if sys.stderr.isatty():
        sys.stderr.write(f"\rchecked {n:,} rows{chr(10) if final else ''}")
        sys.stderr.flush()


class _Checked:
    """The first pass: good rows spooled in pickled chunks, the first errors, the counts."""

    def __init__(self, spool: IO[bytes]) -> None:
        self.spool = spool
        self.good = 0
        self.bad = 0
        self.errors: list[RowError] = []  # the first SHOWN_ERRORS
        self.offsets: list[int] = []  # where each chunk starts in the spool
        self._chunk: list[tuple[int, str, str, dict[str, Any]]] = []  # StartRow's fields

    def add(self, checked: StartRow | RowError) -> None:
        if isinstance(checked, RowError):
            self.bad += 1
            if len(self.errors) < SHOWN_ERRORS:
                self.errors.append(checked)
            return
        self.good += 1
        self._chunk.append((checked.line, checked.phone, checked.virtual_number, checked.data))
        if len(self._chunk) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if self._chunk:
            self.offsets.append(self.spool.tell())
            pickle.dump(self._chunk, self.spool, protocol=pickle.HIGHEST_PROTOCOL)
            self._chunk = []

    def rows(self) -> Iterator[StartRow]:
        """The good rows again, from the spool."""
        self.flush()
        self.spool.seek(0)
        while True:
            try:
                # our own temporary file, written above by this process: not untrusted data
                chunk = pickle.load(self.spool)  # noqa: S301
            except EOFError:
                return
            yield from (StartRow(*fields) for fields in chunk)


def check_file(path: Path, validator: Validator, spool: IO[bytes]) -> _Checked:
    """Read and check every row of the CSV at `path`; raise OperatorError if it cannot be read."""
    checked = _Checked(spool)
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            for n, (line, row) in enumerate(csv_rows(f), start=1):
                checked.add(validator.check(line, row))
                if n % CHECKED_EVERY == 0:
                    _checked(n)
    except BulkInputError as exc:
        raise OperatorError(f"{path}: {exc}") from None
    except csv.Error as exc:
        raise OperatorError(f"{path}: not readable as CSV: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise OperatorError(f"cannot read {path}: {exc}") from None
    _checked(checked.good + checked.bad, final=True)
    return checked


async def start_from_csv(
    settings: Settings,
    flow: str,
    path: Path,
    skip_invalid: bool,
    *,
    workspace: str = DEFAULT,
    sender: str | None = None,
    jobs: int | None = None,
) -> str:
    """Start `flow` in `workspace` for every valid row of the CSV at `path` (`sender` for rows
    without a "from") in `jobs` processes (None: one per core, for large files); return a
    one-line summary."""
    runtime = FlowRuntime.from_settings(settings, reload_templates=False)
    if flow not in runtime.flows:
        known = ", ".join(sorted(runtime.flows)) or "none"
        raise OperatorError(f"no flow named {flow!r}; known flows: {known}")
    settle_heap()  # as `smsbot serve` does once loaded: a row's or a start's objects die young
    clock = SystemClock()
    parse = functools.partial(runtime.flows[flow].parse_start_data, now=clock.now(), from_text=True)
    seen = SeenOnDisk()
    validator = Validator(settings, parse, workspace=workspace, sender=sender, seen=seen)
    with (
        tempfile.NamedTemporaryFile(prefix="smsbot-start-", suffix=".spool") as spool,
        contextlib.closing(seen),
    ):
        checked = await asyncio.to_thread(check_file, path, validator, spool)
        if checked.bad and not skip_invalid:
            shown = "\n".join(f"  {path}:{e}" for e in checked.errors)
            more = checked.bad - len(checked.errors)
            rest = f"\n  … and {more} more" if more else ""
            raise OperatorError(
                f"{checked.bad} invalid row(s) in {path}; nothing was started (fix them, or pass"
                f" --skip-invalid):\n{shown}{rest}"
            )
        if done := await asyncio.to_thread(migrate, settings):
            print(f"smsbot: {done}", file=sys.stderr)
        checked.flush()
        spool.flush()
        total = checked.good
        jobs = jobs or (min(os.cpu_count() or 1, MAX_JOBS) if total >= MANY_ROWS else 1)
        if jobs > 1 and len(checked.offsets) > 1:
            run = uuid.uuid4().hex[:12]
            dealt = [
                Job(flow, workspace, spool.name, checked.offsets[i::jobs], run)
                for i in range(min(jobs, len(checked.offsets)))
            ]
            try:
                result = await start_in_processes(dealt, lambda n: progress(n, total))
            except JobError as exc:
                raise OperatorError(f"starting {path} failed: {exc}") from None
        else:
            db = Database(settings.database_url)
            try:
                result = await enqueue_starts(
                    db,
                    runtime,
                    clock,
                    flow,
                    checked.rows(),
                    progress=lambda n: progress(n, total),
                    workspace=workspace,
                    step_timeout=settings.step_timeout,
                )
            finally:
                await db.dispose()
    return (
        f"started {result.started:,} conversation(s) of {flow!r} ({result.queued:,} of them"
        f" queued behind earlier events); skipped {result.skipped_opted_out:,} opted-out and"
        f" {checked.bad:,} invalid row(s). A running `smsbot serve` sends the messages."
    )
