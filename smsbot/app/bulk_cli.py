"""`smsbot start FLOW --csv FILE`: check every row, then start them all, in constant memory.

The file is read once, as a stream. Each row is checked and the good ones are spooled to a
temporary file (pickled chunks); only if every row is good (or --skip-invalid) are they read
back from the spool a chunk at a time and started (app/bulk.enqueue_starts). A recipient who
comes twice is found on disk too (a temporary SQLite file): memory does not grow with the file.
A small file is checked and started in this process; a large one (MANY_ROWS, or --jobs) in
one process per core, each checking and then starting a share of it (app/bulk_jobs).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import functools
import hashlib
import io
import itertools
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from smsbot.app.bulk import (
    BATCH,
    BulkInputError,
    BulkResult,
    SeenOnDisk,
    Validator,
    csv_rows,
    enqueue_starts,
    new_run_id,
)
from smsbot.app.bulk_jobs import Checked, Job, JobError, Spool, StartProcesses
from smsbot.app.database import migrate
from smsbot.app.heap import settle_heap
from smsbot.app.operations import OperatorError
from smsbot.clock import SystemClock
from smsbot.config import Settings
from smsbot.engine.runtime import FlowRuntime
from smsbot.pipeline import bulk_runs
from smsbot.pipeline.starts import stored_starts
from smsbot.store.engine import Database
from smsbot.workspaces import DEFAULT

MANY_ROWS = 20_000  # from this many rows on, check and start them in one process per core
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


@dataclasses.dataclass(frozen=True, slots=True)
class _Plan:
    """What a run is: its id, flow and workspace, whether it resumes an earlier one, and the
    SHA-256 of its file's bytes (complete once the file was read to its end)."""

    run: str
    flow: str
    workspace: str
    resuming: bool
    digest: Any = dataclasses.field(default_factory=hashlib.sha256)


class _Digesting(io.RawIOBase):
    """A binary file that adds every byte read from it to `digest`."""

    def __init__(self, raw: io.BufferedReader, digest: Any) -> None:
        self._raw = raw
        self._digest = digest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._raw.readinto(buffer)
        if n:
            self._digest.update(memoryview(buffer)[:n])
        return n


