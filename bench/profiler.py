"""Profile a process the bench measures, from SIGUSR1 until it exits.

    python -m bench.profiler OUT.txt MODULE [ARGS...]

runs `python -m MODULE ARGS...`. On SIGUSR1 it turns cProfile on (the event loop's thread,
where smsbot's Python runs) and notes every thread's CPU time; at exit it writes OUT.txt with
the CPU seconds each thread used meanwhile (SQLite itself runs in aiosqlite's threads, which
cProfile cannot see), the top functions by own time and the smsbot functions by cumulative
time.
"""

from __future__ import annotations

import atexit
import cProfile
import io
import os
import pstats
import re
import runpy
import signal
import sys
import threading
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu() -> dict[int, tuple[str, float]]:
    """tid -> (name, CPU seconds) for every thread of this process."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    result = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tid = int(task.name)
        name = "main (event loop)" if tid == os.getpid() else names.get(tid, "thread")
        result[tid] = (name, (int(fields[11]) + int(fields[12])) / TICK)
    return result


class Profiler:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.profile = cProfile.Profile()
        self.started: float | None = None
        self.cpu0: dict[int, tuple[str, float]] = {}
        self.cpu_last: dict[int, tuple[str, float]] = {}  # threads that exit keep their last

    def watch(self) -> None:
        """Note every thread's CPU time twice a second (threads end before the report)."""
        while True:
            self.cpu_last.update(thread_cpu())
            time.sleep(0.5)

    def start(self, *_: object) -> None:
        if self.started is None:
            self.cpu0 = thread_cpu()
            self.started = time.monotonic()
            threading.Thread(target=self.watch, name="bench-profiler", daemon=True).start()
            self.profile.enable()  # signal handlers run in the main thread: that is profiled

    def report(self) -> None:
        if self.started is None:
            return
        self.profile.disable()
        wall = time.monotonic() - self.started
        groups: dict[str, float] = {}
        self.cpu_last.update(thread_cpu())
        for tid, (name, cpu) in self.cpu_last.items():
            key = name if name.startswith("main") else _group(name)
            groups[key] = groups.get(key, 0.0) + cpu - self.cpu0.get(tid, (name, 0.0))[1]
        lines = [f"wall {wall:.1f} s; CPU seconds by thread (cProfile overhead included):"]
        lines += [
            f"  {cpu:7.2f} s  {name}" for name, cpu in sorted(groups.items(), key=lambda g: -g[1])
        ]
        text = io.StringIO()
        stats = pstats.Stats(self.profile, stream=text)
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats("/smsbot/", 40)
        lines.append(text.getvalue())
        self.out.write_text("\n".join(lines))


def _group(name: str) -> str:
    if "connection_worker" in name:
        return "aiosqlite threads (SQLite runs here; one per connection)"
    return "thread " + re.sub(r"[-_]?[0-9]+", "", name.split(" ")[0])


def main() -> None:
    out, module, *args = sys.argv[1:]
    profiler = Profiler(Path(out))
    signal.signal(signal.SIGUSR1, profiler.start)
    atexit.register(profiler.report)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
