"""`smsbot start --jobs N` checks the file in its N start processes (app/bulk_jobs) and still
refuses what the single process refuses: a recipient who comes twice, across processes too; the
first errors in line order, whichever process found them; a file that cannot be read to the
end. Nothing is started unless the whole file is good, or --skip-invalid starts the good rows."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from smsbot.app.bulk import LinesByKey, repeated_lines
from smsbot.pipeline.bulk_runs import Run, claim
from smsbot.store.engine import Database
from tests.support import VN
from tests.test_bulk_starts import ENV
from tests.test_cli import smsbot

STARTS_AT = "2030-01-20T10:30:00+00:00"  # the command checks it against the real clock
OTHER_SENDER = "+447700900200"


def _row(i: int, to: str | None = None, starts_at: str = STARTS_AT) -> str:
    return f"{to or f'+4474{i:08d}'},P{i},{starts_at},Riverside\n"


def _events(db: Path) -> list[str]:
    if not db.exists():
        return []
    with contextlib.closing(sqlite3.connect(db)) as conn:  # `with connect()` would not close
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        if "webhook_events" not in tables:
            return []
        return [e for (e,) in conn.execute("SELECT event_id FROM webhook_events")]


def test_lines_by_key_finds_each_recipients_later_lines(tmp_path: Path) -> None:
    keys = LinesByKey(str(tmp_path))
    try:
        # two processes' chunks, reported out of line order
        keys.add([(9, VN, "+447700900001"), (4, VN, "+447700900002")])
        keys.add([(2, VN, "+447700900001"), (7, VN, "+447700900002")])
        keys.add([(3, OTHER_SENDER, "+447700900001")])  # from another number: another recipient
        assert keys.find_repeats() == 2
        assert [(e.line, e.field, e.error) for e in keys.first_repeats(20)] == [
            (7, "to", "+447700900002 appears twice in this file"),
            (9, "to", "+447700900001 appears twice in this file"),
        ]
        assert [e.line for e in keys.first_repeats(1)] == [7]
        # what a start process reads back, from its own connection
        assert repeated_lines(keys.path, 1, 8) == {7}
        assert repeated_lines(keys.path, 8, 100) == {9}
    finally:
        keys.close()


def test_errors_found_by_different_processes_are_listed_in_line_order(tmp_path: Path) -> None:
    """Three chunks dealt to two processes: chunk 0 (lines 2-251) and 2 to the first, chunk 1
    to the second. A bad date (line 260) and a repeat of line 2's recipient (line 302) are the
    second process's; a bad number (line 602) the first's."""
    rows = [_row(i) for i in range(750)]
    rows[258] = _row(258, starts_at="not a date")  # line 260
    rows[300] = _row(300, to="+447400000000")  # line 302: line 2's recipient
    rows[600] = _row(600, to="nope")  # line 602
    path = tmp_path / "three-chunks.csv"
    path.write_text("to,name,starts_at,location\n" + "".join(rows))
    db = tmp_path / "bulk.db"
    env = {**ENV, "SMSBOT_DATABASE_URL": f"sqlite:///{db}"}

    refused = smsbot("start", "appointment", "--csv", str(path), "--jobs", "2", env=env)
    assert refused.returncode == 2, refused.stderr
    assert "3 invalid row(s)" in refused.stderr and "nothing was started" in refused.stderr
    listed = [line.strip() for line in refused.stderr.splitlines() if ".csv:line " in line]
    assert [line.split(":")[1:3] for line in listed] == [
        ["line 260", " data.starts_at"],
        ["line 302", " to"],
        ["line 602", " to"],
    ]
    assert "+447400000000 appears twice in this file" in listed[1]
    assert "Traceback" not in refused.stderr
    assert _events(db) == []

    out = smsbot(
        "start", "appointment", "--csv", str(path), "--jobs", "2", "--skip-invalid", env=env
    )
    assert out.returncode == 0, out.stderr
    assert "started 747 conversation(s)" in out.stdout and "3 invalid row(s)" in out.stdout
    lines = sorted(int(e.split(":")[2]) for e in _events(db))
    assert lines == [n for n in range(2, 752) if n not in (260, 302, 602)]  # line 2, not 302


def test_more_errors_than_shown_are_counted_across_processes(tmp_path: Path) -> None:
    rows = [_row(i, to="nope" if i % 20 == 0 else None) for i in range(1_000)]  # 50 bad
    path = tmp_path / "bad.csv"
    path.write_text("to,name,starts_at,location\n" + "".join(rows))
    env = {**ENV, "SMSBOT_DATABASE_URL": f"sqlite:///{tmp_path / 'bulk.db'}"}
    refused = smsbot("start", "appointment", "--csv", str(path), "--jobs", "3", env=env)
    assert refused.returncode == 2, refused.stderr
    assert "50 invalid row(s)" in refused.stderr and "… and 30 more" in refused.stderr
    listed = [line for line in refused.stderr.splitlines() if ".csv:line " in line]
    assert [int(line.split("line ")[1].split(":")[0]) for line in listed] == list(
        range(2, 2 + 20 * 20, 20)
    )


def test_a_file_unreadable_past_its_first_chunks_starts_nothing(tmp_path: Path) -> None:
    path = tmp_path / "broken.csv"
    path.write_text(
        "to,name,starts_at,location\n"
        + "".join(_row(i) for i in range(600))
        + "+447700900001,"
        + "A" * 200_000  # past the csv module's field limit
        + "\n"
    )
    db = tmp_path / "bulk.db"
    env = {**ENV, "SMSBOT_DATABASE_URL": f"sqlite:///{db}"}
    out = smsbot("start", "appointment", "--csv", str(path), "--jobs", "2", env=env)
    assert out.returncode == 2
    assert "broken.csv: not readable as CSV" in out.stderr
    assert "Traceback" not in out.stderr
    assert _events(db) == []


_ORPHAN = """
import multiprocessing, os, sys
from pathlib import Path
from smsbot.app.bulk_jobs import _order

