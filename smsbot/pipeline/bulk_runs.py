"""Bulk start runs: the file each `smsbot start --csv` run started from, checked by --resume.

A run's starts are stored under `bulk:RUN:LINE` (pipeline/starts.start_event_id): a resumed
run skips the lines already started. That is only right for the same file: with a line
inserted, removed or edited, line N is someone else, who would be skipped while the person
now on another line got the first message twice. So a run records the SHA-256 of the file's
bytes before its first start, and `--resume RUN` goes on only with a file of that digest, the
same flow and the same workspace.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from sqlalchemy import Connection, insert, select

from smsbot.pipeline.starts import stored_starts
from smsbot.store.models import bulk_runs_t


@dataclasses.dataclass(frozen=True, slots=True)
class Run:
    """One bulk start: its id, where it started from and what it was to start."""

    run: str
    workspace: str
    flow: str
    file_sha256: str
    rows: int
    created_at: dt.datetime


def claim(conn: Connection, run: Run, *, resuming: bool) -> str | None:
    """Record a new run, or check a resumed one against its record (one write transaction);
    None when the starts may go on, else why not (a sentence naming the fix)."""
    if not resuming:
        conn.execute(insert(bulk_runs_t).values(**dataclasses.asdict(run)))
        return None
    found = conn.execute(select(bulk_runs_t).where(bulk_runs_t.c.run == run.run)).first()
    if found is None:
        if stored_starts(conn, run.run):  # started before runs were recorded: nothing to check
            return None
        return (
            f"no run {run.run} in this database: --resume takes the id a start of this file"
            " printed, on this database; to start the file as a new run, leave --resume out"
        )
    return _differs(found, run)


def _differs(found: Any, run: Run) -> str | None:
    if found.flow != run.flow:
        return (
            f"run {run.run} started flow {found.flow!r}, not {run.flow!r}: resume it with"
            f" `smsbot start {found.flow} … --resume {run.run}`"
        )
    if found.workspace != run.workspace:
        return (
            f"run {run.run} started in workspace {found.workspace!r}, not {run.workspace!r}:"
            f" resume it with --workspace {found.workspace}"
        )
    if found.file_sha256 != run.file_sha256:
        return (
            f"this is not the file run {run.run} started from: it has changed since (SHA-256"
            f" {found.file_sha256[:12]}… then, {run.file_sha256[:12]}… now), so its lines are"
            " no longer the run's lines. Resume with the file as it was, or start this one as a"
            " new run without --resume (rows the run already started would get their first"
            " message again)"
        )
    return None
