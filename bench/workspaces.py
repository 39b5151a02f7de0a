"""Benchmark 7: client B's reply p99 while client A runs a bulk send (issue 14, fair sharing).

One `smsbot serve` with two workspaces, each on its own fake provider account (a process of
its own, its own API key): A is `default` (the SMSBOT_* account) and runs the bulk start of
benchmark 3 (`smsbot start appointment --csv`, 100,000 rows); meanwhile a new phone texts
HOURS to B's number every second, and the figure is the time from posting that webhook to B's
provider accepting the answer. The bulk run is benchmark 3's own code (offline.run_bulk).
"""

from __future__ import annotations

from bench.common import (
    API_KEY,
    VN,
    Figure,
    Provider,
    free_port,
    server_env,
    sqlite_url,
)
from bench.http_benches import Options
from bench.offline import REPLY_GOAL_S, Probe, run_bulk

VN_B = "+447700900300"
API_KEY_B = "bench-api-key-b"
SECRET_B = "whsec_bench_b"
WORKSPACE_ID_B = "ws_bench_b"


def settings_toml(url_b: str) -> str:
    """Workspace b on its own account; the SMSBOT_* account (A) keeps the bench's number."""
    return f"""
[workspaces.default]
workspace_id = "ws_bench"
numbers = ["{VN}"]

[workspaces.b]
provider = "divergent"
api_key = "{API_KEY_B}"
url = "{url_b}"
webhook_secret = "{SECRET_B}"
workspace_id = "{WORKSPACE_ID_B}"
numbers = ["{VN_B}"]
send_rate = 1000000
"""


async def workspaces(o: Options) -> list[Figure]:
    """7. B's reply p99 while A's bulk start of N rows is sent (two accounts, one server)."""
    n = 10_000 if o.quick else 100_000
    toml = o.workdir / "workspaces.toml"
    async with Provider(o.workdir, API_KEY) as provider_a, Provider(o.workdir, API_KEY_B) as b:
        toml.write_text(settings_toml(b.url))
        port = free_port()
        env = server_env(sqlite_url(o.workdir), port, provider_a.url, SMSBOT_CONFIG=str(toml))
        probe = Probe(to=VN_B, secret=SECRET_B, workspace_id=WORKSPACE_ID_B, prefix="+4477119")
        run = await run_bulk(o, n, provider_a, env=env, port=port, replies=(b, probe))
        stray = await provider_a.count() - n  # B's answers sent through A's account
        b_count = await b.count()
    p99 = run.p99
    notes = [run.reply_note(), f"A's bulk {run.rate:,.0f} msg/s"]
    if not run.done:
        notes.append(f"INCOMPLETE: {run.sent:,} of {n:,} after {run.elapsed:.0f} s")
    if stray > 0:
        notes.append(f"WRONG ACCOUNT: {stray} of B's answers sent through A's ({b_count} B's)")
    return [
        Figure(
            f"7 workspaces: B's reply p99, A bulk {n:,}",
            p99,
            "s",
            f"< {REPLY_GOAL_S:g} s",
            p99 is not None and p99 < REPLY_GOAL_S and stray <= 0,
            note="; ".join(notes),
        )
    ]
