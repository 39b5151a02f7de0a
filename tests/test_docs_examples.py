"""Every shell example in README.md and docs/ runs as written, on a fresh project and database.

The examples run in order, page by page, against one `smsbot serve` started as `make run` starts
it (sandbox provider, SQLite, the example flows) in a fresh directory — only on free loopback
ports instead of 8080 and 8081, and with the development key it printed pasted in, as the README
says to. A block the reader must fill in (it holds `…`) cannot run as written and is skipped;
so are the few kinds listed in `not_run`, each with the reason.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fresh import LocalServer, clean_env, fresh_project
from tests.processes import free_port

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SMSBOT = Path(sys.executable).with_name("smsbot")  # the console script beside this Python
BLOCK = re.compile(r"^```(?:sh|bash|shell)\n(.*?)^```", re.MULTILINE | re.DOTALL)
# A chat example is interactive; the test types this, as a user would, and leaves.
CHAT_INPUT = "HOURS\n/quit\n"


@dataclasses.dataclass(frozen=True)
class Example:
    """One ```sh block of a page."""

    page: Path
    line: int
    text: str

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def examples() -> list[Example]:
    found = []
    for page in PAGES:
        source = page.read_text(encoding="utf-8")
        for match in BLOCK.finditer(source):
            line = source.count("\n", 0, match.start()) + 1
            found.append(Example(page, line, match.group(1)))
    return found


def not_run(example: Example) -> str | None:
    """Why a block is not run here, or None if it is."""
    text = example.text
    commands = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    if any("…" in line for line in commands):  # in an output comment (# {"id": "sb_…"}) it is fine
        return "has a placeholder (…) the reader fills in"
    if text.startswith("make "):
        return "`make run` is `smsbot serve` in a fresh clone, as here; `make test` is this suite"
    if text.startswith("pip install"):
        return "an install line: test_install_lines_name_this_distribution checks it"
    if "pytest " in text.split("\n", 1)[0]:
        return "runs part of this suite, in the repository (here it is running already)"
    if text.lstrip().startswith("docker "):
        return "needs a Docker engine: tests/test_docker.py checks the files it uses"
    return None


RUN = [e for e in examples() if not_run(e) is None]
LONG_RUNNING = re.compile(r"^(?:\.venv/bin/)?smsbot (?:serve|sandbox)\b")


def prepared(text: str, ports: dict[str, int]) -> str:
    """The block as the test runs it: its ports moved, its `smsbot` this installation's."""
    for old, new in ports.items():
        text = text.replace(old, str(new))
    # a command, also inside a command substitution: "$(smsbot keys create …)"
    text = re.sub(
        r"(?m)(^|\s|\$\()(?:\.venv/bin/)?smsbot ", rf"\g<1>{shlex.quote(str(SMSBOT))} ", text
    )
    # curl fails on an HTTP error answer, and never waits long
    return 'curl() { command curl --fail-with-body --max-time 20 "$@"; }\n' + text


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    project = fresh_project(tmp_path_factory.mktemp("fresh-clone"))
    with LocalServer(project) as running:
        yield running
    assert "Traceback" not in running.output, running.output
    assert " ERROR " not in running.output, running.output


def test_the_examples_are_found() -> None:
    assert len(RUN) >= 10  # a broken pattern would quietly test nothing
    assert any("sandbox/inbound" in e.text for e in RUN)
    assert any("api/flows/appointment/start" in e.text for e in RUN)
    assert shutil.which("curl") is not None, "the README's examples use curl"


@pytest.mark.parametrize("example", RUN, ids=lambda e: e.name)
def test_example_runs_as_written(example: Example, server: LocalServer) -> None:
    assert server.api_key is not None, "make run must print export SMSBOT_API_KEY=…"
    env = clean_env(SMSBOT_API_KEY=server.api_key)
    if LONG_RUNNING.match(example.text):
        run_until_listening(example, server, env)
        return
    ports = {"8080": server.port, "8081": server.sandbox_port}
    out = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", prepared(example.text, ports)],
        cwd=server.cwd,
        env=env,
        input=CHAT_INPUT if " chat" in example.text else None,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    said = out.stdout + out.stderr
    assert out.returncode == 0, f"{example.name} failed:\n{example.text}\n{said}"
    assert "Traceback" not in said, said
    # the sandbox's /sandbox/inbound answers 200 and tells the bot's own status in its body
    assert not re.search(r'"status": [45]\d\d', out.stdout), out.stdout
    if " chat" in example.text:
        assert "bot> " in out.stdout, out.stdout


def run_until_listening(example: Example, server: LocalServer, env: dict[str, str]) -> None:
    """Start a long-running example (`smsbot sandbox …`) on a port of its own; stop it once up."""
    port = free_port()
    text = prepared(example.text, {"8081": port, "8080": server.port})
    proc = subprocess.Popen(
        ["bash", "-c", "exec " + text.split("\n", 1)[1]],
        cwd=server.cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:  # poll the child coming up
            assert proc.poll() is None, f"{example.name} exited: {proc.communicate()[0]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/sandbox/messages"):
                    break
            except urllib.error.URLError:
                assert time.monotonic() < deadline, f"{example.name} did not start"
                time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=15)[0]
    assert "Traceback" not in output, output


def test_install_lines_name_this_distribution() -> None:
    # `smsbot` on PyPI is an unrelated package: no install line may fetch it by that name.
    pyproject = (REPO / "pyproject.toml").read_text()
    distribution = re.search(r'(?m)^name = "([^"]+)"', pyproject)
    assert distribution is not None and distribution.group(1) == "smsbot-flows"
    lines = [
        line
        for page in PAGES
        for line in page.read_text(encoding="utf-8").splitlines()
        if "pip install" in line
    ]
    assert lines
    for line in lines:
        words = shlex.split(line.split("pip install", 1)[1].split("#")[0])
        named = [w for w in words if re.fullmatch(r"smsbot(\[.*\])?([<>=!~].*)?", w)]
        assert not named, f"{line!r} installs the unrelated PyPI package 'smsbot'"
