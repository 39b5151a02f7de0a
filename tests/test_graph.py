"""Flow graphs: states, transitions read from decorators and source, Mermaid and DOT output."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from smsbot.engine.conversation import Conversation
from smsbot.engine.flow import Flow, Message, State
from smsbot.engine.graph import START, Edge, FlowGraph, flow_graph, format_duration, to_dot
from smsbot.engine.graph import to_mermaid as mermaid
from smsbot.engine.loader import load_flows
from smsbot.sms.templates import SmsTemplates

REPO = Path(__file__).resolve().parents[1]


def example(name: str) -> type[Flow]:
    return load_flows(REPO / "flows", SmsTemplates(REPO / "templates"))[name]


class Survey(Flow):
    name = "survey"
    asking = State(initial=True, timeout=dt.timedelta(hours=1))
    follow_up = State(timeout=dt.timedelta(minutes=90))
    done = State(final=True)
    skipped = State(final=True)

    async def start(self, convo: Conversation) -> State | None:
        return self.follow_up if convo.data.get("again") else None

    @asking.when(lambda msg: msg.text.isdigit())
    async def score(self, convo: Conversation, msg: Message) -> State | None:
        convo.schedule(self.remind_later, at=convo.now + dt.timedelta(days=1))
        return self.done if msg.text == "5" else self.ask_again()

    def ask_again(self) -> State:
        return self.follow_up

    async def remind_later(self, convo: Conversation) -> State | None:
        return self.skipped

    async def on_send_failed(self, convo: Conversation, error: str) -> State | None:
        return self.skipped


def test_the_appointment_graph_has_every_transition() -> None:
    g = flow_graph(example("appointment"))
    assert g.flow == "appointment" and g.initial == "waiting"
    assert g.states[:2] == ("waiting", "confirmed")
    assert {"cancelled", "handed_over"} <= g.finals
    assert Edge("waiting", "confirmed", "YES / Y / CONFIRM") in g.edges
    assert next(e.label for e in g.edges if e.source == "confirmed") == "NO / CANCEL"
    assert Edge("waiting", "handed_over", "/^(re ?schedul|re ?book|change)/") in g.edges
    # the timeout handler nudges (stays) or hands over, through `return self.waiting`
    assert Edge("waiting", "waiting", "timeout 48h") in g.edges
    assert Edge("waiting", "handed_over", "timeout 48h") in g.edges
    # `unclear` stays (return None) or returns `await self.hand_over(...)`: the helper is followed
    assert Edge("waiting", "waiting", "otherwise") in g.edges
    assert Edge("waiting", "handed_over", "otherwise") in g.edges
    assert not [e for e in g.edges if e.source in g.finals]


def test_the_keywords_graph_starts_with_its_triggers() -> None:
    g = flow_graph(example("keywords"))
    assert g == FlowGraph(
        flow="keywords",
        states=("done",),
        initial="done",
        finals=frozenset({"done"}),
        edges=(Edge(START, "done", "HOURS / ADDRESS / PARKING / PHONE"),),
    )
    assert mermaid(g) == (
        "stateDiagram-v2\n    [*] --> done : HOURS / ADDRESS / PARKING / PHONE\n    done --> [*]\n"
    )


def test_start_predicates_helpers_schedules_and_send_failures_are_followed() -> None:
    g = flow_graph(Survey)
    assert set(g.edges) == {
        Edge(START, "follow_up", "start"),
        Edge("asking", "done", "when lambda"),
        Edge("asking", "follow_up", "when lambda"),  # through the plain helper ask_again()
        Edge("asking", "skipped", "remind_later()"),  # scheduled by the handler
        Edge("asking", "skipped", "send failed"),
        Edge("follow_up", "skipped", "send failed"),
        Edge("asking", START, "timeout 1h"),  # no on_timeout handler: the conversation ends
        Edge("follow_up", START, "timeout 1h30m"),
    }
    text = mermaid(g)
    assert text.startswith("stateDiagram-v2\n    [*] --> asking\n")
    assert "    follow_up --> [*] : timeout 1h30m\n" in text
    assert text.endswith("    done --> [*]\n    skipped --> [*]\n")


def test_dot_output_marks_finals_and_escapes_labels() -> None:
    g = FlowGraph("q", ("a", "b"), "a", frozenset({"b"}), (Edge("a", "b", 'say "hi" \\o/'),))
    dot = to_dot(g)
    assert '"b" [label="b", shape=doublecircle];' in dot
    assert '"a" -> "b" [label="say \\"hi\\" \\\\o/"];' in dot
    assert '"__start__" -> "a";' in dot and '"__end__"' not in dot
    assert mermaid(FlowGraph("q", ("a",), "a", frozenset(), (Edge("a", "a", "#1; x:y"),))) == (
        "stateDiagram-v2\n    [*] --> a\n    a --> a : #35;1#59; x#58;y\n"
    )


def test_graphviz_reads_the_dot_output() -> None:
    if shutil.which("dot") is None:  # CI installs Graphviz and sets the variable (.ci/run)
        if os.environ.get("SMSBOT_TEST_GRAPHVIZ") == "required":
            pytest.fail("Graphviz's dot is missing and SMSBOT_TEST_GRAPHVIZ=required")
        pytest.skip("Graphviz is not installed: apt-get install graphviz to run this test")
    for cls in (example("appointment"), example("keywords"), Survey):
        out = subprocess.run(
            ["dot", "-Tsvg"], input=to_dot(flow_graph(cls)), capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        assert "<svg" in out.stdout


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (dt.timedelta(minutes=30), "30m"),
        (dt.timedelta(minutes=90), "1h30m"),
        (dt.timedelta(hours=48), "48h"),
        (dt.timedelta(days=7), "7d"),
        (dt.timedelta(seconds=45), "45s"),
    ],
)
def test_durations_read_as_written(delta: dt.timedelta, text: str) -> None:
    assert format_duration(delta) == text


@pytest.mark.parametrize("flow", ["appointment", "keywords"])
def test_the_docs_show_the_graphs_smsbot_graph_draws(flow: str) -> None:
    docs = (REPO / "docs" / "writing-flows.md").read_text(encoding="utf-8")
    marker = f"<!-- smsbot graph {flow}; tests/test_graph.py checks it is current -->"
    shown = re.search(re.escape(marker) + r"\n```mermaid\n(.*?)```", docs, re.DOTALL)
    assert shown is not None, f"docs/writing-flows.md lost the marker {marker!r}"
    assert shown[1] == mermaid(flow_graph(example(flow))), (
        f"docs/writing-flows.md shows an old graph of {flow!r}: paste the output of"
        f" `smsbot graph {flow}` under the marker"
    )


def test_the_graph_command_prints_both_formats() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SMSBOT_")}
        return subprocess.run(
            [sys.executable, "-m", "smsbot", "graph", *args],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=env,
            check=False,
        )

    out = run("appointment")
    assert out.returncode == 0 and out.stdout == mermaid(flow_graph(example("appointment")))
    out = run("keywords", "--format", "dot")
    assert out.returncode == 0 and out.stdout == to_dot(flow_graph(example("keywords")))
    out = run("apointment")
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "smsbot: no flow named 'apointment' (did you mean 'appointment'?);"
        " flows: appointment, keywords"
    )
