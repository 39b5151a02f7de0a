"""Shared pieces of the benchmarks: results, child processes, /proc readings, databases."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
SECRET = "whsec_bench"
API_KEY = "bench-api-key"
VN = "+447700900100"
PG_ADMIN = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def phone(i: int) -> str:
    """The i-th of 100,000 distinct phones in Ofcom's drama range (07700 9xxxxx)."""
    return f"+4477009{i % 100_000:05d}"


@dataclasses.dataclass
class Figure:
    """One measured figure and its goal."""

    name: str
    value: float | None
    unit: str
    goal: str = ""
    passed: bool | None = None  # None: informational, no goal
    ratio: float | None = None  # to the baseline, where the goal is a ratio
    note: str = ""

    def line(self) -> str:
        """One printed line: name, value, goal, ratio, PASS/FAIL."""
        value = "—" if self.value is None else f"{self.value:,.{_digits(self.value)}f} {self.unit}"
        ratio = "" if self.ratio is None else f"{self.ratio:.2f}× baseline"
        verdict = {True: "PASS", False: "FAIL", None: "info"}[self.passed]
        text = f"{self.name:<34} {value:>18}  {ratio:>15}  {self.goal:<26} {verdict}"
        return text + (f"  ({self.note})" if self.note else "")


def _digits(value: float) -> int:
    return 0 if abs(value) >= 1000 else 1 if abs(value) >= 10 else 2


def skipped(name: str, reason: str) -> Figure:
    """A figure that could not be measured, with the reason printed."""
    return Figure(name, None, "", "", None, note=f"SKIPPED: {reason}")


def say(text: str) -> None:
    """Progress on stderr, so stdout stays the table."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- /proc --------------------------------------------------------------------------------------


def proc_status_kb(pid: int | str, field: str) -> int:
    """A kB field (VmRSS, VmHWM) of /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class TreePeak:
    """The peak memory of a process and its descendants (`smsbot start --jobs`), from
    /proc/PID/status VmHWM, polled in a thread while it runs.

    Not `ru_maxrss` from wait4: Linux carries the parent's high-water mark across fork and exec,
    so a child of a 1.3 GB bench process reported 1.3 GB whatever it used itself.
    """

    def __init__(self, pid: int, every: float = 0.1) -> None:
        self.pid, self.every = pid, every
        self.hwm_kb: dict[int, int] = {}  # each process's own high-water mark
        self.total_kb = 0  # the largest sum of the tree's resident memory seen at one time
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _tree(self) -> list[int]:
        pids, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            for task in Path(f"/proc/{pid}/task").glob("*/children"):
                with contextlib.suppress(OSError):
                    todo += [int(c) for c in task.read_text().split()]
        return pids

    def _poll(self) -> None:
        while not self._stop.is_set():
            total = 0
            for pid in self._tree():
                with contextlib.suppress(OSError, KeyError, ValueError):
                    self.hwm_kb[pid] = max(self.hwm_kb.get(pid, 0), proc_status_kb(pid, "VmHWM"))
                    total += proc_status_kb(pid, "VmRSS")
            self.total_kb = max(self.total_kb, total)
            self._stop.wait(self.every)

    def stop(self) -> tuple[float, float, int]:
        """(the largest process's peak MB, the tree's peak total MB, processes seen)."""
        self._stop.set()
        self._thread.join()
        largest = max(self.hwm_kb.values(), default=0)
        return largest / 1024, self.total_kb / 1024, len(self.hwm_kb)


def cpu_seconds(pid: int | str) -> float:
    """User + system CPU seconds the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_share(seconds: float = 1.0) -> float:
    """How busy the whole machine's CPUs were over `seconds` (0..1), from /proc/stat."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields) - idle, sum(fields)

    busy0, total0 = sample()
    time.sleep(seconds)
    busy1, total1 = sample()
    return (busy1 - busy0) / max(1, total1 - total0)


QUIET = {"limit": 120.0, "threshold": 0.15, "noisiest": 0.0}


def wait_for_quiet() -> float:
    """Wait (up to QUIET["limit"] s) until other work on the machine uses under the threshold
    of its CPUs, so a measurement is not someone else's test run; returns the last reading
    (the noisiest one is kept in QUIET["noisiest"] for the figures' notes)."""
    deadline = time.monotonic() + QUIET["limit"]
    while True:
        busy = busy_share()
        if busy < QUIET["threshold"] or time.monotonic() > deadline:
            if busy >= QUIET["threshold"]:
                say(f"WARNING: the machine is {busy:.0%} busy with other work; figures are noisy")
            QUIET["noisiest"] = max(QUIET["noisiest"], busy)
            return busy
        say(f"machine {busy:.0%} busy with other work; waiting for it to settle")
        time.sleep(2)


# -- child processes ----------------------------------------------------------------------------


