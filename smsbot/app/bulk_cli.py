"""`smsbot start FLOW --csv FILE`: validate every row, then queue the starts with a progress bar."""

from __future__ import annotations

import asyncio
import functools
import sys
from pathlib import Path

from smsbot.app.bulk import BulkInputError, enqueue_starts, rows_from_csv, validate
from smsbot.app.database import migrate
from smsbot.app.operations import OperatorError
from smsbot.clock import SystemClock
from smsbot.config import Settings
from smsbot.engine.runtime import FlowRuntime
from smsbot.pipeline.inbox import Inbox
from smsbot.store.engine import Database
from smsbot.workspaces import DEFAULT

SHOWN_ERRORS = 20


def progress(done: int, total: int) -> None:
    """Draw a progress bar on stderr when it is a terminal (`smsbot start`, `contacts import`)."""
    if not sys.stderr.isatty():
        return
    width = 30
    filled = width * done // max(total, 1)
    end = "\n" if done >= total else ""
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done:,}/{total:,}{end}")
    sys.stderr.flush()


async def start_from_csv(
    settings: Settings,
    flow: str,
    path: Path,
    skip_invalid: bool,
    *,
    workspace: str = DEFAULT,
    sender: str | None = None,
) -> str:
    """Start `flow` in `workspace` for every valid row of the CSV at `path` (`sender` for rows
    without a "from"); return a one-line summary."""
    runtime = FlowRuntime.from_settings(settings)
    if flow not in runtime.flows:
        known = ", ".join(sorted(runtime.flows)) or "none"
        raise OperatorError(f"no flow named {flow!r}; known flows: {known}")
    try:
        text = await asyncio.to_thread(path.read_text, encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise OperatorError(f"cannot read {path}: {exc}") from None
    try:
        rows = rows_from_csv(text)
    except BulkInputError as exc:
        raise OperatorError(f"{path}: {exc}") from None
    now = SystemClock().now()
    parse = functools.partial(runtime.flows[flow].parse_start_data, now=now, from_text=True)
    good, bad = validate(rows, settings, parse, workspace=workspace, sender=sender)
    if bad and not skip_invalid:
        shown = "\n".join(f"  {path}:{e}" for e in bad[:SHOWN_ERRORS])
        more = f"\n  … and {len(bad) - SHOWN_ERRORS} more" if len(bad) > SHOWN_ERRORS else ""
        raise OperatorError(
            f"{len(bad)} invalid row(s) in {path}; nothing was started (fix them, or pass"
            f" --skip-invalid):\n{shown}{more}"
        )
    if done := await asyncio.to_thread(migrate, settings):
        print(f"smsbot: {done}", file=sys.stderr)
    db = Database(settings.database_url)
    try:
        inbox = Inbox(db, SystemClock())
        result = await enqueue_starts(db, inbox, flow, good, progress=progress, workspace=workspace)
    finally:
        await db.dispose()
    return (
        f"queued {result.started:,} start(s) of {flow!r}; skipped {result.skipped_opted_out:,}"
        f" opted-out and {len(bad):,} invalid row(s). A running `smsbot serve` sends them."
    )
