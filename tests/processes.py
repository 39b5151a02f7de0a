"""Real `smsbot serve` processes for multi-process and crash tests."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import IO

import aiohttp

from tests.support import API_KEY, SECRET


def free_port() -> int:
    """Return a loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ServerProcess:
    """One `python -m smsbot serve --echo` child, sending to a sandbox on loopback."""

    def __init__(self, db_url: str, sandbox_url: str, log_path: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("SMSBOT_")},
            "SMSBOT_DATABASE_URL": db_url,
            "SMSBOT_PROVIDER": "divergent",
            "SMSBOT_DIVERGENT_API_KEY": API_KEY,
            "SMSBOT_DIVERGENT_URL": sandbox_url,
            "SMSBOT_WEBHOOK_SECRET": SECRET,
            "SMSBOT_PORT": str(self.port),
            "SMSBOT_SEND_RATE": "10000",
            "SMSBOT_LOG_LEVEL": "WARNING",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    async def start(self, timeout: float = 30.0) -> None:
        """Start the process and wait until /healthz answers."""
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(  # noqa: ASYNC220  (a child we manage, not awaited I/O)
            [sys.executable, "-m", "smsbot", "serve", "--echo"],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        async with aiohttp.ClientSession() as http:
            deadline = asyncio.get_running_loop().time() + timeout
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"smsbot serve exited: {self.log_path.read_text()[-2000:]}")
                try:
                    async with http.get(f"{self.url}/healthz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError(f"smsbot serve did not start: {self.log_path.read_text()}")
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    async def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; return the exit code (smsbot promises to exit within 10 s)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        for _ in range(int(timeout * 20)):
            code = self.proc.poll()
            if code is not None:
                return code
            await asyncio.sleep(0.05)
        self.proc.kill()
        raise TimeoutError(f"smsbot serve did not exit within {timeout} s of SIGTERM")

    def close(self) -> None:
        """Make sure the child is gone (test teardown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self._log is not None:
            self._log.close()