class Child:
    """A child process of the bench, logging to a file; stopped by its own pid only."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], logdir: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.cwd = logdir  # not the repository: no stray ./smsbot.toml or ./smsbot.db is used
        self.log_path = logdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv, env=self.env, cwd=self.cwd, stdout=self._log, stderr=subprocess.STDOUT
        )

    async def wait_http(self, url: str, limit: float = 60.0) -> None:
        """Wait until GET `url` answers 200 (or fail with the log's tail)."""
        deadline = time.monotonic() + limit
        async with aiohttp.ClientSession() as http:
            while True:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited: {self.tail()}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(url) as resp:
                        if resp.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.name} did not answer {url}: {self.tail()}")
                await asyncio.sleep(0.1)

    def tail(self, chars: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    async def stop(self, limit: float = 20.0) -> int | None:
        """SIGTERM, wait, SIGKILL if need be; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + limit
            while self.proc.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode


def base_env() -> dict[str, str]:
    """The environment without SMSBOT_* settings (the bench sets its own); bench importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMSBOT_")}
    return {**env, "PYTHONPATH": str(REPO)}


def server_env(db_url: str, port: int, provider_url: str, **extra: str) -> dict[str, str]:
    """Settings for a `smsbot serve` that sends to the bench's fake provider on loopback."""
    return {
        **base_env(),
        "SMSBOT_DATABASE_URL": db_url,
        "SMSBOT_PROVIDER": "divergent",
        "SMSBOT_DIVERGENT_API_KEY": API_KEY,
        "SMSBOT_DIVERGENT_URL": provider_url,
        "SMSBOT_WEBHOOK_SECRET": SECRET,
        "SMSBOT_DEFAULT_SENDER": VN,
        "SMSBOT_PORT": str(port),
        "SMSBOT_SEND_RATE": "1000000",  # the bench measures smsbot, not the default 10/s limit
        "SMSBOT_LOG_LEVEL": "WARNING",
        "SMSBOT_FLOWS_DIR": str(REPO / "flows"),
        "SMSBOT_TEMPLATES_DIR": str(REPO / "templates"),
        **extra,
    }


def python_argv(module: str, *args: str) -> list[str]:
    """`python -m module args` with this interpreter."""
    return [sys.executable, "-m", module, *args]


class Provider:
    """The fake provider (smsbot's Sandbox, receipts off) in its own process."""

    def __init__(self, logdir: Path, api_key: str = API_KEY) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = python_argv("bench.provider", "--port", str(self.port), "--api-key", api_key)
        self.child = Child(f"provider-{self.port}", argv, base_env(), logdir)

    async def __aenter__(self) -> Provider:
        self.child.start()
        await self.child.wait_http(f"{self.url}/bench/stats")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.child.stop()

    async def stats(self, since: int = 0) -> dict[str, Any]:
        """{"count": n, "times": [...], "contents": [...]} of messages from index `since` on."""
        url = f"{self.url}/bench/stats"
        async with aiohttp.ClientSession() as http, http.get(url, params={"since": since}) as r:
            result: dict[str, Any] = await r.json()
            return result

    async def wait_count(self, n: int, limit: float, poll: float = 0.05) -> float | None:
        """Wait until the provider holds `n` messages; the monotonic time it did, or None."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if (await self.count()) >= n:
                return time.monotonic()
            await asyncio.sleep(poll)
        return None

    async def first_to(self, phone: str) -> float | None:
        """When the provider accepted the first message to `phone` (wall clock), or None."""
        url = f"{self.url}/bench/to"
        async with aiohttp.ClientSession() as http, http.get(url, params={"phone": phone}) as r:
            at = (await r.json())["at"]
            return None if at is None else float(at)

    async def count(self) -> int:
        url = f"{self.url}/bench/count"
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            return int((await resp.json())["count"])


# -- databases ----------------------------------------------------------------------------------


def sqlite_url(tmp: Path) -> str:
    """A fresh SQLite file's async URL."""
    return f"sqlite+aiosqlite:///{tmp / f'bench-{uuid.uuid4().hex[:8]}.db'}"


def postgres_problem() -> str | None:
    """Why PostgreSQL cannot be used, or None."""
    import psycopg

    try:
        with psycopg.connect(PG_ADMIN, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"PostgreSQL at {PG_ADMIN} is unreachable ({type(exc).__name__})"
    return None


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """CREATE DATABASE bench_<random>; yield its asyncpg URL; DROP it afterwards."""
    import psycopg

    name = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        base = PG_ADMIN.rpartition("/")[0].replace("postgresql://", "postgresql+asyncpg://", 1)
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    """A temporary directory for databases and logs (kept with BENCH_KEEP=1)."""
    path = Path(tempfile.mkdtemp(prefix="smsbot-bench-"))
    try:
        yield path
    finally:
        if not os.environ.get("BENCH_KEEP"):
            for child in sorted(path.rglob("*"), reverse=True):
                child.unlink() if not child.is_dir() else child.rmdir()
            path.rmdir()


def dump(obj: Any) -> str:
    """Compact JSON."""
    return json.dumps(obj, separators=(",", ":"), default=str)
