"""`smsbot start --csv`'s second pass in several processes: the spool's chunks dealt out in turn.

A start's CPU is in Python (its step: the flow, the template; its rows), and one process is one
core. With N processes each reads every N-th chunk of the spool the first pass wrote, and
steps and writes it as the single-process path does (app/bulk.enqueue_starts), under one run
id: every start keeps its once-only event id `bulk:RUN:LINE`. Their SQLite transactions take
turns (store/sqlite_writer.WriterHandoff); on PostgreSQL they write side by side. The processes are
spawned, not forked, so none inherits the parent's threads or connections; each reads the
settings from the same environment and working directory.
"""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import pickle
import queue
from collections.abc import Callable, Iterator
from typing import Any

from smsbot.app.bulk import BulkResult, StartRow, enqueue_starts
from smsbot.app.heap import settle_heap
from smsbot.clock import SystemClock
from smsbot.config import Settings
from smsbot.engine.runtime import FlowRuntime
from smsbot.store.engine import Database


class JobError(RuntimeError):
    """A start process failed; its message says why."""


@dataclasses.dataclass(frozen=True, slots=True)
class Job:
    """The chunks one process starts: their offsets in the spool file."""

    flow: str
    workspace: str
    spool: str
    offsets: list[int]
    run: str


def read_chunks(spool: str, offsets: list[int]) -> Iterator[StartRow]:
    """The rows of the chunks at `offsets` of the spool file (pickled lists of fields)."""
    with open(spool, "rb") as f:
        for offset in offsets:
            f.seek(offset)
            # our own temporary file, written by the first pass: not untrusted data
            yield from (StartRow(*fields) for fields in pickle.load(f))  # noqa: S301


async def _start(job: Job, progress: Callable[[int], None]) -> BulkResult:
    settings = Settings.from_env()
    runtime = FlowRuntime.from_settings(settings, reload_templates=False)
    settle_heap()  # as `smsbot serve` does once loaded: a start's objects die young
    db = Database(settings.database_url)
    try:
        rows = read_chunks(job.spool, job.offsets)
        return await enqueue_starts(
            db,
            runtime,
            SystemClock(),
            job.flow,
            rows,
            progress=progress,
            workspace=job.workspace,
            run=job.run,
            step_timeout=settings.step_timeout,
        )
    finally:
        await db.dispose()


def _child(index: int, job: Job, out: Any) -> None:
    """A start process: report ("progress", done) as it goes, then ("done", counts)."""
    try:
        result = asyncio.run(_start(job, lambda done: out.put((index, "progress", done))))
        counts = (result.started, result.queued, result.skipped_opted_out, result.duplicates)
        out.put((index, "done", counts))
    except BaseException as exc:  # the parent says it; a traceback here would say it twice
        out.put((index, "error", f"{type(exc).__name__}: {exc}"))


async def start_in_processes(jobs: list[Job], progress: Callable[[int], None]) -> BulkResult:
    """Run each job in a process of its own; return the counts of all of them together."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    children = [
        context.Process(target=_child, args=(i, job, out), name=f"smsbot-start-{i}")
        for i, job in enumerate(jobs)
    ]
    for child in children:
        child.start()
    done = [0] * len(jobs)
    result = BulkResult()
    failures: list[str] = []
    finished: set[int] = set()
    try:
        while len(finished) < len(children):
            try:
                index, kind, value = await asyncio.to_thread(out.get, True, 1.0)
            except queue.Empty:
                for i, child in enumerate(children):  # killed without a word
                    if i not in finished and not child.is_alive() and out.empty():
                        finished.add(i)
                        failures.append(f"process {i} ended with exit code {child.exitcode}")
                continue
            if kind == "progress":
                done[index] = value
                progress(sum(done))
            elif kind == "done":
                finished.add(index)
                started, queued, skipped, duplicates = value
                result.started += started
                result.queued += queued
                result.skipped_opted_out += skipped
                result.duplicates += duplicates
            else:
                finished.add(index)
                failures.append(str(value))
    finally:
        for child in children:
            child.join(timeout=30)
    if failures:
        raise JobError("; ".join(failures))
    return result
