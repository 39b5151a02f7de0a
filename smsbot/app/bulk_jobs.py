"""`smsbot start --csv` in several processes: each checks a share of the file, then starts it.

A start's CPU is in Python (the check: `phonenumbers`, the start data; the step: the flow, the
template; its rows), and one process is one core. The parent reads the CSV and deals its rows
out in chunks, in turn, to N spawned processes. Each checks its chunks as they come
(app/bulk.Validator) and spools the good rows to a temporary file of its own; the parent
collects each good row's recipient and, once every row is checked, finds the ones that come
twice (app/bulk.LinesByKey). Nothing starts unless the whole file is good (or --skip-invalid):
then each process starts its spooled rows as the single-process path does
(app/bulk.enqueue_starts), under one run id, so every start keeps its once-only event id
`bulk:RUN:LINE`. Their SQLite transactions take turns (store/sqlite_writer.WriterHandoff); on
PostgreSQL they write side by side.

Checking in the parent alone was a serial phase: 3.5 s of a 14 s run of 100,000 rows on two
cores, while the processes that would start them waited (bench/README.md), and a larger share
on more cores. The processes are spawned, not forked, so none inherits the parent's threads or
connections; each reads the settings from the same environment and working directory.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import multiprocessing
import pickle
import queue
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from smsbot.app.bulk import (
    BATCH,
    BulkResult,
    LinesByKey,
    RowError,
    SeenNothing,
    StartRow,
    Validator,
    chunks,
    enqueue_starts,
    repeated_lines,
)
from smsbot.app.heap import settle_heap
from smsbot.clock import SystemClock
from smsbot.config import Settings
from smsbot.engine.runtime import FlowRuntime
from smsbot.store.engine import Database

SHOWN_ERRORS = 20
AHEAD = 4  # chunks dealt to a process and not yet checked: the parent's reading waits beyond


class JobError(RuntimeError):
    """A start process failed; its message says why."""


@dataclasses.dataclass(slots=True)
class Checked:
    """What a check found: the good and bad rows' counts, the first bad rows (of a process's
    share of the file, or of the whole file)."""

    good: int = 0
    bad: int = 0
    errors: list[RowError] = dataclasses.field(default_factory=list)  # the first SHOWN_ERRORS

    def refuse(self, error: RowError) -> None:
        """Count a bad row; keep it if it is one of the first SHOWN_ERRORS."""
        self.bad += 1
        if len(self.errors) < SHOWN_ERRORS:
            self.errors.append(error)


class Spool:
    """Checked rows: the good ones spooled in pickled chunks, and what the check found."""

    def __init__(self, spool: IO[bytes]) -> None:
        self.spool = spool
        self.checked = Checked()
        self._chunk: list[tuple[int, str, str, dict[str, Any]]] = []  # StartRow's fields

    def add(self, checked: StartRow | RowError) -> None:
        """Count a checked row; spool it if it is good."""
        if isinstance(checked, RowError):
            self.checked.refuse(checked)
            return
        self.checked.good += 1
        self._chunk.append((checked.line, checked.phone, checked.virtual_number, checked.data))
        if len(self._chunk) >= BATCH:
            self.flush()

    def flush(self) -> None:
        """Write the rows not yet written."""
        if self._chunk:
            pickle.dump(self._chunk, self.spool, protocol=pickle.HIGHEST_PROTOCOL)
            self._chunk = []

    def rows(self) -> Iterator[StartRow]:
        """The good rows again, from the spool."""
        self.flush()
        self.spool.flush()
        self.spool.seek(0)
        while True:
            try:
                # our own temporary file, written above by this process: not untrusted data
                chunk = pickle.load(self.spool)  # noqa: S301
            except EOFError:
                return
            yield from (StartRow(*fields) for fields in chunk)


@dataclasses.dataclass(frozen=True, slots=True)
class Job:
    """What every start process is asked: start `flow` in `workspace` (`sender` for rows
    without a "from") under the run id `run`, its rows' data checked as of `now`."""

    flow: str
    workspace: str
    sender: str | None
    run: str
    now: dt.datetime


