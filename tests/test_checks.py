"""`smsbot check`: each check fires on a flow broken on purpose; the example flows pass clean."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from smsbot.config import Settings
from smsbot.engine.checks import CheckOptions, Finding, Report, check_project

REPO = Path(__file__).resolve().parents[1]

BOOKING = '''\
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from smsbot import Conversation, Flow, Message, State


@dataclass
class BookingData:
    name: str


class Booking(Flow):
    """Broken on purpose: every error smsbot check knows is in here."""

    name = "booking"
    start_data = BookingData
    triggers = ("BOOK",)

    asking = State(initial=True, timeout=dt.timedelta(days=10))  # MARK timeout
    limbo = State()  # MARK stuck
    orphan = State(final=True)  # MARK unreachable
    done = State(final=True)

    @asking.on("YES")
    async def yes(self, convo: Conversation, msg: Message) -> State | None:
        await convo.reply("booking/confirm.txt")  # MARK variable
        return self.done

    @asking.on("NO")
    async def no(self, convo: Conversation, msg: Message) -> State | None:
        await convo.reply("booking/nope.txt")  # MARK missing template
        return self.dnoe  # MARK missing state

    @asking.on("MAYBE")
    async def maybe(self, convo: Conversation, msg: Message) -> State | None:
        return self.limbo

    @asking.on("LATER")
    async def later(self, convo: Conversation, msg: Message) -> State | None:
        convo.schedule(self.follow_up, at=convo.now)  # MARK unknown method
        return "done"  # MARK string

    @limbo.otherwise
    async def still(self, convo: Conversation, msg: Message) -> State | None:
        await convo.reply("booking/long.txt")
        return None
'''

REBOOK = """\
from smsbot import Flow, State


class Rebook(Flow):
    name = "rebook"
    triggers = ("book",)  # MARK conflict
    done = State(initial=True, final=True)
