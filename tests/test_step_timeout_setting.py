"""SMSBOT_STEP_TIMEOUT: how long a flow step may wait before it is cut short.

It parses like the other numeric settings (a number > 0, default pipeline/stepping.STEP_TIMEOUT,
a bad value a one-line error naming it), and what is built from Settings uses it: the Bot's
dispatcher (its batches and timer firings), `smsbot start`, in one process or several, and the
operator API's start-many.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from smsbot.app.server.app import create_app
from smsbot.channels.sandbox import Sandbox
from smsbot.clock import VirtualClock
from smsbot.config import ConfigError, Settings
from smsbot.engine.contract import ConversationSnapshot, DispatchEvent, EchoHandler, StepResult
from smsbot.pipeline.stepping import STEP_TIMEOUT
from smsbot.store.engine import Database
from smsbot.store.models import EventState, events_t, messages_t
from tests.support import Harness, inbound_body, make_bot
from tests.test_cli import smsbot
from tests.test_operator_api import _api

T0 = dt.datetime(2026, 1, 15, 14, 0, tzinfo=dt.UTC)
# Well under the 30 s default: a run that ends within it was cut short by the setting.
WITHIN = 20.0


def load(env: dict[str, str], toml_path: Path) -> Settings:
    return Settings.from_env(env, toml_path=toml_path)


# --- parsing --------------------------------------------------------------------------------


def test_the_default_is_the_step_timeout_constant(tmp_path: Path) -> None:
    assert load({}, tmp_path / "absent.toml").step_timeout == STEP_TIMEOUT == 30.0
    assert load({"SMSBOT_STEP_TIMEOUT": " "}, tmp_path / "absent.toml").step_timeout == 30.0


@pytest.mark.parametrize(("text", "seconds"), [("0.25", 0.25), (" 45 ", 45.0), ("120", 120.0)])
def test_the_variable_sets_it(text: str, seconds: float, tmp_path: Path) -> None:
    assert load({"SMSBOT_STEP_TIMEOUT": text}, tmp_path / "absent.toml").step_timeout == seconds


def test_the_toml_file_sets_it_and_the_variable_wins(tmp_path: Path) -> None:
    path = tmp_path / "smsbot.toml"
    path.write_text("step_timeout = 2.5\n", encoding="utf-8")
    assert load({}, path).step_timeout == 2.5
    assert load({"SMSBOT_STEP_TIMEOUT": "7"}, path).step_timeout == 7.0


@pytest.mark.parametrize("text", ["0", "-1", "abc", "0.0", "nan", "inf", "30s"])
def test_a_bad_value_names_the_variable_and_what_it_must_be(text: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load({"SMSBOT_STEP_TIMEOUT": text}, tmp_path / "absent.toml")
    assert str(error.value) == f"SMSBOT_STEP_TIMEOUT must be a number greater than 0, got {text!r}"


def test_a_bad_file_value_names_the_key_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "smsbot.toml"
    path.write_text("step_timeout = -1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        load({}, path)
    assert str(error.value) == (
        f"step_timeout in {path} (SMSBOT_STEP_TIMEOUT) must be a number greater than 0, got '-1'"
    )


def test_a_bad_value_stops_the_command_with_one_line_not_a_traceback(tmp_path: Path) -> None:
    out = smsbot("check", env={"SMSBOT_STEP_TIMEOUT": "0"}, cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "smsbot: SMSBOT_STEP_TIMEOUT must be a number greater than 0, got '0'"
    ]


# --- the bot's dispatcher -------------------------------------------------------------------


class Hangs:
    """Echo, except the step of 'hang' waits for ever."""

    def __init__(self) -> None:
        self.echo = EchoHandler()
        self.cancelled = 0

    async def handle(
        self, event: DispatchEvent, convo: ConversationSnapshot, now: dt.datetime
    ) -> StepResult:
        if event.payload.get("body") == "hang":
            try:
                await asyncio.Event().wait()  # never set
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return await self.echo.handle(event, convo, now)


async def test_the_bot_cuts_a_step_short_after_the_setting(
    db_url: str, sandbox: Sandbox, aiohttp_client: Any
) -> None:
    clock = VirtualClock(T0)
    handler = Hangs()
    bot = await make_bot(db_url, sandbox, handler, clock, SMSBOT_STEP_TIMEOUT="0.05")
    # every stepping path of the dispatcher has it: event batches and timer firings
    assert bot.dispatcher.step_timeout == 0.05
    assert bot.dispatcher.batches.step_timeout == 0.05
    assert bot.dispatcher.firings.step_timeout == 0.05
    client = await aiohttp_client(create_app(bot, run_workers=False))
    harness = Harness(bot, client, sandbox, clock)
    try:
        assert (await harness.post(inbound_body("evt_hang", "hang"))).status == 200
        other = inbound_body("evt_hi", "hi", sender="+447700900999")
        assert (await harness.post(other)).status == 200
        async with asyncio.timeout(WITHIN):  # with the default the hang would take 30 s
            await bot.run_until_idle()
        async with bot.db.session() as s:
            rows = (await s.execute(select(events_t).order_by(events_t.c.id))).all()
    finally:
        await bot.stop()
    assert handler.cancelled == 1
    hang, hi = rows
    assert hang.state == EventState.PENDING.value and hang.attempts == 1  # retried later
    assert "TimeoutError" in (hang.last_error or "")
    assert hi.state == EventState.DONE.value
    assert [m.content for m in sandbox.messages] == ["You said: hi"]


# --- smsbot start ---------------------------------------------------------------------------

STALL_FLOW = '''
import asyncio

from smsbot import Flow, State


class Stall(Flow):
    """Says hello, except that a start with data stall=yes first waits for ever."""

    name = "stall"
    opt_out_notice = False
    asking = State(initial=True)
    done = State(final=True)

    async def start(self, convo):
        if convo.data.get("stall") == "yes":
            await asyncio.Event().wait()
        await convo.say("Hello")
        return None

    @asking.on("YES")
    async def yes(self, convo, msg):
        return self.done
'''


@pytest.mark.parametrize("jobs", [1, 2])
async def test_smsbot_start_cuts_a_first_step_short_after_the_setting(
    tmp_path: Path, jobs: int
) -> None:
    (tmp_path / "flows").mkdir()
    (tmp_path / "templates").mkdir()
    (tmp_path / "flows" / "stall.py").write_text(STALL_FLOW)
    rows = 300  # two chunks of the spool (app/bulk.BATCH): `--jobs 2` runs two processes
    stalls = {2, rows + 1}  # the first row of the first chunk, the last of the second
    path = tmp_path / "starts.csv"
    path.write_text(
        "to,stall\n"
        + "".join(f"+4474{i:08d},{'yes' if i + 2 in stalls else 'no'}\n" for i in range(rows))
    )
    env = {
        "SMSBOT_DATABASE_URL": f"sqlite:///{tmp_path / 'bulk.db'}",
        "SMSBOT_DEFAULT_SENDER": "+447700900100",
        "SMSBOT_STEP_TIMEOUT": "0.2",
    }
    # with the default each stalled start would hold the run for 30 s
    args = ("start", "stall", "--csv", str(path), "--jobs", str(jobs))
    out = await asyncio.to_thread(smsbot, *args, env=env, cwd=tmp_path, timeout=WITHIN)
    assert out.returncode == 0, out.stderr
    assert f"started {rows} conversation(s) of 'stall' (2 of them queued" in out.stdout
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'bulk.db'}")
    try:
        async with db.session() as s:
            events = (await s.execute(select(events_t.c.event_id, events_t.c.state))).all()
            sent = (await s.execute(select(messages_t.c.phone))).all()
    finally:
        await db.dispose()
    pending = sorted(
        int(e.event_id.rsplit(":", 1)[1]) for e in events if e.state == EventState.PENDING.value
    )
    assert pending == sorted(stalls)  # left to the dispatcher, the run went on
    assert len(events) == rows and len(sent) == rows - len(stalls)


# --- the operator API's start-many ----------------------------------------------------------


async def test_the_api_start_many_cuts_a_first_step_short_after_the_setting(
    db_url: str, sandbox: Sandbox, aiohttp_client: Any, tmp_path: Path
) -> None:
    (tmp_path / "flows").mkdir()
    (tmp_path / "templates").mkdir()
    (tmp_path / "flows" / "stall.py").write_text(STALL_FLOW)
    api = await _api(
        db_url,
        sandbox,
        aiohttp_client,
        SMSBOT_FLOWS_DIR=str(tmp_path / "flows"),
        SMSBOT_TEMPLATES_DIR=str(tmp_path / "templates"),
        SMSBOT_STEP_TIMEOUT="0.2",
    )
    phones = ["+447700900001", "+447700900002", "+447700900003", "+447700900004"]
    rows = [{"to": p, "data": {"stall": "yes" if i == 1 else "no"}} for i, p in enumerate(phones)]
    try:
        assert api.bot.settings.step_timeout == 0.2
        # with the default the stalled start would hold the request for 30 s
        async with asyncio.timeout(WITHIN):
            code, body = await api.call("POST", "/api/flows/stall/start-many", json=rows)
        assert code == 202, body
        assert (body["started"], body["queued"], body["invalid"]) == (4, 1, [])
        async with api.bot.db.session() as s:
            events = (await s.execute(select(events_t.c.event_id, events_t.c.state))).all()
        # the stalled row (line 2) is left to the dispatcher, the others were stepped
        assert sorted((int(e.event_id.rsplit(":", 1)[1]), e.state) for e in events) == [
            (1, EventState.DONE.value),
            (2, EventState.PENDING.value),
            (3, EventState.DONE.value),
            (4, EventState.DONE.value),
        ]
        async with asyncio.timeout(WITHIN):
            await api.bot.run_until_idle()
    finally:
        await api.bot.stop()
    sent = sorted((m.recipient, m.content) for m in sandbox.messages)
    assert sent == [(p, "Hello") for p in phones if p != phones[1]]
