"""`--profile`: every thread of a measured process, sampled from outside with py-spy.

    profile = Profile(pid, path)      # when the measured load starts
    await profile.start()
    ...
    await profile.stop()              # before the process exits: writes the report to `path`

py-spy (a PyPI package; it reads the process's memory through ptrace, so it needs root or
kernel.yama.ptrace_scope = 0) samples the stack of every thread PROFILE_RATE times a second
with the C frames under the Python ones (`--native`), so SQLite's own C code shows apart from
SQLAlchemy's Python that calls it. Only samples of a running thread count (py-spy leaves out
threads waiting in epoll, a lock or a queue). The CPU seconds of each thread come from
/proc/PID/task, exactly. py-spy pauses the process for each sample: throughput under the
profiler is lower; the proportions are what to read.

The report: wall and CPU seconds per thread; for each busy thread, the share of its samples
by area (where the innermost frame is: SQLite's C library, SQLAlchemy, aiohttp, asyncio,
smsbot, …); the top functions by own samples, all threads; smsbot's functions by inclusive
samples. The raw samples stay next to it (`.raw`; one stack per line, as flamegraph.pl reads).
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

PROFILE_RATE = 100  # samples a second per thread
TICK = os.sysconf("SC_CLK_TCK")

# The innermost Python frame's file decides the area; C frames of SQLite's library win.
AREAS = [
    ("sqlalchemy/", "SQLAlchemy"),
    ("sqlmodel/", "SQLAlchemy"),
    ("aiosqlite/", "aiosqlite"),
    ("asyncpg/", "asyncpg"),
    ("aiohttp/", "aiohttp"),
    ("multidict/", "aiohttp"),
    ("yarl/", "aiohttp"),
    ("asyncio/", "asyncio"),
    ("selectors.py", "asyncio"),
    ("concurrent/", "thread hand-offs"),
    ("threading.py", "thread hand-offs"),
    ("queue.py", "thread hand-offs"),
    ("smsbot/", "smsbot"),
    ("jinja2/", "Jinja"),
    ("markupsafe/", "Jinja"),
    ("json/", "json"),
    ("phonenumbers/", "phonenumbers"),
    ("apscheduler/", "APScheduler"),
    ("pydantic", "pydantic"),
]


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """tid -> (thread name, CPU seconds so far) for every thread of `pid`."""
    result = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        tid = int(task.name)
        result[tid] = (name, (int(fields[11]) + int(fields[12])) / TICK)
    return result


def problem() -> str | None:
    """Why --profile cannot work here, or None."""
    if shutil.which("py-spy") is None and not Path(sys.executable).with_name("py-spy").exists():
        return "py-spy is not installed: .venv/bin/pip install py-spy"
    return None


class Profile:
    """py-spy recording one process, plus its threads' CPU from /proc."""

    def __init__(self, pid: int, out: Path) -> None:
        self.pid = pid
        self.out = out
        self.raw = out.with_suffix(".raw")
        self.proc: asyncio.subprocess.Process | None = None
        self.cpu0: dict[int, tuple[str, float]] = {}
        self.cpu_last: dict[int, tuple[str, float]] = {}
        self.started = 0.0
        self._watch: asyncio.Task[None] | None = None
        self.work: tuple[float, str] | None = None  # (units of work done, their name)

    async def start(self) -> None:
        spy = Path(sys.executable).with_name("py-spy")
        argv = [
            str(spy if spy.exists() else "py-spy"),
            "record",
            "--pid",
            str(self.pid),
            "--threads",
            "--native",
            "--rate",
            str(PROFILE_RATE),
            "--format",
            "raw",
            "--output",
            str(self.raw),
        ]
        log = self.out.with_suffix(".log").open("wb")
        self.proc = await asyncio.create_subprocess_exec(*argv, stdout=log, stderr=log)
        log.close()
        self.cpu0 = thread_cpu(self.pid)
        self.started = time.monotonic()
        self._watch = asyncio.create_task(self._watch_threads())

    async def _watch_threads(self) -> None:
        # Threads that end before the report keep their last reading.
        while True:
            self.cpu_last.update(thread_cpu(self.pid))
            await asyncio.sleep(0.5)

    async def stop(self) -> None:
        """Stop sampling (py-spy writes its samples on SIGINT) and write the report."""
        if self.proc is None or self._watch is None:
            return
        wall = time.monotonic() - self.started
        self._watch.cancel()
        self.cpu_last.update(thread_cpu(self.pid))
        self.proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(self.proc.wait(), 60)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        samples = self.raw.read_text() if self.raw.exists() else ""
        names = _thread_names(samples)  # the OS knows no Python thread names; py-spy does
        cpu: dict[str, float] = collections.defaultdict(float)
        for tid, (label, seconds) in self.cpu_last.items():
            name = "main" if tid == self.pid else names.get(tid, "threads py-spy never saw run")
            cpu[_group(name)] += seconds - self.cpu0.get(tid, (label, 0.0))[1]
        self.out.write_text(report(wall, dict(cpu), samples, self.work))