def _without(rows: Iterable[StartRow], repeats: str) -> Iterator[StartRow]:
    """`rows` less the lines the parent found repeated (--skip-invalid)."""
    for chunk in chunks(rows, BATCH):
        drop = repeated_lines(repeats, chunk[0].line, chunk[-1].line)
        yield from (row for row in chunk if row.line not in drop)


def _order(inbox: Any) -> tuple[Any, ...]:
    """The parent's next order; ("stop",) if the parent is gone (killed before it could say)."""
    parent = multiprocessing.parent_process()
    while True:
        try:
            order: tuple[Any, ...] = inbox.get(timeout=1.0)
            return order
        except queue.Empty:
            if parent is not None and not parent.is_alive():
                return ("stop",)


def _child(index: int, job: Job, inbox: Any, out: Any) -> None:
    """A start process: check the chunks dealt to it, report, then start them if told to.

    To the parent, in turn: ("checked", (rows, [(line, sender, phone) of each good row]))
    for each chunk, ("spooled", (good, bad, first errors)), then ("progress", done) and
    ("done", counts), or ("error", why) at any point.
    """
    try:
        settings = Settings.from_env()
        runtime = FlowRuntime.from_settings(settings, reload_templates=False)
        settle_heap()  # as `smsbot serve` does once loaded: a row's or a start's objects die young
        parse = functools.partial(
            runtime.flows[job.flow].parse_start_data, now=job.now, from_text=True
        )
        validator = Validator(
            settings, parse, workspace=job.workspace, sender=job.sender, seen=SeenNothing()
        )
        with tempfile.TemporaryFile(prefix="smsbot-start-") as file:
            spool = Spool(file)
            while (order := _order(inbox))[0] == "rows":
                keys = []
                for line, row in order[1]:
                    checked = validator.check(line, row)
                    spool.add(checked)
                    if isinstance(checked, StartRow):
                        keys.append((line, checked.virtual_number, checked.phone))
                out.put((index, "checked", (len(order[1]), keys)))
            if order[0] != "end":
                return  # "stop": the parent is giving up
            found = spool.checked
            errors = [dataclasses.astuple(e) for e in found.errors]
            out.put((index, "spooled", (found.good, found.bad, errors)))
            order = _order(inbox)
            if order[0] != "go":
                return
            rows = spool.rows()
            if order[1] is not None:
                rows = _without(rows, order[1])
            result = asyncio.run(_start(index, job, settings, runtime, rows, out))
        counts = (result.started, result.queued, result.skipped_opted_out, result.duplicates)
        out.put((index, "done", counts))
    except BaseException as exc:  # the parent says it; a traceback here would say it twice
        out.put((index, "error", f"{type(exc).__name__}: {exc}"))


async def _start(
    index: int,
    job: Job,
    settings: Settings,
    runtime: FlowRuntime,
    rows: Iterable[StartRow],
    out: Any,
) -> BulkResult:
    db = Database(settings.database_url)
    try:
        return await enqueue_starts(
            db,
            runtime,
            SystemClock(),
            job.flow,
            rows,
            progress=lambda done: out.put((index, "progress", done)),
            workspace=job.workspace,
            run=job.run,
            step_timeout=settings.step_timeout,
        )
    finally:
        await db.dispose()


