"""`smsbot serve` and `smsbot start` settle their heap once loaded: what is loaded is frozen,
the young generation is wider (smsbot/app/heap.py, settle_heap). Checked in a child process:
both change the collector for the whole process, which the test process must not inherit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from smsbot.app.heap import YOUNG_GENERATION
from tests.fresh import clean_env

REPO = Path(__file__).resolve().parents[1]

_CHILD = """
import gc, json
before = gc.get_threshold()
from smsbot.app.heap import settle_heap
settle_heap()
print(json.dumps({"before": before, "after": gc.get_threshold(), "frozen": gc.get_freeze_count()}))
"""


def test_settle_heap_freezes_what_is_loaded_and_widens_the_young_generation() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, check=True, timeout=60
    )
    seen = json.loads(out.stdout)
    assert seen["before"][0] != YOUNG_GENERATION  # the test would show nothing otherwise
    assert seen["after"] == [YOUNG_GENERATION, *seen["before"][1:]]
    assert seen["frozen"] > 10_000  # smsbot's modules, SQLAlchemy's, aiohttp's: all frozen


# Modules an idle SQLite server has no use for, each a slice of idle RSS (goal: 80 MB):
# SQLAlchemy's PostgreSQL dialect (19 modules, 2.4 MB) was loaded by partial indexes written
# with postgresql_where= (store/columns.py); PyJWT (10 modules with urllib.request's
# loader, ~0.3 MB) by the operator API's tokens, which now import it when one is issued or
# read (app/tokens.py).
@pytest.mark.parametrize("prefix", ["sqlalchemy.dialects.postgresql", "jwt"])
def test_an_idle_sqlite_server_does_not_load(prefix: str) -> None:
    child = (
        "import sys, smsbot.app.serve, smsbot.app.cli, smsbot.store.models\n"
        "import smsbot.app.server.app, smsbot.app.server.oauth, smsbot.app.credentials\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0:{prefix.count('.') + 1}]"
        f" == {prefix.split('.')!r}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


# `smsbot start`: the CLI's own process (check, then start) and a start process of --jobs
# (bulk_jobs._child, dealt one chunk of one row as the parent deals them, then told to go).
_START = """
import asyncio, gc, json, queue, sys
from pathlib import Path
from smsbot.app.bulk_cli import start_from_csv
from smsbot.app.bulk_jobs import Job, _child
from smsbot.clock import SystemClock
from smsbot.config import Settings
before = gc.get_threshold()
if sys.argv[1] == "cli":
    done = asyncio.run(start_from_csv(Settings.from_env(), "appointment", Path(sys.argv[2]), False))
else:
    row = {"to": "+447700900002", "data": {"name": "Bo", "location": "Riverside",
           "starts_at": "2030-01-20T10:30:00+00:00"}}
    inbox, out = queue.Queue(), queue.Queue()
    for order in [("rows", [(2, row)]), ("end",), ("go", None)]:
        inbox.put(order)
    _child(0, Job("appointment", "default", None, "r1", SystemClock().now()), inbox, out)
    reports = [out.get() for _ in range(out.qsize())]
    done = [value for _, kind, value in reports if kind == "done"][0][0]
print(json.dumps({"before": before, "after": gc.get_threshold(), "done": str(done)}))
"""


@pytest.mark.parametrize("where", ["cli", "job"])
def test_smsbot_start_settles_its_heap(where: str, tmp_path: Path) -> None:
    env = clean_env(
        SMSBOT_DATABASE_URL=f"sqlite:///{tmp_path / 'bulk.db'}",
        SMSBOT_DEFAULT_SENDER="+447700900100",
        SMSBOT_FLOWS_DIR=str(REPO / "flows"),
        SMSBOT_TEMPLATES_DIR=str(REPO / "templates"),
    )
    csv = tmp_path / "patients.csv"
    csv.write_text("to,name,starts_at,location\n07700 900001,Ann,2030-01-20T10:30:00+00:00,Rv\n")
    if where == "job":
        subprocess.run(  # the database the first pass would have migrated
            [sys.executable, "-m", "smsbot", "db", "upgrade"], env=env, cwd=tmp_path, check=True
        )
    path = str(csv)
    out = subprocess.run(
        [sys.executable, "-c", _START, where, path],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    if where == "cli":
        assert "started 1 conversation(s)" in seen["done"], seen["done"]
    else:
        assert seen["done"] == "1"  # one start
    assert seen["before"][0] != YOUNG_GENERATION
    assert seen["after"] == [YOUNG_GENERATION, *seen["before"][1:]]