def spawned(argv: list[str], raw: Path) -> list[str]:
    """`argv` run under py-spy, which samples it and every process it starts (`smsbot start
    --jobs`) into `raw`; its CPU comes from wait4 and is spread over threads by samples
    (`spawned_report`)."""
    spy = Path(sys.executable).with_name("py-spy")
    head = [str(spy if spy.exists() else "py-spy"), "record", "--subprocesses", "--threads"]
    rate = ["--native", "--rate", str(PROFILE_RATE), "--format", "raw", "--output", str(raw)]
    return [*head, *rate, "--", *argv]


def spawned_report(raw: Path, wall: float, cpu_total: float, work: tuple[float, str]) -> str:
    """The report of a `spawned` command: its CPU (all its processes, py-spy's own left out
    only as far as wait4 separates it: read the shares) spread over threads by their samples."""
    samples = raw.read_text() if raw.exists() else ""
    running: collections.Counter[str] = collections.Counter()
    for thread, frames, n in _stacks(samples):
        if _state(frames) == "run":
            running[thread] += n
    total = running.total()
    cpu = {t: cpu_total * n / total for t, n in running.items()} if total else {}
    return report(wall, cpu, samples, work)


def report(
    wall: float, cpu: dict[str, float], raw: str, work: tuple[float, str] | None, top: int = 25
) -> str:
    """The text report from the CPU per thread group and py-spy's raw samples.

    `work`: (how many units of work the window held, their name), for CPU per unit.
    """
    total_cpu = sum(cpu.values())
    per = ""
    if work and work[0] > 0:
        per = f"; {total_cpu / work[0] * 1e6:,.0f} µs of CPU per {work[1]} ({work[0]:,.0f})"
    lines = [f"wall {wall:.1f} s; CPU {total_cpu:.2f} s{per}; by thread (from /proc, exact):"]
    lines += [f"  {s:7.2f} s  {name}" for name, s in sorted(cpu.items(), key=lambda g: -g[1])]
    stacks = _stacks(raw)
    states: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for thread, frames, n in stacks:
        states[thread][_state(frames)] += n
    running = [(t, f, n) for t, f, n in stacks if _state(f) == "run"]
    total = sum(n for _, _, n in running)
    lines.append(
        f"\npy-spy at {PROFILE_RATE}/s: {total:,} samples of running threads; left out: threads"
        " idle in a queue, lock, epoll or sleep, and threads waiting for the GIL:"
    )
    for thread, counted in sorted(states.items(), key=lambda t: -t[1].total()):
        lines.append(
            f"  {thread}: {counted['run']:,} running, {counted['gil']:,} waiting for the GIL"
            f" ({counted['gil'] / max(1, counted['run'] + counted['gil']):.0%} of its wanted"
            f" time), {counted['wait']:,} idle"
        )
    if not total:
        return "\n".join(lines) + "\n"
    by_thread: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    for thread, frames, n in running:
        by_thread[thread][_area(frames)] += n
        own[f"{_function(frames[-1])}  [{thread}]"] += n
        for name in {_function(f) for f in frames if "smsbot/" in f}:
            if not any(outer in name for outer in OUTERMOST):
                inclusive[name] += n
    # Each thread's CPU (exact) spread over areas by its samples: seconds that add up.
    seconds: dict[str, float] = collections.defaultdict(float)
    for thread, areas in by_thread.items():
        for area, n in areas.items():
            seconds[area] += cpu.get(thread, 0.0) * n / areas.total()
    lines.append("\nall threads, CPU by area (each thread's CPU spread by its samples):")
    for area, sec in sorted(seconds.items(), key=lambda item: -item[1]):
        unit = f"  {sec / work[0] * 1e6:7,.0f} µs/{work[1]}" if work and work[0] > 0 else ""
        lines.append(f"  {sec / max(total_cpu, 1e-9):6.1%}  {sec:7.2f} s{unit}  {area}")
    for thread, areas in sorted(by_thread.items(), key=lambda t: -cpu.get(t[0], 0.0)):
        count = areas.total()
        lines.append(f"\n{thread}: {cpu.get(thread, 0.0):.2f} s CPU, {count:,} samples, by area:")
        lines += [f"  {n / count:6.1%}  {area}" for area, n in areas.most_common()]
    lines.append(f"\ntop {top} functions by own samples (innermost frame), all threads:")
    lines += [f"  {n / total:6.1%}  {name}" for name, n in own.most_common(top)]
    lines.append(f"\nsmsbot functions by inclusive samples (top {top + 15}):")
    lines += [f"  {n / total:6.1%}  {name}" for name, n in inclusive.most_common(top + 15)]
    return "\n".join(lines) + "\n"