class StartProcesses:
    """The parent's side: spawn the processes, deal them the rows, hear what they found, then
    tell them to start or to stop. Use as an async context manager: leaving it stops them."""

    def __init__(self, job: Job, processes: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._out = context.Queue()
        self._inboxes = [context.Queue(maxsize=AHEAD) for _ in range(processes)]
        self._children = [
            context.Process(
                target=_child, args=(i, job, inbox, self._out), name=f"smsbot-start-{i}"
            )
            for i, inbox in enumerate(self._inboxes)
        ]
        self._stopping = threading.Event()
        self._dir = tempfile.TemporaryDirectory(prefix="smsbot-start-")
        self._keys = LinesByKey(self._dir.name)
        self._told = False  # every process has its last order ("go" or "stop")
        self._repeats = 0

    async def __aenter__(self) -> StartProcesses:
        for child in self._children:
            child.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stopping.set()
        for child in self._children:
            if not self._told:
                child.kill()  # before "go" a process has only checked rows: nothing to finish
            await asyncio.to_thread(child.join, 30)
            if child.is_alive():
                child.kill()
                await asyncio.to_thread(child.join)
        self._keys.close()
        self._dir.cleanup()

    def _put(self, index: int, order: tuple[Any, ...]) -> bool:
        """Give a process an order, waiting while it has AHEAD chunks unchecked; False if the
        run is stopping (a process failed) or the process is gone."""
        while not self._stopping.is_set():
            try:
                self._inboxes[index].put(order, timeout=0.5)
                return True
            except queue.Full:
                if not self._children[index].is_alive():
                    return False
        return False

    def _tell(self, order: tuple[Any, ...]) -> None:
        """Give every process its last order (each has checked all its rows and waits)."""
        self._told = True
        for inbox in self._inboxes:
            inbox.put(order)

    def stop(self) -> None:
        """Tell every process to start nothing and end (the file was refused)."""
        self._tell(("stop",))

    def _deal(self, rows: Iterable[tuple[int, dict[str, Any]]]) -> None:
        """Read `rows` and deal them out a chunk at a time, in turn (a thread: it blocks)."""
        for n, chunk in enumerate(chunks(rows, BATCH)):
            if not self._put(n % len(self._inboxes), ("rows", chunk)):
                return
        for i in range(len(self._inboxes)):
            self._put(i, ("end",))

    async def check(
        self, rows: Iterable[tuple[int, dict[str, Any]]], checked: Callable[[int], None]
    ) -> Checked:
        """Deal out and check every row; `checked` gets the number checked so far."""
        dealing = asyncio.ensure_future(asyncio.to_thread(self._deal, rows))
        result = Checked()
        errors: list[RowError] = []
        spooled: set[int] = set()
        done = 0
        try:
            while len(spooled) < len(self._children):
                if dealing.done() and dealing.exception() is not None:
                    break  # the file could not be read: raised below
                index, kind, value = await self._next(spooled)
                if kind == "failed":  # nothing is written before "go": stop them all
                    raise JobError(str(value))
                if kind == "checked":
                    n, keys = value
                    self._keys.add(keys)
                    done += n
                    checked(done)
                elif kind == "spooled":
                    spooled.add(index)
                    result.good += value[0]
                    result.bad += value[1]
                    errors.extend(RowError(*e) for e in value[2])
        finally:
            if not dealing.done():
                self._stopping.set()
            await dealing  # raises what reading the file raised
        repeats = self._keys.find_repeats()
        result.good -= repeats
        result.bad += repeats
        errors.extend(self._keys.first_repeats(SHOWN_ERRORS))
        result.errors = sorted(errors, key=lambda e: e.line)[:SHOWN_ERRORS]
        self._repeats = repeats
        return result

    async def start(self, progress: Callable[[int], None]) -> BulkResult:
        """Tell every process to start its good rows; return their counts together. A process
        that fails does not stop the others: each writes whole chunks, and what the others
        start is started; the failures are raised (JobError) once all have ended."""
        self._tell(("go", self._keys.path if self._repeats else None))
        progressed = [0] * len(self._children)
        result = BulkResult()
        failures: list[str] = []
        finished: set[int] = set()
        while len(finished) < len(self._children):
            index, kind, value = await self._next(finished)
            if kind == "progress":
                progressed[index] = value
                progress(sum(progressed))
            elif kind == "done":
                finished.add(index)
                started, queued, skipped, duplicates = value
                result.started += started
                result.queued += queued
                result.skipped_opted_out += skipped
                result.duplicates += duplicates
            elif kind == "failed":
                finished.add(index)
                failures.append(str(value))
        if failures:
            raise JobError("; ".join(failures))
        return result

    async def _next(self, finished: set[int]) -> tuple[int, str, Any]:
        """The next report of a process not in `finished`: ("failed", why) if it failed or
        died, ("quiet", None) after a second without a word."""
        try:
            index, kind, value = await asyncio.to_thread(self._out.get, True, 1.0)
        except queue.Empty:
            for i, child in enumerate(self._children):  # killed without a word
                if i not in finished and not child.is_alive() and self._out.empty():
                    return i, "failed", f"process {i} ended with exit code {child.exitcode}"
            return -1, "quiet", None  # the caller looks around, then asks again
        return index, "failed" if kind == "error" else kind, value
