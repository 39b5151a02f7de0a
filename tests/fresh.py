"""A fresh project, as a new user has it, and `smsbot serve` started in it as `make run` does."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from tests.processes import free_port

REPO = Path(__file__).resolve().parents[1]
# flows/ as shipped. docs/writing-flows.md invites users to add their own flows there, so tests
# about the examples use a copy of these files, never the whole directory.
EXAMPLE_FLOWS = {"appointment", "keywords"}
EXAMPLE_FILES = ("appointment.py", "appointment_reminders.py", "keywords.py", "keywords.toml")
KEY_LINE = re.compile(r"^export SMSBOT_API_KEY=(\S+)$", re.MULTILINE)


def copy_example_flows(directory: Path) -> Path:
    """Copy the example flows (and nothing a user added to flows/) into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in EXAMPLE_FILES:
        shutil.copy(REPO / "flows" / name, directory)
    return directory


def fresh_project(directory: Path) -> Path:
    """A directory like a fresh clone as far as smsbot can tell: flows/, templates/, examples."""
    copy_example_flows(directory / "flows")
    shutil.copytree(REPO / "templates", directory / "templates", dirs_exist_ok=True)
    # the example data the docs' commands use (docs/campaigns.md)
    shutil.copytree(REPO / "docs" / "examples", directory / "docs" / "examples", dirs_exist_ok=True)
    return directory


def clean_env(**env: str) -> dict[str, str]:
    """This process's environment without any SMSBOT_ setting, plus `env`."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("SMSBOT_")}, **env}


class LocalServer:
    """One `python -m smsbot serve` child; its output (stdout and stderr) goes to a file."""

    def __init__(self, cwd: Path, **env: str) -> None:
        self.cwd = cwd
        self.port = free_port()
        self.sandbox_port = free_port()
        self.env = clean_env(
            SMSBOT_PORT=str(self.port), SMSBOT_SANDBOX_PORT=str(self.sandbox_port), **env
        )
        self.log = cwd / f"serve-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def output(self) -> str:
        """Everything the server printed so far."""
        return self.log.read_text(encoding="utf-8", errors="replace")

    @property
    def api_key(self) -> str | None:
        """The development key from the printed `export SMSBOT_API_KEY=…` line, if any."""
        match = KEY_LINE.search(self.output)
        return match.group(1) if match else None

    def start(self, timeout: float = 60.0) -> LocalServer:
        """Start the server and wait until /healthz answers 200."""
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "smsbot", "serve"],
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"smsbot serve exited: {self.output[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2):
                    return self
            except urllib.error.HTTPError as exc:  # answering, not healthy yet
                exc.close()
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"smsbot serve did not start: {self.output[-2000:]}")
            time.sleep(0.1)  # polling a child process coming up, not waiting for a timer

    def stop(self, timeout: float = 15.0) -> int:
        """Ctrl-C, as a user stops `make run`; return the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        return self.proc.returncode

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