# Where a thread waits for work: a sample whose innermost Python frame is one of these.
WAITS = re.compile(
    r"^(Queue\.get \(queue|Condition\.wait \(threading|Event\.wait \(threading"
    r"|Thread\._wait_for_tstate_lock|_worker \(concurrent/futures/thread"
    r"|\w*Selector\.select \(selectors|sleep \(|Connection\.run \(aiosqlite"
    r"|_connection_worker_thread \(aiosqlite)"
)
OUTERMOST = ("smsbot/__main__.py", "smsbot/app/cli.py", "smsbot/app/serve.py", "Bot._supervise")


def _state(frames: list[str]) -> str:
    """ "wait" (a thread idle in a queue, lock, epoll or sleep), "gil" (wants to run, waits
    for the GIL: CPython's take_gil sleeps in pthread_cond_*wait) or "run"."""
    python = [i for i, f in enumerate(frames) if re.search(r"\.py:\d+\)$", f)]
    inner = frames[python[-1]] if python else ""
    below = frames[python[-1] + 1 :] if python else frames
    if any("gc_collect" in f for f in below):
        return "run"
    if WAITS.match(inner):
        return "wait"
    if any(f.startswith("pthread_cond_") for f in below):
        return "gil"
    return "run"


def _thread_names(raw: str) -> dict[int, str]:
    """tid -> Python thread name, from the first frame of py-spy's raw lines."""
    names = {}
    for m in re.finditer(r"^thread \((\d+)\): ([^;]*);", raw, re.MULTILINE):
        names[int(m[1])] = m[2]
    return names


_PROCESSES = re.compile(r'^(process \d+:"[^"]*";)+')


def _stacks(raw: str) -> list[tuple[str, list[str], int]]:
    """(thread group, frames outermost first, count) from py-spy's raw format."""
    result = []
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        # --subprocesses: each process of the line's tree first, as `process PID:"ARGV";`
        # (an argv may hold ";", as multiprocessing's `-c "…; spawn_main(…)"` does)
        stack = _PROCESSES.sub("", stack)
        first, *frames = stack.split(";")
        # first: "thread (TID): NAME" -- one group per thread name without its number
        name = first.partition(": ")[2] or first
        result.append((_group(name), frames or [first], int(count)))
    return result


SYSCALLS = re.compile(
    r"(epoll_wait|epoll_ctl|send|recv|sendto|recvfrom|sendmsg|recvmsg|read|write|pread64"
    r"|pwrite64|fdatasync|fsync|getpid|sem_post|futex|pthread_cond_signal)\b"
)
HAND_OFFS = ("_write_to_self", "call_soon_threadsafe", "run_in_executor", "set_result")


def _area(frames: list[str]) -> str:
    """Where a running sample's innermost frames are."""
    python = [i for i, f in enumerate(frames) if re.search(r"\.py:\d+\)$", f)]
    inner = frames[python[-1]] if python else ""
    below = frames[python[-1] + 1 :] if python else frames
    leaf = frames[-1]
    if any("libsqlite3" in f or "_sqlite" in f for f in below):
        return "SQLite: file I/O (syscalls)" if SYSCALLS.match(leaf) else "SQLite (C library)"
    if any("gc_collect" in f for f in below):
        return "garbage collection"
    if any(h in f for f in frames[python[-3] if len(python) > 2 else 0 :] for h in HAND_OFFS):
        return "thread hand-offs"
    if SYSCALLS.match(leaf):
        return "system calls (sockets, wake-ups)"
    for marker, area in AREAS:
        if marker in inner:
            return area
    if not inner:
        return "C, no Python frame"
    return "other: " + inner.rpartition("(")[2].split("/")[0].split(".py")[0]


def _function(frame: str) -> str:
    """A frame without its line number: `name (file.py)`."""
    return re.sub(r":\d+\)$", ")", frame)


def _group(name: str) -> str:
    """Threads of one pool under one name: "smsbot-sqlite_0" -> "smsbot-sqlite"."""
    if name.startswith("main") or name == "MainThread":
        return "main (event loop)"
    return re.sub(r"([-_]?\d+)+$", "", name.split(" (")[0]) or name