"""

SURVEY = '''\
from smsbot import Conversation, Flow, Message, State


class Survey(Flow):
    """Only warnings: no triggers, so it starts unprompted; one return cannot be followed."""

    name = "survey"
    asking = State(initial=True)
    done = State(final=True)

    async def start(self, convo: Conversation) -> State | None:
        await convo.reply("survey/ask.txt")  # MARK first message
        return None

    @asking.otherwise
    async def answer(self, convo: Conversation, msg: Message) -> State | None:
        await convo.reply("survey/thanks.txt", **{"score": msg.text})  # MARK open variables
        return getattr(self, "done")  # MARK unknown return
'''

TEMPLATES = {
    "booking/confirm.txt": "Booked for {{ nme }}.",
    "booking/long.txt": "Please wait. " * 30,  # 390 characters: 3 segments
    "booking/quote.txt": "See you soon!\nWe\u2019re ready \U0001f600",
    "booking/broken.txt": "Hello\n{{ oops",
    "survey/ask.txt": "How was your visit? Reply 1 to 5.",
    "survey/thanks.txt": "Thanks for the {{ scroe }}.",
}


def project(root: Path, flows: dict[str, str], templates: dict[str, str]) -> Path:
    for name, source in flows.items():
        path = root / "flows" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    for name, text in templates.items():
        path = root / "templates" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def line_of(path: Path, mark: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if mark in line)


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Report]:
    root = project(
        tmp_path_factory.mktemp("broken"),
        {"booking.py": BOOKING, "rebook.py": REBOOK, "survey.py": SURVEY},
        TEMPLATES,
    )
    return root, check_project(root / "flows", root / "templates", Settings())


def found(report: Report, check: str) -> list[Finding]:
    return [f for f in report.findings if f.check == check]


@pytest.mark.parametrize(
    ("check", "severity", "file", "mark", "says"),
    [
        ("load", "error", "flows/booking.py", "MARK missing state", "returns self.dnoe"),
        ("load", "error", "flows/booking.py", "MARK missing template", "'booking/nope.txt'"),
        ("bad-return", "error", "flows/booking.py", "MARK string", "return self.done"),
        ("unknown-method", "error", "flows/booking.py", "MARK unknown method", "'follow_up'"),
        ("unreachable-state", "error", "flows/booking.py", "MARK unreachable", "'orphan'"),
        ("stuck-state", "error", "flows/booking.py", "MARK stuck", "'limbo' of flow"),
        ("template-variable", "error", "flows/booking.py", "MARK variable", "'nme'"),
        ("keyword-conflict", "error", "flows/rebook.py", "MARK conflict", "BOOK is a trigger"),
        ("template-syntax", "error", "templates/booking/broken.txt", None, "syntax error"),
        ("ucs2", "warning", "templates/booking/quote.txt", "We", "because of '\u2019'"),
        ("ucs2", "warning", "templates/booking/quote.txt", "We", "because of '\U0001f600'"),
        ("segments", "warning", "templates/booking/long.txt", None, "3 segments"),
        ("opt-out-wording", "warning", "flows/survey.py", "MARK first message", "opt out"),
        ("timeout-after-expiry", "warning", "flows/booking.py", "MARK timeout", "10d"),
        ("unknown-return", "warning", "flows/survey.py", "MARK unknown return", "getattr"),
        ("template-variable", "warning", "flows/survey.py", "MARK open variables", "'scroe'"),
    ],
)
def test_each_check_fires_on_a_broken_flow(
    broken: tuple[Path, Report],
    check: str,
    severity: str,
    file: str,
    mark: str | None,
    says: str,
) -> None:
    root, report = broken
    path = root / file
    line = line_of(path, mark) if mark else None
    hits = [
        f
        for f in found(report, check)
        if f.file == str(path) and says in f.message and (line is None or f.line == line)
    ]
    assert [f.severity for f in hits] == [severity], [str(f) for f in found(report, check)]


def test_the_messages_name_the_fix(broken: tuple[Path, Report]) -> None:
    _, report = broken
    by_check = {f.check: f.message for f in [*report.warnings, *report.errors]}  # errors win
    assert "did you mean 'name'?" in by_check["template-variable"]
    assert "declare it in BookingData" in by_check["template-variable"]
    assert "return self.limbo" not in by_check["unreachable-state"]
    assert "make it final=True" in by_check["stuck-state"]
    assert "each message costs 3x a single SMS" in by_check["segments"]
    assert "opt_out_notice = False on Survey" in by_check["opt-out-wording"]
    assert "SMSBOT_CONVERSATION_EXPIRY" in by_check["timeout-after-expiry"]
    quote, emoji = (f.message for f in found(report, "ucs2"))
    assert "because of '\u2019' (U+2019 RIGHT SINGLE QUOTATION MARK)" in quote
    assert 'replace it with "\'"' in quote  # the GSM-7 look-alike from smsbot.sms.text
    assert "because of '\U0001f600' (U+1F600 GRINNING FACE)" in emoji
    assert "no GSM-7 look-alike" in emoji
    # the survey has a return the check cannot follow: no path verdicts on it
    assert not [f for f in found(report, "unreachable-state") if "survey" in f.message]


def test_the_segment_limit_and_opt_out_words_are_options(broken: tuple[Path, Report]) -> None:
    root, _ = broken
    options = CheckOptions(segment_limit=3, opt_out_words=("visit",))
    report = check_project(root / "flows", root / "templates", Settings(), options)
    assert not found(report, "segments") and not found(report, "opt-out-wording")
    expiry = CheckOptions(conversation_expiry=dt.timedelta(days=30))
    report = check_project(root / "flows", root / "templates", Settings(), expiry)
    assert not found(report, "timeout-after-expiry")


def test_a_binding_smsbot_would_refuse_is_an_error(tmp_path: Path) -> None:
    settings = Settings(numbers={"+447700900100": {"catch_all": "nope"}})
    report = check_project(REPO / "flows", REPO / "templates", settings)
    [config] = found(report, "config")
    assert "catch_all names flow 'nope'" in config.message


def test_the_example_flows_pass_clean() -> None:
    report = check_project(REPO / "flows", REPO / "templates", Settings())
    assert report.findings == []
    assert report.flows == ["appointment", "keywords"]
    assert "appointment/ask.txt" in report.templates


def test_a_first_message_with_opt_out_wording_passes(tmp_path: Path) -> None:
    root = project(
        tmp_path,
        {"survey.py": SURVEY.replace('return getattr(self, "done")', "return self.done")},
        {**TEMPLATES, "survey/ask.txt": "How was it? Reply 1 to 5, or STOP to opt out."},
    )
    report = check_project(root / "flows", root / "templates", Settings())
    assert not found(report, "opt-out-wording")
    assert not found(report, "unknown-return")


def smsbot(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMSBOT_")}
    return subprocess.run(
        [sys.executable, "-m", "smsbot", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_command_exits_1_on_errors_and_0_on_warnings(
    broken: tuple[Path, Report], tmp_path: Path
) -> None:
    root, _ = broken
    out = smsbot("check", "--flows", "flows", "--templates", "templates", cwd=root)
    assert out.returncode == 1, out.stderr
    first = out.stdout.splitlines()[0]
    assert first.startswith("flows/booking.py:") and ": error: " in first
    assert "errors, " in out.stdout and "Traceback" not in out.stderr
    out = smsbot("check", "--format", "json", cwd=root)
    answer = json.loads(out.stdout)
    assert out.returncode == 1 and answer["ok"] is False
    assert {"check", "severity", "file", "line", "message"} <= set(answer["findings"][0])
    only_warnings = project(
        tmp_path, {"survey.py": SURVEY}, {k: v for k, v in TEMPLATES.items() if "survey" in k}
    )
    out = smsbot("check", cwd=only_warnings)
    assert out.returncode == 0, out.stdout
    assert "0 errors, 3 warnings" in out.stdout


def test_the_command_passes_the_example_flows() -> None:
    out = smsbot("check", "--flows", "flows", "--templates", "templates", cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("0 errors, 0 warnings in 2 flows and 10 templates")


def test_a_missing_flows_directory_is_one_error(tmp_path: Path) -> None:
    out = smsbot("check", "--flows", "nowhere", cwd=tmp_path)
    assert out.returncode == 1
    assert "nowhere: error: flows directory nowhere does not exist" in out.stdout
    assert textwrap.dedent(out.stderr) == ""
