"""`smsbot serve` settles its heap once loaded: what is loaded is frozen, the young generation
is wider (smsbot/app/serve.py, settle_heap). Checked in a child process: both change the
collector for the whole process, which the test process must not inherit."""

from __future__ import annotations

import json
import subprocess
import sys

from smsbot.app.serve import YOUNG_GENERATION

_CHILD = """
import gc, json
before = gc.get_threshold()
from smsbot.app.serve import settle_heap
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


def test_a_sqlite_server_does_not_load_postgresqls_dialect() -> None:
    # Partial indexes written with postgresql_where= loaded SQLAlchemy's PostgreSQL dialect
    # (19 modules, 2.4 MB of idle RSS) when the models were defined (store/columns.py).
    child = (
        "import sys, smsbot.app.serve, smsbot.app.cli, smsbot.store.models\n"
        "print(sorted(m for m in sys.modules if m.startswith('sqlalchemy.dialects.postgresql')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
