"""Loading flow modules: every mistake is reported with the file, the line and the fix."""

from __future__ import annotations

import shutil
import sys
import textwrap
from pathlib import Path

import pytest

from smsbot.engine.loader import MODULE_PREFIX, FlowLoadError, load_flows
from smsbot.sms.templates import SmsTemplates
from tests.fresh import EXAMPLE_FILES, EXAMPLE_FLOWS, copy_example_flows
from tests.test_flow_api import REPO

HEADER = """\
from smsbot import Conversation, Flow, Message, State


"""


@pytest.fixture
def templates() -> SmsTemplates:
    return SmsTemplates(REPO / "templates")


def write(directory: Path, name: str, body: str) -> Path:
    path = directory / name
    path.write_text(HEADER + textwrap.dedent(body))
    return path


def load_error(directory: Path, templates: SmsTemplates) -> str:
    with pytest.raises(FlowLoadError) as info:
        load_flows(directory, templates)
    return str(info.value)


GOOD = """\
class Greeter(Flow):
    name = "greeter"
    waiting = State(initial=True)
    done = State(final=True)

    @waiting.on("HI")
    async def hi(self, convo: Conversation, msg: Message) -> State | None:
        await convo.reply("keywords/hours.txt")
        return self.done
"""


def test_loads_flows_under_private_module_names(tmp_path: Path, templates: SmsTemplates) -> None:
    write(tmp_path, "json.py", GOOD)  # named like a standard module: must not shadow it
    (tmp_path / "_helpers.py").write_text("raise RuntimeError('never imported')\n")
    (tmp_path / "notes.txt").write_text("not a flow")
    flows = load_flows(tmp_path, templates)
    assert list(flows) == ["greeter"]
    assert flows["greeter"].__module__ == f"{MODULE_PREFIX}.json"
    assert sys.modules["json"].__name__ == "json"


def test_the_example_flows_load(tmp_path: Path, templates: SmsTemplates) -> None:
    assert set(load_flows(copy_example_flows(tmp_path), templates)) == EXAMPLE_FLOWS


def test_the_example_files_are_all_there() -> None:
    # If an example is renamed or added, EXAMPLE_FILES must follow, or the copies miss it.
    shipped = {p.name for p in (REPO / "flows").iterdir() if not p.name.startswith((".", "_"))}
    assert set(EXAMPLE_FILES) <= shipped


def test_typo_in_a_returned_state(tmp_path: Path, templates: SmsTemplates) -> None:
    path = write(tmp_path, "greeter.py", GOOD.replace("return self.done", "return self.dnoe"))
    error = load_error(tmp_path, templates)
    assert f"{path} line 12" in error
    assert "Greeter.hi returns self.dnoe, which is not a State of flow 'greeter'" in error
    assert "did you mean self.done?" in error


def test_typo_in_a_template_name(tmp_path: Path, templates: SmsTemplates) -> None:
    path = write(tmp_path, "greeter.py", GOOD.replace("hours.txt", "hour.txt"))
    error = load_error(tmp_path, templates)
    assert f"{path} line 11" in error
    assert "convo.reply('keywords/hour.txt') names a template that does not exist" in error
    assert "did you mean 'keywords/hours.txt'?" in error


def test_typo_in_a_reminder_template(tmp_path: Path, templates: SmsTemplates) -> None:
    body = GOOD.replace(
        'await convo.reply("keywords/hours.txt")',
        'convo.remind("keywords/nope.txt", at=convo.now)',
    )
    path = write(tmp_path, "greeter.py", body)
    assert f"{path} line 11: convo.remind('keywords/nope.txt')" in load_error(tmp_path, templates)


def test_syntax_error(tmp_path: Path, templates: SmsTemplates) -> None:
    path = write(tmp_path, "broken.py", "class Broken(Flow:\n    pass\n")
    error = load_error(tmp_path, templates)
    assert f"{path} line 4" in error and "fix the syntax" in error


def test_import_error(tmp_path: Path, templates: SmsTemplates) -> None:
    path = write(tmp_path, "needs.py", "import no_such_package_here\n")
    error = load_error(tmp_path, templates)
    assert f"{path} line 4: importing it raised ModuleNotFoundError" in error
    assert "is it installed?" in error
    assert f"{MODULE_PREFIX}.needs" not in sys.modules


def test_duplicate_names_name_both_files(tmp_path: Path, templates: SmsTemplates) -> None:
    first = write(tmp_path, "a.py", GOOD)
    second = write(tmp_path, "b.py", GOOD.replace("class Greeter", "class Hello"))
    error = load_error(tmp_path, templates)
    assert "flow name 'greeter' is used twice" in error
    assert str(first) in error and str(second) in error


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('name = "greeter"', 'name = ""'), 'has no name: add name = "greeter"'),
        (("State(initial=True)", "State()"), "exactly one State(initial=True), found none"),
        (("State(final=True)", "State(final=True, initial=True)"), "found 2 (waiting, done)"),
        (('@waiting.on("HI")', '@done.on("HI")'), "final state 'done'"),
        (('@waiting.on("HI")', '@waiting.on("STOP")'), "listens for STOP"),
        (
            ('@waiting.on("HI")\n', "@waiting.on_timeout\n"),
            "has an on_timeout handler but no timeout",
        ),
        (
            ("State(initial=True)", "State(initial=True, free_text=True)"),
            "is free_text but has no @waiting.otherwise handler to take the answers: add one",
        ),
        (("State(final=True)", "State(final=True, free_text=True)"), "final state 'done'"),
    ],
)
def test_structure_problems(
    tmp_path: Path, templates: SmsTemplates, change: tuple[str, str], message: str
) -> None:
    write(tmp_path, "greeter.py", GOOD.replace(*change))
    assert message in load_error(tmp_path, templates)


def test_every_problem_is_listed(tmp_path: Path, templates: SmsTemplates) -> None:
    write(tmp_path, "a.py", GOOD.replace("self.done", "self.dnoe"))
    write(tmp_path, "b.py", "import no_such_package_here\n")
    assert len(load_error(tmp_path, templates).splitlines()) == 2


def test_missing_directory(tmp_path: Path, templates: SmsTemplates) -> None:
    assert "set SMSBOT_FLOWS_DIR" in load_error(tmp_path / "nope", templates)


def test_bad_keywords_toml_names_the_file(tmp_path: Path, templates: SmsTemplates) -> None:
    shutil.copy(REPO / "flows/keywords.py", tmp_path)
    (tmp_path / "keywords.toml").write_text("[keywords]\nPARKING = 3\n")
    error = load_error(tmp_path, templates)
    assert "keywords.toml: keywords.PARKING must be a reply text" in error
