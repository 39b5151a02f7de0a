"""5. Footprint: the resident memory of an idle `smsbot serve`, as `make run` starts it."""

from __future__ import annotations

import asyncio

from bench.common import (
    REPO,
    Child,
    Figure,
    base_env,
    free_port,
    proc_status_kb,
    python_argv,
    say,
    sqlite_url,
)
from bench.http_benches import Options

GOAL_MB = 80


async def footprint(o: Options) -> list[Figure]:
    """Start `smsbot serve` (SQLite, in-process sandbox, the example flows), idle, read VmRSS."""
    port = free_port()
    env = {
        **base_env(),
        "SMSBOT_DATABASE_URL": sqlite_url(o.workdir),
        "SMSBOT_PORT": str(port),
        "SMSBOT_SANDBOX_PORT": str(free_port()),
        "SMSBOT_FLOWS_DIR": str(REPO / "flows"),
        "SMSBOT_TEMPLATES_DIR": str(REPO / "templates"),
        "SMSBOT_LOG_LEVEL": "WARNING",
    }
    figures = []
    for label, args in (("flows", ("serve",)), ("--echo", ("serve", "--echo"))):
        child = Child(f"footprint-{label.strip('-')}", python_argv("smsbot", *args), env, o.workdir)
        child.start()
        try:
            await child.wait_http(f"http://127.0.0.1:{port}/healthz")
            await asyncio.sleep(2 if o.quick else 5)  # the timer leader's first sync, then idle
            rss = proc_status_kb(child.pid, "VmRSS") / 1024
            peak = proc_status_kb(child.pid, "VmHWM") / 1024
        finally:
            await child.stop()
        say(f"idle smsbot serve ({label}): VmRSS {rss:.1f} MB, VmHWM {peak:.1f} MB")
        figures.append(
            Figure(
                f"5 idle serve RSS ({label})",
                rss,
                "MB",
                f"≤ {GOAL_MB} MB",
                rss <= GOAL_MB,
                note=f"peak {peak:.0f} MB",
            )
        )
    return figures