def read_csv(path: Path, digest: Any = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """The rows of the CSV at `path` as they are read; OperatorError if it cannot be read.
    `digest` (a hashlib object) gets the file's bytes as they are read."""
    try:
        with path.open("rb") as raw:
            source: IO[bytes] = (
                raw if digest is None else io.BufferedReader(_Digesting(raw, digest))
            )
            with io.TextIOWrapper(source, encoding="utf-8-sig", newline="") as f:
                yield from csv_rows(f)
    except BulkInputError as exc:
        raise OperatorError(f"{path}: {exc}") from None
    except csv.Error as exc:
        raise OperatorError(f"{path}: not readable as CSV: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise OperatorError(f"cannot read {path}: {exc}") from None


def check_rows(
    rows: Iterable[tuple[int, dict[str, Any]]], validator: Validator, spool: Spool
) -> None:
    """Check every row in this process and spool the good ones."""
    n = 0
    for n, (line, row) in enumerate(rows, start=1):
        spool.add(validator.check(line, row))
        if n % CHECKED_EVERY == 0:
            _checked(n)
    _checked(n, final=True)


def check_file(path: Path, validator: Validator, file: IO[bytes]) -> Spool:
    """Read and check every row of the CSV at `path` in this process, spooled to `file`."""
    spool = Spool(file)
    check_rows(read_csv(path), validator, spool)
    return spool


def _refused(path: Path, checked: Checked) -> OperatorError:
    shown = "\n".join(f"  {path}:{e}" for e in checked.errors)
    more = checked.bad - len(checked.errors)
    rest = f"\n  … and {more} more" if more else ""
    return OperatorError(
        f"{checked.bad} invalid row(s) in {path}; nothing was started (fix them, or pass"
        f" --skip-invalid):\n{shown}{rest}"
    )


async def _ready(
    settings: Settings, path: Path, checked: Checked, skip_invalid: bool, plan: _Plan
) -> None:
    """Between the check and the starts: refuse a file with bad rows (OperatorError) unless
    `skip_invalid`, bring the schema up to date, record the run (or refuse to resume it with
    another file: pipeline/bulk_runs) and say its id (what --resume takes if the starts stop
    part-way)."""
    if checked.bad and not skip_invalid:
        raise _refused(path, checked)
    if done := await asyncio.to_thread(migrate, settings):
        print(f"smsbot: {done}", file=sys.stderr)
    run = plan.run
    facts = bulk_runs.Run(
        run,
        plan.workspace,
        plan.flow,
        plan.digest.hexdigest(),
        checked.good,
        SystemClock().now(),
    )
    db = Database(settings.database_url)
    try:
        refused = await db.write(lambda conn: bulk_runs.claim(conn, facts, resuming=plan.resuming))
    finally:
        await db.dispose()
    if refused is not None:
        raise OperatorError(f"{path}: {refused}; nothing was started")
    print(
        f"smsbot: starting run {run}; should it stop part-way, the same command with"
        f" --resume {run} starts the rest",
        file=sys.stderr,
    )


async def _stored(settings: Settings, run: str) -> int:
    """How many of the run's starts are stored: counted in the database, not from the start
    processes' reports (a process that dies can take its last reports with it)."""
    db = Database(settings.database_url)
    try:
        return await db.read(lambda conn: stored_starts(conn, run))
    finally:
        await db.dispose()


def _summary(flow: str, result: BulkResult, invalid: int) -> str:
    again = f", {result.duplicates:,} started before (--resume)" if result.duplicates else ""
    return (
        f"started {result.started:,} conversation(s) of {flow!r} ({result.queued:,} of them"
        f" queued behind earlier events); skipped {result.skipped_opted_out:,} opted-out and"
        f" {invalid:,} invalid row(s){again}. A running `smsbot serve` sends the messages."
    )


async def start_from_csv(
    settings: Settings,
    flow: str,
    path: Path,
    skip_invalid: bool,
    *,
    workspace: str = DEFAULT,
    sender: str | None = None,
    jobs: int | None = None,
    resume: str | None = None,
) -> str:
    """Start `flow` in `workspace` for every valid row of the CSV at `path` (`sender` for rows
    without a "from") in `jobs` processes (None: one per core, for large files); return a
    one-line summary. `resume`: the run id of an earlier start of the same file that stopped
    part-way; its rows already started are skipped (each row's start has its once-only event
    id, bulk:RUN:LINE)."""
    plan = _Plan(resume or new_run_id(), flow, workspace, resuming=resume is not None)
    runtime = FlowRuntime.from_settings(settings, reload_templates=False)
    if flow not in runtime.flows:
        known = ", ".join(sorted(runtime.flows)) or "none"
        raise OperatorError(f"no flow named {flow!r}; known flows: {known}")
    settle_heap()  # as `smsbot serve` does once loaded: a row's or a start's objects die young
    rows = read_csv(path, plan.digest)
    # Enough of the file to choose: MANY_ROWS rows, or a chunk per process asked for.
    enough = MANY_ROWS if jobs is None else jobs * BATCH
    first = await asyncio.to_thread(lambda: list(itertools.islice(rows, enough)))
    read = len(first)
    if jobs is None:
        jobs = min(os.cpu_count() or 1, MAX_JOBS) if read >= MANY_ROWS else 1
    processes = min(jobs, -(-read // BATCH))
    # The first rows are dealt out or checked first, then dropped: no name keeps them.
    every = itertools.chain(first, rows)
    del first
    if processes > 1:
        return await _in_processes(settings, path, skip_invalid, every, processes, plan, sender)
    return await _in_this_process(settings, runtime, path, skip_invalid, every, plan, sender)


async def _in_processes(
    settings: Settings,
    path: Path,
    skip_invalid: bool,
    rows: Iterable[tuple[int, dict[str, Any]]],
    processes: int,
    plan: _Plan,
    sender: str | None,
) -> str:
    """Check and start `rows` in `processes` start processes (app/bulk_jobs)."""
    run, flow = plan.run, plan.flow
    job = Job(flow, plan.workspace, sender, run, SystemClock().now())
    shown = [0]

    def checked_so_far(n: int) -> None:
        if n // CHECKED_EVERY > shown[0]:
            shown[0] = n // CHECKED_EVERY
            _checked(n)

    async with StartProcesses(job, processes) as started:
        try:
            checked = await started.check(rows, checked_so_far)
        except JobError as exc:
            raise OperatorError(f"checking {path} failed, nothing was started: {exc}") from None
        _checked(checked.good + checked.bad, final=True)
        try:
            await _ready(settings, path, checked, skip_invalid, plan)
        except OperatorError:
            started.stop()  # they end without starting anything
            raise
        total = checked.good
        try:
            result = await started.start(lambda n: progress(n, total))
        except JobError as exc:
            stored = await _stored(settings, run)
            raise OperatorError(
                f"starting {path} failed: {exc}. The other processes went on: {stored:,} of"
                f" {total:,} row(s) are started (or queued). Run the same command with --resume"
                f" {run} to start the rest: rows already started are skipped"
            ) from None
    return _summary(flow, result, checked.bad)


async def _in_this_process(
    settings: Settings,
    runtime: FlowRuntime,
    path: Path,
    skip_invalid: bool,
    rows: Iterable[tuple[int, dict[str, Any]]],
    plan: _Plan,
    sender: str | None,
) -> str:
    """Check every row here, then start the good ones here."""
    flow, workspace = plan.flow, plan.workspace
    clock = SystemClock()
    parse = functools.partial(runtime.flows[flow].parse_start_data, now=clock.now(), from_text=True)
    seen = SeenOnDisk()
    validator = Validator(settings, parse, workspace=workspace, sender=sender, seen=seen)
    with (
        tempfile.TemporaryFile(prefix="smsbot-start-", suffix=".spool") as file,
        contextlib.closing(seen),
    ):
        spool = Spool(file)
        await asyncio.to_thread(check_rows, rows, validator, spool)
        checked = spool.checked
        await _ready(settings, path, checked, skip_invalid, plan)
        total = checked.good
        db = Database(settings.database_url)
        try:
            result = await enqueue_starts(
                db,
                runtime,
                clock,
                flow,
                spool.rows(),
                progress=lambda n: progress(n, total),
                workspace=workspace,
                run=plan.run,
                step_timeout=settings.step_timeout,
            )
        finally:
            await db.dispose()
    return _summary(flow, result, checked.bad)
