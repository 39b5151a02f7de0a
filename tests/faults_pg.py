"""A private PostgreSQL server for fault tests: ours alone, so stopping it harms nobody.

The shared server on 5432 is never touched. This one lives in a temporary directory, listens on
a spare loopback port, and is started and stopped with pg_ctl. PostgreSQL refuses to run as
root, so as root every command runs as the `postgres` user (runuser) in a directory it owns.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.processes import free_port

SHARED_PORT = 5432  # the shared test server: never ours to stop
COMMAND_TIMEOUT = 60.0


def find_binaries() -> Path | None:
    """Return the newest /usr/lib/postgresql/*/bin holding initdb and pg_ctl, or None."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    for bin_dir in candidates:
        if (bin_dir / "initdb").is_file() and (bin_dir / "pg_ctl").is_file():
            return bin_dir
    return None


def require_binaries() -> Path:
    """Return the binaries' directory; skip without them (fail if PostgreSQL is required)."""
    bin_dir = find_binaries()
    if bin_dir is None:
        reason = "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql"
        if os.environ.get("SMSBOT_TEST_POSTGRES_URL"):
            pytest.fail(f"{reason} (SMSBOT_TEST_POSTGRES_URL is set, so PostgreSQL is required)")
        pytest.skip(reason)
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
        if shutil.which("runuser") is None:
            pytest.skip("running as root and runuser is missing: cannot run PostgreSQL as postgres")
    return bin_dir


class PrivatePostgres:
    """One throw-away PostgreSQL cluster: init() once, then start() and stop() at will."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = free_port()
        assert self.port != SHARED_PORT
        self.root = Path(tempfile.mkdtemp(prefix="smsbot-faults-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sock"
        self.log = self.root / "postgres.log"
        self.running = False
        self._as_root = os.geteuid() == 0
        self._frozen: list[int] = []

    @property
    def url(self) -> str:
        """The async URL smsbot uses (asyncpg)."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def sync_url(self) -> str:
        """The synchronous URL (psycopg), for migrations."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
        )
        if done.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed: {done.stdout}{done.stderr}\n{log}")

    def init(self) -> None:
        """Create the cluster (trust authentication, superuser `postgres`)."""
        self.sockets.mkdir()
        if self._as_root:
            postgres = pwd.getpwnam("postgres")
            for path in (self.root, self.sockets):
                os.chown(path, postgres.pw_uid, postgres.pw_gid)
        self._run(
            "initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
            "--no-sync",
        )  # fmt: skip

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = (
            f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1"
            " -c fsync=off -c max_connections=100"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-o", options, "start")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`fast`: clients are disconnected, work in flight rolls back)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")
        self.running = False

    def processes(self) -> list[int]:
        """The postmaster's pid and its children's (backends, checkpointer, ...)."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        pids = [postmaster]
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                # the field after the parenthesised command name is the state, then the ppid
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
            if ppid == postmaster:
                pids.append(int(entry.name))
        return pids

    def freeze(self) -> None:
        """SIGSTOP every server process: connections stay open but nothing answers."""
        self._frozen = self.processes()
        for pid in self._frozen:
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT whatever freeze() stopped."""
        for pid in self._frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self._frozen = []

    def close(self) -> None:
        """Stop it if it runs and delete everything it wrote."""
        self.thaw()
        if self.running:
            with contextlib.suppress(Exception):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
