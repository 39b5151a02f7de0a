"""The user docs keep up with the code: every setting documented, every linked page present."""

from __future__ import annotations

import re
from pathlib import Path

from smsbot import config

REPO = Path(__file__).resolve().parents[1]


def _settings_variables() -> set[str]:
    source = Path(config.__file__).read_text()
    return set(re.findall(r'"(SMSBOT_[A-Z_]+)"', source)) - {"SMSBOT_TEST_", "SMSBOT_"}


def test_every_setting_is_in_the_readme_and_the_configuration_reference() -> None:
    names = _settings_variables()
    assert len(names) > 30
    for doc in ("README.md", "docs/configuration.md"):
        text = (REPO / doc).read_text()
        missing = sorted(n for n in names if n not in text)
        assert missing == [], f"{doc} does not mention {missing}"


def test_the_readme_opens_with_the_two_commands_and_its_links_resolve() -> None:
    readme = (REPO / "README.md").read_text()
    head = readme[:800]
    assert "make run" in head and "make test" in head
    for target in re.findall(r"\]\(([^)#]+)\)", readme):
        if not target.startswith("http"):
            assert (REPO / target).exists(), f"README links to missing {target}"


def test_every_docs_page_link_resolves() -> None:
    for page in (REPO / "docs").glob("*.md"):
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