def wait(inbox, out):
    Path(out).write_text(repr(_order(inbox)))

if __name__ == "__main__":
    context = multiprocessing.get_context("spawn")
    inbox = context.Queue()
    child = context.Process(target=wait, args=(inbox, sys.argv[1]))
    child.start()
    print(child.pid, flush=True)
    os._exit(0)  # gone without a word, as a parent killed during the check
"""


def test_a_start_process_whose_parent_is_gone_stops(tmp_path: Path) -> None:
    script = tmp_path / "orphan.py"
    script.write_text(_ORPHAN)
    said = tmp_path / "order.txt"
    out = subprocess.run(
        [sys.executable, str(script), str(said)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    child = int(out.stdout.strip())
    deadline = time.monotonic() + 30
    while not said.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert said.read_text() == "('stop',)"
    for _ in range(100):  # then it ends
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the start process outlived its parent")


_CRASHING = '''
import os
from pathlib import Path

from smsbot import Conversation, Flow, State


class Crashing(Flow):
    """Says hello; dies on the row named "crash" while the file $CRASH exists (once)."""

    name = "crashing"
    opt_out_notice = False
    hello = State(initial=True)

    async def start(self, convo: Conversation) -> State | None:
        marker = Path(os.environ["CRASH"])
        if convo.data["name"] == "crash" and marker.exists():
            marker.unlink()
            os._exit(7)  # the process dies mid-start, as a killed one would
        await convo.say(f"Hello {convo.data['name']}")
        return None
'''


def _messages(db: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return [phone for (phone,) in conn.execute("SELECT phone FROM messages")]


def test_a_start_process_that_dies_leaves_the_others_to_finish_and_resume_starts_the_rest(
    tmp_path: Path,
) -> None:
    """750 rows, three chunks, two processes: the first is dealt chunks 0 and 2, the second
    chunk 1. The first dies in chunk 2 (line 602). The second finishes its chunk; the command
    says what failed, how far the processes got and how to resume. The same command with
    --resume starts the rest: every row once, none twice."""
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "crashing.py").write_text(_CRASHING)
    (tmp_path / "templates").mkdir()
    marker = tmp_path / "crash-once"
    marker.touch()
    rows = [_row(i) for i in range(750)]
    rows[600] = _row(600).replace(",P600,", ",crash,")
    path = tmp_path / "rows.csv"
    path.write_text("to,name,starts_at,location\n" + "".join(rows))
    db = tmp_path / "bulk.db"
    env = {
        **ENV,
        "SMSBOT_DATABASE_URL": f"sqlite:///{db}",
        "SMSBOT_FLOWS_DIR": str(tmp_path / "flows"),
        "SMSBOT_TEMPLATES_DIR": str(tmp_path / "templates"),
        "CRASH": str(marker),
    }
    command = ("start", "crashing", "--csv", str(path), "--jobs", "2")

    failed = smsbot(*command, env=env, timeout=120)
    assert failed.returncode == 2, failed.stderr
    assert not marker.exists() and "Traceback" not in failed.stderr
    assert "process 0 ended with exit code 7" in failed.stderr
    assert "500 of 750 row(s) are started (or queued)" in failed.stderr
    run = failed.stderr.split("smsbot: starting run ")[1][:12]
    assert f"the same command with --resume {run} to start the rest" in failed.stderr
    started = sorted(int(e.rsplit(":", 1)[1]) for e in _events(db))
    assert started == list(range(2, 502))  # chunks 0 and 1, each whole; nothing of chunk 2

    resumed = smsbot(*command, "--resume", run, env=env, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert "started 250 conversation(s)" in resumed.stdout
    assert "500 started before (--resume)" in resumed.stdout
    events = _events(db)
    assert sorted(int(e.rsplit(":", 1)[1]) for e in events) == list(range(2, 752))
    assert {e.rsplit(":", 1)[0] for e in events} == {f"bulk:{run}"}
    messages = _messages(db)
    assert len(messages) == len(set(messages)) == 750  # one hello each, none twice


def test_resume_takes_only_a_run_id(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("to,name,starts_at,location\n" + _row(1))
    env = {**ENV, "SMSBOT_DATABASE_URL": f"sqlite:///{tmp_path / 'bulk.db'}"}
    out = smsbot("start", "appointment", "--csv", str(path), "--resume", "../x", env=env)
    assert out.returncode == 2
    assert "--resume: takes the run id a start printed (12 hex digits" in out.stderr
    assert not (tmp_path / "bulk.db").exists()


def test_resume_goes_on_only_with_the_file_the_run_started_from(tmp_path: Path) -> None:
    """A run records its file's SHA-256 (pipeline/bulk_runs): line N of another file is
    someone else, so --resume with a changed file or an unknown run id is refused before
    anything is started; the unchanged file resumes."""
    path = tmp_path / "rows.csv"
    original = "to,name,starts_at,location\n" + "".join(_row(i) for i in range(3))
    path.write_text(original)
    db = tmp_path / "bulk.db"
    env = {**ENV, "SMSBOT_DATABASE_URL": f"sqlite:///{db}"}
    first = smsbot("start", "appointment", "--csv", str(path), env=env)
    assert first.returncode == 0, first.stderr
    run = first.stderr.split("smsbot: starting run ")[1][:12]
    assert len(_events(db)) == 3

    path.write_text(original.replace("\n", "\n" + _row(9), 1))  # a row inserted at the top
    changed = smsbot("start", "appointment", "--csv", str(path), "--resume", run, env=env)
    assert changed.returncode == 2 and "Traceback" not in changed.stderr
    assert f"this is not the file run {run} started from: it has changed since" in changed.stderr
    assert "Resume with the file as it was" in changed.stderr
    assert "nothing was started" in changed.stderr
    assert len(_events(db)) == 3 and len(_messages(db)) == 3

    unknown = smsbot("start", "appointment", "--csv", str(path), "--resume", "0" * 12, env=env)
    assert unknown.returncode == 2
    assert f"no run {'0' * 12} in this database" in unknown.stderr

    path.write_text(original)
    again = smsbot("start", "appointment", "--csv", str(path), "--resume", run, env=env)
    assert again.returncode == 0, again.stderr
    assert "started 0 conversation(s)" in again.stdout
    assert "3 started before (--resume)" in again.stdout
    assert len(_messages(db)) == 3


async def test_a_resumed_run_must_keep_its_flow_and_workspace(db: Database) -> None:
    """On SQLite and PostgreSQL (the conftest's `db`)."""
    now = datetime.datetime(2026, 12, 6, 22, 50, tzinfo=datetime.UTC)
    run = Run("3f9c0a1b2d4e", "default", "appointment", "ab" * 32, 3, now)
    assert await db.write(lambda conn: claim(conn, run, resuming=False)) is None
    same = dataclasses.replace(run, rows=2, created_at=now + datetime.timedelta(hours=1))
    assert await db.write(lambda conn: claim(conn, same, resuming=True)) is None
    flow = dataclasses.replace(run, flow="keywords")
    assert await db.write(lambda conn: claim(conn, flow, resuming=True)) == (
        "run 3f9c0a1b2d4e started flow 'appointment', not 'keywords': resume it with"
        " `smsbot start appointment … --resume 3f9c0a1b2d4e`"
    )
    elsewhere = dataclasses.replace(run, workspace="clinic")
    refused = await db.write(lambda conn: claim(conn, elsewhere, resuming=True))
    assert refused is not None and "resume it with --workspace default" in refused
