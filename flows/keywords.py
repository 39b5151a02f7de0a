"""Auto-replies: HOURS and ADDRESS from templates, more keywords from keywords.toml, else a menu.

This flow answers and finishes in the same step, so it never takes over the conversation: a
patient who texts HOURS while an appointment question is open still gets the answer, and the
appointment conversation carries on. It is also the catch-all for messages nothing else wants.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from smsbot import Conversation, Flow, State

# Keywords answered from a template (templates/keywords/*.txt), which may use variables.
TEMPLATES = {"HOURS": "keywords/hours.txt", "ADDRESS": "keywords/address.txt"}


def _load_texts(path: Path) -> dict[str, str]:
    """Read [keywords] WORD = "reply" from the TOML file next to this module."""
    with path.open("rb") as file:
        table = tomllib.load(file).get("keywords", {})
    for word, text in table.items():
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f'{path}: keywords.{word} must be a reply text, like {word} = "..."')
    return {word.upper(): text.strip() for word, text in table.items()}


# Keywords answered with plain text, no Python needed: see keywords.toml.
TEXTS = _load_texts(Path(__file__).with_suffix(".toml"))


@dataclass
class NoData:
    """Started from outside, this flow sends the menu: it takes no data."""


class KeywordReplies(Flow):
    """Answer a keyword with its fixed reply; answer anything else with the list of keywords."""

    name = "keywords"
    start_data = NoData  # a START from outside with data is refused
    triggers = (*TEMPLATES, *TEXTS)  # on every number this flow is bound to
    done = State(initial=True, final=True)  # initial and final: one answer, no conversation

    async def start(self, convo: Conversation) -> State | None:
        msg = convo.message  # the message that triggered the flow (None when started from outside)
        word = msg.keyword(*TEMPLATES, *TEXTS) if msg else None
        if word in TEMPLATES:
            await convo.reply(TEMPLATES[word])
        elif word is not None:
            await convo.say(TEXTS[word])
        else:
            # "STOP please" is not an opt-out (only the bare word is): say how to opt out.
            hint = msg is not None and msg.looks_like_opt_out
            await convo.reply("keywords/menu.txt", keywords=[*TEMPLATES, *TEXTS], opt_out_hint=hint)
        return None
