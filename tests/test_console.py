"""The web console through the real app and aiohttp's test client: sign-in, sessions, CSRF,
the security headers, every page's content, retrying parked events, moving the clock, results.

The browser tests (tests/test_console_browser.py) drive the same pages in Chromium.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import create_engine, delete, pool, select, update

from smsbot.app.assembly import build_providers
from smsbot.app.console.render import HERE
from smsbot.app.console.security import SESSION_LIFETIME, Sessions
from smsbot.app.contacts_erase import erase, subject_data
from smsbot.app.server.app import create_app
from smsbot.app.server.keys import SANDBOX
from smsbot.channels.sandbox import Sandbox
from smsbot.clock import SystemClock, VirtualClock
from smsbot.config import Secret, Settings
from smsbot.engine.runtime import FlowRuntime
from smsbot.pipeline.bot import Bot
from smsbot.store.engine import Database
from smsbot.store.models import (
    EventState,
    contact_fields_t,
    contact_groups_t,
    contacts_t,
    conversations_t,
    events_t,
    opt_outs_t,
    state_changes_t,
)

REPO = Path(__file__).resolve().parents[1]
KEY = "console-key-1234567890"  # at least 16 characters, as SMSBOT_API_KEY must be
VN = "+447700900100"
PHONE = "+447700900123"
T0 = dt.datetime(2026, 1, 15, 9, 0, tzinfo=dt.UTC)
STARTS_AT = "2026-01-20T10:30:00+00:00"
SAM = {"name": "Sam", "starts_at": STARTS_AT, "location": "Riverside Clinic"}
CSRF = re.compile(r'name="csrf_token" value="([^"]*)"')
# Every GET page and fragment; {id} is a conversation's id.
PAGES = [
    "/console/",
    "/console/conversations",
    "/console/conversations/{id}",
    "/console/conversations/{id}/live",
    "/console/events",
    "/console/simulator",
    "/console/simulator/thread",
    "/console/flows",
    "/console/results",
    "/console/results.csv?flow=appointment",
    "/console/people",
    "/console/people/{id}",
    "/console/health",
    "/console/health/live",
    "/console/no-such-page",
]
FLAKY = '''
from pathlib import Path
from smsbot import Conversation, Flow, FlowError, State


class Flaky(Flow):
    """Fails while a file named `broken` sits beside it: a parked event to retry."""

    name = "flaky"
    done = State(initial=True, final=True)

    async def start(self, convo: Conversation) -> State | None:
        if (Path(__file__).parent / "broken").exists():
            raise FlowError("flaky is broken")
        await convo.say("flaky started")
        return None
'''


SURVEY = '''
from smsbot import Conversation, Flow, Message, State


class Survey(Flow):
    """Texting SURVEY starts it: one question, then thanks (a conversation a keyword starts)."""

    name = "survey"
    triggers = ("SURVEY",)
    asking = State(initial=True, free_text=True)
    done = State(final=True)

    async def start(self, convo: Conversation) -> State | None:
        await convo.say("How did we do, 1 to 5?")
        return None

    @asking.otherwise
    async def answer(self, convo: Conversation, msg: Message) -> State | None:
        await convo.say("Thank you")
        return self.done
'''


def project(tmp: Path) -> Path:
    """The example flows and templates, plus the flaky flow and a keyword-started survey."""
    shutil.copytree(REPO / "flows", tmp / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "templates", tmp / "templates")
    (tmp / "flows" / "flaky.py").write_text(FLAKY)
    (tmp / "flows" / "survey.py").write_text(SURVEY)
    return tmp


@dataclasses.dataclass
class Console:
    """A bot with the sandbox provider behind its real app, and a browser-like client."""

    bot: Bot
    client: TestClient[Any, Any]
    sandbox: Sandbox
    clock: VirtualClock
    flows: Path

    async def sign_in(self, key: str = KEY, next_page: str = "/console/") -> Any:
        page = await self.client.get("/console/sign-in")
        token = CSRF.search(await page.text())
        assert token is not None
        form = {"csrf_token": token[1], "key": key, "next": next_page}
        return await self.client.post("/console/sign-in", data=form, allow_redirects=False)

    async def csrf(self, path: str = "/console/conversations") -> str:
        found = CSRF.search(await (await self.client.get(path)).text())
        assert found is not None, path
        return found[1]

    async def post(self, path: str, form: dict[str, str]) -> Any:
        data = {"csrf_token": await self.csrf(), **form}
        return await self.client.post(path, data=data, allow_redirects=False)

    async def text(self, path: str, status: int = 200) -> str:
        resp = await self.client.get(path, allow_redirects=False)
        body = await resp.text()
        assert resp.status == status, (path, resp.status, body[:300])
        return body

    async def settle(self) -> None:
        """Run the bot until idle, receipts included."""
        for _ in range(10):
            work = await self.bot.fire_due_timers() + await self.bot.run_until_idle()
            await self.sandbox.wait_for_receipts()
            work += await self.bot.run_until_idle()
            if not work:
                return

    async def start(self, flow: str, data: dict[str, Any], phone: str = PHONE) -> None:
        form = {"flow": flow, "phone": phone, "number": VN, "data": json.dumps(data)}
        resp = await self.post("/console/simulator/start", form)
        assert resp.status == 303, await resp.text()
        await self.settle()

    async def send(self, text: str, phone: str = PHONE) -> None:
        resp = await self.post(
            "/console/simulator/send", {"phone": phone, "number": VN, "text": text}
        )
        assert resp.status == 303, await resp.text()
        await self.settle()

    async def convo_id(self, phone: str = PHONE) -> int:
        async with self.bot.db.session() as s:
            found = await s.execute(
                select(conversations_t.c.id).where(conversations_t.c.phone == phone)
            )
            return int(found.scalar_one())


def console_settings(db_url: str, flows: Path, **extra: str) -> Settings:
    env = {
        "SMSBOT_DATABASE_URL": db_url,
        "SMSBOT_PROVIDER": "sandbox",
        "SMSBOT_API_KEY": KEY,
        "SMSBOT_DEFAULT_SENDER": VN,
        "SMSBOT_SEND_RATE": "1000",
        "SMSBOT_STEP_MAX_ATTEMPTS": "1",
        "SMSBOT_FLOWS_DIR": str(flows / "flows"),
        "SMSBOT_TEMPLATES_DIR": str(flows / "templates"),
        **extra,
    }
    return Settings.from_env(env, toml_path=Path("/nonexistent/smsbot.toml"))


@contextlib.asynccontextmanager
async def open_console(
    db_url: str,
    tmp_path: Path,
    aiohttp_client: Any,
    *,
    workers: bool = False,
    workspaces: dict[str, dict[str, Any]] | None = None,
    **extra: str,
) -> AsyncIterator[Console]:
    """The console over a fresh bot; `workspaces`: [workspaces.NAME] tables, as in smsbot.toml."""
    flows = project(tmp_path)
    settings = console_settings(db_url, flows, **extra)
    if workspaces:
        settings = settings.replace(workspace_tables=workspaces)
    clock = VirtualClock(T0)
    sandbox = Sandbox(webhook_secret=settings.webhook_secrets()[0], clock=clock)
    url = await sandbox.start()
    db = Database(db_url)
    await db.create_all()
    bot = Bot(
        settings,
        providers=build_providers(settings, sandbox_url=url),
        handler=FlowRuntime.from_settings(settings),
        clock=clock,
        db=db,
        poll_interval=0.01,
    )
    app = create_app(bot, run_workers=workers)
    app[SANDBOX] = sandbox
    client = await aiohttp_client(app)
    sandbox.webhook_url = str(client.make_url("/webhooks/divergent"))
    try:
        yield Console(bot, client, sandbox, clock, flows)
    finally:
        await sandbox.stop()


@pytest.fixture
async def console(db_url: str, tmp_path: Path, aiohttp_client: Any) -> AsyncIterator[Console]:
    async with open_console(db_url, tmp_path, aiohttp_client) as c:
        yield c


@pytest.fixture
async def signed_in(console: Console) -> Console:
    resp = await console.sign_in()
    assert resp.status == 303
    return console


# --- sign-in, sessions, CSRF, headers ----------------------------------------------------------


async def test_without_a_session_every_page_redirects_to_sign_in_and_shows_nothing(
    console: Console,
) -> None:
    await console.sign_in()
    await console.start("appointment", SAM)
    convo = await console.convo_id()
    console.client.session.cookie_jar.clear()
    for path in PAGES:
        resp = await console.client.get(path.format(id=convo), allow_redirects=False)
        assert resp.status == 303, path
        assert resp.headers["Location"].startswith("/console/sign-in?next="), path
        body = await resp.text()
        assert PHONE not in body and "Sam" not in body, path
        htmx = await console.client.get(path.format(id=convo), headers={"HX-Request": "true"})
        assert htmx.status == 401 and htmx.headers["HX-Redirect"].startswith("/console/sign-in")
    for path in ("/console/simulator/send", "/console/events/1/retry", "/console/clock/advance"):
        resp = await console.client.post(path, data={"text": "hi"}, allow_redirects=False)
        assert resp.status == 303, path
    assert (await console.client.get("/console/static/console.css")).status == 200


async def test_signing_in_opens_a_strict_httponly_session(console: Console) -> None:
    wrong = await console.sign_in("not-the-key")
    assert wrong.status == 401
    assert "not an operator key" in await wrong.text()
    resp = await console.sign_in(next_page="/console/health")
    assert (resp.status, resp.headers["Location"]) == (303, "/console/health")
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console" in cookie
    assert "Secure" not in cookie  # plain http on loopback
    assert KEY not in cookie
    assert (await console.client.get("/console/health")).status == 200


async def test_behind_tls_the_cookie_is_secure(console: Console) -> None:
    page = await console.client.get("/console/sign-in", headers={"X-Forwarded-Proto": "https"})
    assert "Secure" in page.headers["Set-Cookie"]
    token = CSRF.search(await page.text())
    assert token is not None
    resp = await console.client.post(
        "/console/sign-in",
        data={"csrf_token": token[1], "key": KEY},
        # the client keeps Secure cookies for https: send it as the browser would
        headers={"X-Forwarded-Proto": "https", "Cookie": f"smsbot_console_signin={token[1]}"},
        allow_redirects=False,
    )
    assert resp.status == 303 and "Secure" in resp.headers["Set-Cookie"]


async def test_the_sign_in_form_needs_its_token_and_goes_only_to_console_pages(
    console: Console,
) -> None:
    resp = await console.client.post("/console/sign-in", data={"key": KEY}, allow_redirects=False)
    assert resp.status == 403 and "Set-Cookie" not in resp.headers
    for evil in ("//evil.example/x", "https://evil.example/", "/console/..//evil", "/other"):
        console.client.session.cookie_jar.clear()
        resp = await console.sign_in(next_page=evil)
        assert resp.headers["Location"] == "/console/", evil


async def test_too_many_wrong_keys_are_refused_for_a_while(console: Console) -> None:
    for _ in range(10):
        assert (await console.sign_in("wrong")).status == 401
    assert (await console.sign_in()).status == 429  # even the right key, for now


async def test_forms_without_the_csrf_token_change_nothing(signed_in: Console) -> None:
    c = signed_in
    for token in (None, "forged"):
        form = {"phone": PHONE, "number": VN, "text": "HOURS"}
        if token:
            form["csrf_token"] = token
        resp = await c.client.post("/console/simulator/send", data=form, allow_redirects=False)
        assert resp.status == 403
        assert "security token" in await resp.text()
    await c.settle()
    assert c.sandbox.messages == []
    header = {"X-CSRF-Token": await c.csrf()}
    resp = await c.client.post(
        "/console/simulator/send",
        data={"phone": PHONE, "number": VN, "text": "HOURS"},
        headers=header,
        allow_redirects=False,
    )
    assert resp.status == 303  # htmx sends the token as a header instead


async def test_every_answer_carries_the_security_headers_and_no_inline_script(
    signed_in: Console,
) -> None:
    await signed_in.start("appointment", SAM)
    convo = await signed_in.convo_id()
    for path in [*PAGES, "/console/sign-in"]:
        resp = await signed_in.client.get(path.format(id=convo), allow_redirects=False)
        csp = resp.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe" not in csp, path
        assert "frame-ancestors 'none'" in csp
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        body = await resp.text()
        assert not re.search(r"<script(?![^>]*\bsrc=)", body), path  # no inline script
        assert not re.search(r"\son[a-z]+=", body), path  # no inline event handlers
        assert not re.search(r"\sstyle=", body), path  # no inline style


async def test_sign_out_ends_the_session_and_its_cookie_cannot_be_replayed(
    signed_in: Console,
) -> None:
    c = signed_in
    cookie = next(m for m in c.client.session.cookie_jar if m.key == "smsbot_console").value
    resp = await c.post("/console/sign-out", {})
    assert (resp.status, resp.headers["Location"]) == (303, "/console/sign-in")
    assert 'smsbot_console=""' in resp.headers["Set-Cookie"]
    assert (await c.client.get("/console/health", allow_redirects=False)).status == 303
    replay = await c.client.get(
        "/console/health", headers={"Cookie": f"smsbot_console={cookie}"}, allow_redirects=False
    )
    assert replay.status == 303


def test_a_session_is_signed_expires_and_ends_when_the_key_changes() -> None:
    now = [1_000_000.0]
    sessions = Sessions(now=lambda: now[0])
    key = Secret("k1")
    cookie = sessions.open(key, "admin")
    session = sessions.read(key, cookie)
    assert session is not None and session.who == "admin" and len(session.csrf) == 32
    assert session.is_admin and session.workspace == "default"
    sid, issued, who, scope, workspace, mac = cookie.split(".")
    assert sessions.read(key, f"{sid}.{issued}.cm9vdA.{scope}.{workspace}.{mac}") is None
    assert sessions.read(key, f"{sid}.{int(issued) + 1}.{who}.{scope}.{workspace}.{mac}") is None
    assert sessions.read(key, f"{sid}.{issued}.{who}.{scope}.b.{mac}") is None  # tampered
    assert sessions.read(Secret("k2"), cookie) is None  # the key changed
    assert sessions.read(None, cookie) is None  # the console was switched off
    now[0] += SESSION_LIFETIME - 1
    assert sessions.read(key, cookie) is not None
    now[0] += 2
    assert sessions.read(key, cookie) is None


async def test_with_no_operator_key_the_console_is_off(
    db_url: str, tmp_path: Path, aiohttp_client: Any
) -> None:
    async with open_console(db_url, tmp_path, aiohttp_client, SMSBOT_API_KEY="") as c:
        page = await c.text("/console/sign-in")
        assert "no operator key is set" in page and "SMSBOT_API_KEY" in page
        assert (await c.sign_in("")).status == 401
        assert (await c.sign_in("anything")).status == 401


def test_the_vendored_htmx_is_the_pinned_release() -> None:
    script = (HERE / "static" / "htmx-2.0.11.min.js").read_bytes()
    digest = "d6fdc75f204e6bdefa99b69bf1e6d4ac69b8a364f77929f45c13476b4000f717"
    assert hashlib.sha256(script).hexdigest() == digest
    assert "htmx-2.0.11.min.js" in (HERE / "templates" / "base.html").read_text()


# --- conversations -----------------------------------------------------------------------------


async def test_the_list_filters_by_number_flow_state_and_phone(signed_in: Console) -> None:
    c = signed_in
    await c.start("appointment", SAM)
    await c.send("HOURS", phone="+447700900456")
    page = await c.text("/console/conversations")
    assert PHONE in page and "+447700900456" in page
    assert page.index("+447700900456") < page.index(PHONE)  # newest activity first
    waiting = await c.text("/console/conversations?flow=appointment&state=waiting")
    assert PHONE in waiting and "+447700900456" not in waiting
    assert "+447700900456" in await c.text("/console/conversations?flow=none")
    by_phone = await c.text("/console/conversations?phone=07700+900456")
    assert "+447700900456" in by_phone and PHONE not in by_phone
    assert PHONE in await c.text(f"/console/conversations?number={VN.replace('+', '%2B')}")
    assert "No conversations match" in await c.text("/console/conversations?number=07700900999")
    bad = await c.text("/console/conversations?phone=hello&page=0", status=400)
    assert "Phone:" in bad and "Page must be" in bad


async def test_the_list_is_paginated(signed_in: Console) -> None:
    c = signed_in
    async with c.bot.db.session() as s, s.begin():
        await s.execute(
            conversations_t.insert(),
            [
                {
                    "virtual_number": VN,
                    "phone": f"+4477009{n:05d}",
                    "data": {},
                    "version": 0,
                    "last_activity_at": T0 + dt.timedelta(minutes=n),
                }
                for n in range(30)
            ],
        )
    first = await c.text("/console/conversations")
    assert "+447700900029" in first and "+447700900000" not in first
    assert "Older →" in first and "Newer" not in first
    second = await c.text("/console/conversations?page=2")
    assert "+447700900000" in second and "+447700900029" not in second
    assert "← Newer" in second and "Older" not in second


async def test_a_timeline_shows_messages_statuses_timers_and_state(signed_in: Console) -> None:
    c = signed_in
    await c.start("appointment", SAM)
    await c.send("YES")
    page = await c.text(f"/console/conversations/{await c.convo_id()}")
    assert "Hi Sam, your appointment at Riverside Clinic" in page
    assert "GSM-7" in page and "1 segment" in page
    assert 'id="current-flow">appointment' in page and 'id="current-state">confirmed' in page
    history = re.findall(r"status-(\w+)", page.split("Thanks Sam")[1].split("</li>\n    </li>")[0])
    assert history[:4] == ["queued", "accepted", "dispatched", "delivered"]
    assert "reminder" in page and "2026-01-19 10:30:00 UTC" in page  # pending, due the day before
    assert "not opted out" in page
    live = await c.text(f"/console/conversations/{await c.convo_id()}/live")
    assert "Thanks Sam" in live and "<html" not in live
    assert (await c.client.get("/console/conversations/999")).status == 404
    assert (await c.client.get("/console/conversations/abc")).status == 404


async def _history(c: Console, phone: str = PHONE) -> list[tuple[Any, ...]]:
    h = state_changes_t
    query = (
        select(h.c.flow, h.c.from_state, h.c.to_state, h.c.reason, h.c.event_kind)
        .where(h.c.conversation_id == await c.convo_id(phone))
        .order_by(h.c.id)
    )
    async with c.bot.db.session() as s:
        return [tuple(r) for r in await s.execute(query)]


async def test_every_state_change_is_recorded_with_its_cause(signed_in: Console) -> None:
    c = signed_in
    await c.start("appointment", SAM)
    c.clock.advance(dt.timedelta(hours=49))  # no answer: the nudge, and `waiting` again
    await c.settle()
    await c.send("YES")
    await c.send("NO")
    await c.send("Clashes with work")
    await c.send("SURVEY")  # a keyword starts another flow
    assert await _history(c) == [
        ("appointment", None, "waiting", "started", "start"),
        ("appointment", "waiting", "waiting", None, "timer"),
        ("appointment", "waiting", "confirmed", None, "inbound"),
        ("appointment", "confirmed", "asking_why", None, "inbound"),
        ("appointment", "asking_why", "cancelled", None, "inbound"),
        ("appointment", "cancelled", None, "completed", "inbound"),
        ("survey", None, "asking", "started", "inbound"),
    ]
    await c.start("appointment", SAM)  # replaces the survey
    await c.send("HOURS")  # an auto-reply begins and ends in one step: no state change
    await c.send("STOP")
    assert (await _history(c))[-3:] == [
        ("survey", "asking", None, "interrupted", "start"),
        ("appointment", None, "waiting", "started", "start"),
        ("appointment", "waiting", None, "opted out", "inbound"),
    ]
    async with c.bot.db.session() as s:
        at = (await s.execute(select(state_changes_t.c.at).order_by(state_changes_t.c.id))).all()
    assert at[0][0] == T0 and at[1][0] == T0 + dt.timedelta(hours=49)  # the injected clock


async def test_a_timeline_interleaves_state_changes_with_messages(signed_in: Console) -> None:
    c = signed_in
    await c.start("appointment", SAM)
    await c.send("YES")
    page = await c.text(f"/console/conversations/{await c.convo_id()}")
    order = [
        "appointment started in waiting, on a start request",
        "Hi Sam, your appointment at Riverside Clinic",
        '<div class="body">YES</div>',
        "appointment: waiting → confirmed, on a message",
        "Thanks Sam",
    ]
    where = [page.find(text) for text in order]
    assert -1 not in where and where == sorted(where), where
    assert "Conversation started" not in page  # the history says it
    await c.send("NO")
    await c.send("Busy")
    live = await c.text(f"/console/conversations/{await c.convo_id()}/live")
    assert "appointment: asking_why → cancelled, on a message" in live
    assert "appointment ended in cancelled (completed), on a message" in live
    assert live.find("Busy") < live.find("asking_why → cancelled")


async def test_erasing_a_phone_removes_its_state_history(signed_in: Console) -> None:
    c = signed_in
    await c.start("appointment", SAM)
    await c.send("YES", phone="+447700900999")  # another phone's history stays
    await c.start("appointment", SAM, phone="+447700900999")
    engine = create_engine(c.bot.settings.sync_database_url, poolclass=pool.NullPool)
    try:
        assert len(subject_data(engine, PHONE)["state_changes"]) == 1
        erase(engine, PHONE)
        with engine.connect() as conn:
            left = conn.execute(select(state_changes_t.c.conversation_id)).scalars().all()
        assert left == [await c.convo_id("+447700900999")]
        assert subject_data(engine, PHONE)["state_changes"] == []
    finally:
        engine.dispose()


async def test_a_timeline_shows_an_opt_out(signed_in: Console) -> None:
    await signed_in.send("STOP")
    page = await signed_in.text(f"/console/conversations/{await signed_in.convo_id()}")
    assert "opted out</span> with STOP" in page
    people = await signed_in.text("/console/people?search=900123")
    assert PHONE in people and "STOP" in people
    assert PHONE not in await signed_in.text("/console/people?search=999")


async def test_a_parked_event_is_shown_with_its_error_and_retried(signed_in: Console) -> None:
    c = signed_in
    (c.flows / "flows" / "broken").write_text("")
    await c.start("flaky", {})
    convo = await c.convo_id()
    page = await c.text(f"/console/conversations/{convo}")
    assert "flaky is broken" in page and "Retry event" in page
    events = await c.text("/console/events")
    [event_id] = re.findall(r"/console/events/(\d+)/retry", events)
    assert "flaky is broken" in events
    (c.flows / "flows" / "broken").unlink()
    resp = await c.post(
        f"/console/events/{event_id}/retry", {"back": f"/console/conversations/{convo}"}
    )
    assert (resp.status, resp.headers["Location"]) == (303, f"/console/conversations/{convo}")
    await c.settle()
    assert [m.content for m in c.sandbox.messages] == ["flaky started"]
    assert "No parked events" in await c.text("/console/events")
    again = await c.post(f"/console/events/{event_id}/retry", {})
    assert again.status == 409  # no longer parked: nothing to retry
    assert (await c.post("/console/events/x/retry", {})).status == 404


# --- simulator and clock -----------------------------------------------------------------------


async def test_the_simulator_texts_the_bot_and_shows_the_reply(signed_in: Console) -> None:
    c = signed_in
    await c.send("HOURS")
    thread = await c.text(f"/console/simulator/thread?phone={PHONE.replace('+', '%2B')}")
    assert "HOURS" in thread and "We&#39;re open Monday to Friday" in thread
    assert "status-delivered" in thread
    page = await c.text("/console/simulator")
    assert "We&#39;re open" in page and "appointment" in page
    assert "&#34;starts_at&#34;: &#34;2026-01-18T10:30:00+00:00&#34;" in page  # sample data


async def test_the_simulator_says_what_is_wrong_with_a_form(signed_in: Console) -> None:
    c = signed_in
    resp = await c.post("/console/simulator/send", {"phone": "nonsense", "text": ""})
    body = await resp.text()
    assert resp.status == 400 and "Phone:" in body and "type something" in body
    resp = await c.post(
        "/console/simulator/start", {"flow": "appointment", "phone": PHONE, "data": "{"}
    )
    assert resp.status == 400 and "Data: not JSON" in await resp.text()
    resp = await c.post(
        "/console/simulator/start", {"flow": "appointment", "phone": PHONE, "data": "{}"}
    )
    assert resp.status == 400 and "Data: data.name is required" in await resp.text()
    past = json.dumps({**SAM, "starts_at": "2026-01-15T08:00:00+00:00"})  # before the bot's now
    resp = await c.post(
        "/console/simulator/start", {"flow": "appointment", "phone": PHONE, "data": past}
    )
    assert resp.status == 400 and "has passed" in await resp.text()
    resp = await c.post("/console/simulator/start", {"flow": "nope", "phone": PHONE})
    assert resp.status == 400 and "Flow: pick one of appointment" in await resp.text()
    await c.settle()
    assert c.sandbox.messages == []


async def test_advancing_the_clock_fires_the_reminder_at_its_time(
    db_url: str, tmp_path: Path, aiohttp_client: Any
) -> None:
    async with open_console(db_url, tmp_path, aiohttp_client, workers=True) as c:
        await c.sign_in()
        await c.start("appointment", SAM)
        await c.send("YES")
        await _until_sent(c, 2)
        resp = await c.post("/console/clock/advance", {"to": "next", "back": "/console/simulator"})
        assert (resp.status, resp.headers["Location"]) == (303, "/console/simulator")
        # The reminder is due the day before at 10:30; the clock stopped there to fire it.
        assert c.clock.now() == dt.datetime(2026, 1, 19, 10, 30, tzinfo=dt.UTC)
        await _until_sent(c, 3)
        assert c.sandbox.messages[2].content.startswith("Reminder: Sam")
        assert c.sandbox.messages[2].received_at == c.clock.now()
        resp = await c.post("/console/clock/advance", {"by": "2h"})
        assert resp.headers["Location"] == "/console/simulator"
        assert c.clock.now() == dt.datetime(2026, 1, 19, 12, 30, tzinfo=dt.UTC)
        for by, reason in (("soon", "Give a duration"), ("500d", "at most 400 days")):
            resp = await c.post("/console/clock/advance", {"by": by})
            assert resp.status == 400 and reason in await resp.text()
        assert c.clock.now() == dt.datetime(2026, 1, 19, 12, 30, tzinfo=dt.UTC)


async def _until_sent(c: Console, count: int) -> None:
    """Wait for the background workers to have sent `count` messages, receipts posted."""
    async with asyncio.timeout(10):
        while len(c.sandbox.messages) < count:
            await asyncio.sleep(0.02)
    await c.sandbox.wait_for_receipts()


async def test_the_clock_control_is_absent_on_the_wall_clock(signed_in: Console) -> None:
    c = signed_in
    assert 'id="advance"' in await c.text("/console/simulator")  # a VirtualClock moves
    c.bot.clock = SystemClock()
    page = await c.text("/console/simulator")
    assert 'id="advance"' not in page and "runs on the wall clock" in page
    resp = await c.post("/console/clock/advance", {"by": "1h"})
    assert resp.status == 404


async def test_the_simulator_needs_the_sandbox_provider(signed_in: Console) -> None:
    c = signed_in
    c.bot.settings = c.bot.settings.replace(provider="divergent", divergent_api_key=Secret("x"))
    page = await c.text("/console/simulator")
    assert "works only when smsbot runs" in page and 'id="send"' not in page
    resp = await c.post("/console/simulator/send", {"phone": PHONE, "text": "hi"})
    assert resp.status == 404


# --- results, health ---------------------------------------------------------------------------


async def _three_appointments(c: Console) -> None:
    """Sam confirms, Alex cancels and says why, Kim never answers (then a keyword chat, Lee)."""
    answers = {"+447700900001": ["YES"], "+447700900002": ["NO", "Clashes with work"]}
    for phone in ("+447700900001", "+447700900002", "+447700900003"):
        await c.start("appointment", SAM, phone=phone)
        for answer in answers.get(phone, []):
            await c.send(answer, phone=phone)
    c.sandbox.failing_numbers.add("+447700900003")
    await c.start("appointment", SAM, phone="+447700900003")  # again: replaces the first
    await c.send("HOURS", phone="+447700900004")


async def test_results_count_outcomes_deliveries_and_replies(signed_in: Console) -> None:
    c = signed_in
    await _three_appointments(c)
    resp = await c.client.get(
        "/api/flows/appointment/results?from=2026-01-15&to=2026-01-16",
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert resp.status == 200
    body = await resp.json()
    assert body["started"] == 4
    assert body["outcomes"] == {
        "now in confirmed": 1,
        "ended: cancelled": 1,
        "now in waiting": 1,
        "replaced by a later start": 1,
    }
    # Sam: ask + confirmed; Alex: ask + why + noted; Kim: the first ask, then the second failed.
    assert body["deliveries"] == {"delivered": 6, "failed": 1}
    assert body["replies_per_day"] == [
        {"date": "2026-01-15", "replies": 3},
        {"date": "2026-01-16", "replies": 0},
    ]
    page = await c.text("/console/results?flow=appointment&from=2026-01-15&to=2026-01-16")
    assert 'id="started">4<' in page and "<svg" in page
    assert "now in confirmed 1" in page  # the charts' text alternative
    csv_text = await c.text("/console/results.csv?flow=appointment&from=2026-01-15&to=2026-01-16")
    assert "outcome,now in confirmed,1\n" in csv_text and "delivery,failed,1\n" in csv_text
    assert "replies,2026-01-15,3\n" in csv_text


async def test_results_refuse_a_bad_flow_or_period(signed_in: Console) -> None:
    c = signed_in
    auth = {"Authorization": f"Bearer {KEY}"}
    assert (await c.client.get("/api/flows/appointment/results")).status == 401
    resp = await c.client.get("/api/flows/nope/results", headers=auth)
    assert resp.status == 404 and "known flows: appointment" in (await resp.json())["error"]
    for query, reason in (
        ("from=2026-13-01", "must be a date"),
        ("from=2026-02-01&to=2026-01-01", "swap them"),
        ("from=2024-01-01&to=2026-01-01", "at most 366 days"),
    ):
        resp = await c.client.get(f"/api/flows/appointment/results?{query}", headers=auth)
        assert resp.status == 400 and reason in (await resp.json())["error"], query
        page = await c.client.get(f"/console/results?flow=appointment&{query}")
        assert page.status == 400 and reason in await page.text()
    assert (await c.client.get("/console/results.csv?flow=nope")).status == 404
    # the API names a date or leaves it out (the console's form sends empty fields: defaults)
    for query, reason in (("from=", "or left out"), ("since=2026-01-01", "not a query parameter")):
        resp = await c.client.get(f"/api/flows/appointment/results?{query}", headers=auth)
        assert resp.status == 400 and reason in (await resp.json())["error"], query
    assert (await c.client.get("/console/results?flow=appointment&from=&to=")).status == 200


async def test_an_ended_conversation_is_counted_by_how_it_ended(signed_in: Console) -> None:
    c = signed_in
    await c.start("appointment", SAM)
    await c.send("YES")
    async with c.bot.db.session() as s, s.begin():  # as expiry left it before migration 0007
        await s.execute(
            update(conversations_t).values(flow=None, state=None, ended_at=T0, end_reason="expired")
        )
        await s.execute(delete(state_changes_t))
    results = await c.text("/console/results.csv?flow=appointment&from=2026-01-15&to=2026-01-15")
    assert "outcome,ended: expired,1\n" in results


async def test_a_keyword_started_conversation_counts_for_its_flow_after_it_ended(
    signed_in: Console,
) -> None:
    c = signed_in
    await c.send("SURVEY")
    await c.send("5")  # answered: the survey ends, its row no longer names the flow
    await c.send("SURVEY", phone="+447700900002")  # still waiting for the answer
    await c.send("SURVEY", phone="+447700900003")
    c.clock.advance(dt.timedelta(minutes=5))
    await c.start("appointment", SAM, phone="+447700900003")  # replaces that survey
    await c.send("SURVEY", phone="+447700900004")
    await c.send("STOP", phone="+447700900004")  # no answer, but an opt-out
    auth = {"Authorization": f"Bearer {KEY}"}
    resp = await c.client.get(
        "/api/flows/survey/results?from=2026-01-15&to=2026-01-15", headers=auth
    )
    body = await resp.json()
    assert resp.status == 200, body
    assert body["started"] == 4
    assert body["outcomes"] == {
        "ended: done": 1,
        "now in asking": 1,
        "replaced by a later start": 1,
        "ended: opted out": 1,
    }
    # each run's own messages: the question to all four, "Thank you" to the first, the STOP
    # confirmation to the last; the replies: four SURVEYs, "5" and STOP
    assert body["deliveries"] == {"delivered": 6}
    assert body["replies_per_day"] == [{"date": "2026-01-15", "replies": 6}]
    csv_text = await c.text("/console/results.csv?flow=survey&from=2026-01-15&to=2026-01-15")
    assert "conversations,started,4\n" in csv_text and "outcome,ended: done,1\n" in csv_text
    assert "delivery,delivered,6\n" in csv_text and "replies,2026-01-15,6\n" in csv_text
    page = await c.text("/console/results?flow=survey&from=2026-01-15&to=2026-01-15")
    assert 'id="started">4<' in page and "ended: done 1" in page
    appointment = await c.client.get(
        "/api/flows/appointment/results?from=2026-01-15&to=2026-01-15", headers=auth
    )
    assert (await appointment.json())["outcomes"] == {"now in waiting": 1}


async def test_health_shows_queues_failures_and_parked_events(signed_in: Console) -> None:
    c = signed_in
    (c.flows / "flows" / "broken").write_text("")
    await c.start("flaky", {})
    c.sandbox.failing_numbers.add(PHONE)
    await c.send("HOURS")
    async with c.bot.db.session() as s, s.begin():
        await s.execute(
            events_t.insert().values(
                source="api", event_id="x", kind="start", payload={}, received_at=T0,
                state=EventState.PENDING.value, virtual_number=VN, phone=PHONE,
            )
        )  # fmt: skip
    page = await c.text("/console/health")
    assert 'id="parked" class="bad">1<' in page
    assert "Inbox, waiting</dt><dd>1 · start 1" in page
    assert 'id="failures">1 · failed 1' in page
    live = await c.text("/console/health/live")
    assert "<html" not in live and "Queues" in live


async def test_people_lists_contacts_and_opt_outs(signed_in: Console) -> None:
    c = signed_in
    async with c.bot.db.session() as s, s.begin():
        await s.execute(
            contacts_t.insert().values(
                phone=PHONE, name="Sam Smith", timezone="Europe/London", created_at=T0
            )
        )
        await s.execute(
            contacts_t.insert().values(
                phone="+447700900555", name="Kim Jones", created_at=T0, fields={"visits": 1}
            )
        )
        await s.execute(
            opt_outs_t.insert().values(
                virtual_number=VN, phone="+447700900999", keyword="STOP", created_at=T0
            )
        )
    page = await c.text("/console/people")
    assert "Sam Smith" in page and "Europe/London" in page and "+447700900999" in page
    found = await c.text("/console/people?search=smith")
    assert "Sam Smith" in found and "+447700900999" not in found
    assert "No contacts match" in await c.text("/console/people?search=100%25")
    await c.send("hello")
    timeline = await c.text(f"/console/conversations/{await c.convo_id()}")
    assert "Sam Smith" in timeline and "Europe/London" in timeline


async def _contacts_with_fields_and_groups(c: Console) -> None:
    """Sam: 3 visits, a VIP, appointment on 1 March, in patients and diabetes; Kim: 1 visit."""
    fields = {"visits": "number", "vip": "boolean", "appointment_at": "datetime", "ward": "text"}
    async with c.bot.db.session() as s, s.begin():
        await s.execute(
            contact_fields_t.insert(),
            [{"name": k, "type": v, "created_at": T0} for k, v in fields.items()],
        )
        sam = {"visits": 3, "vip": True, "appointment_at": "2026-03-01T09:30:00+00:00"}
        kim = {"visits": 1, "vip": False, "ward": "Riverside B"}
        for phone, name, values in ((PHONE, "Sam Smith", sam), ("+447700900555", "Kim", kim)):
            await s.execute(
                contacts_t.insert().values(phone=phone, name=name, fields=values, created_at=T0)
            )
        ids = dict((await s.execute(select(contacts_t.c.phone, contacts_t.c.id))).tuples().all())
        await s.execute(
            contact_groups_t.insert(),
            [
                {"contact_id": ids[PHONE], "name": "patients", "created_at": T0},
                {"contact_id": ids[PHONE], "name": "diabetes", "created_at": T0},
                {"contact_id": ids["+447700900555"], "name": "patients", "created_at": T0},
            ],
        )


async def test_people_shows_fields_and_groups_and_finds_by_them(signed_in: Console) -> None:
    c = signed_in
    await _contacts_with_fields_and_groups(c)
    page = await c.text("/console/people")
    for text in (
        "<dt>visits</dt><dd>3 <span",
        "<dt>vip</dt><dd>yes <span",
        "<dt>appointment_at</dt><dd>2026-03-01 09:30:00 UTC",
        '<span class="badge">diabetes</span>',
        '<option value="diabetes">diabetes</option>',
        '<option value="visits">visits (number)</option>',
    ):
        assert text in page, text

    async def found(query: str) -> set[str]:
        body = await c.text(f"/console/people?{query}")
        table = (
            body.split('id="contacts"')[1].split("</table>")[0] if 'id="contacts"' in body else ""
        )
        return set(re.findall(r">(\+4477009005?\d+)</a>", table))

    sam, kim = {PHONE}, {"+447700900555"}
    assert await found("group=diabetes") == sam
    assert await found("group=patients") == sam | kim
    assert await found("field=visits&value=3") == sam
    assert await found("field=vip&value=no") == kim
    assert await found("field=appointment_at&value=2026-03-01") == sam
    assert await found("field=ward&value=riverside") == kim
    assert await found("field=ward") == kim  # the field is set
    assert await found("group=patients&field=visits&value=1&search=kim") == kim
    assert await found("group=patients&search=nobody") == set()
    for query, reason in (
        (
            "field=visits&value=many",
            "Value: field &#39;visits&#39;: &#39;many&#39; is not a number",
        ),
        ("field=height&value=2", "Field: no custom field named &#39;height&#39;"),
        ("value=3", "Value: pick the field"),
    ):
        assert reason in await c.text(f"/console/people?{query}", status=400), query
    await c.send("hello")
    timeline = await c.text(f"/console/conversations/{await c.convo_id()}")
    assert "<dt>visits</dt><dd>3 <span" in timeline
    assert 'id="contact-groups"><span class="badge">diabetes</span>' in timeline


# --- flows -------------------------------------------------------------------------------------


async def test_flows_show_each_flow_as_a_diagram(signed_in: Console) -> None:
    page = await signed_in.text("/console/flows")
    for name in ("appointment", "keywords", "flaky", "survey"):
        assert f'href="/console/flows/{name}"' in page
    assert page.count("<svg") == 4
    # The text alternative names every transition of the graph `smsbot graph` prints.
    assert "waiting to confirmed on YES / Y / CONFIRM" in page
    assert "start to done on HOURS / ADDRESS" in page
    assert "start: name, starts_at, location" not in page  # fields, not the raw declaration
    assert "start data: name, starts_at, location, remind_before_minutes" in page


async def test_a_flow_page_renders_its_templates_for_sample_data(signed_in: Console) -> None:
    c = signed_in
    page = await c.text("/console/flows/appointment")
    assert "stateDiagram-v2" in page and "waiting --&gt; confirmed : YES / Y / CONFIRM" in page
    assert "appointment/reminder.txt" in page and "schedule_reminder" in page
    assert "Reminder: Sam, your appointment is on Sun 18 Jan at 10:30 at Riverside Clinic" in page
    assert "1 segment" in page and "GSM-7" in page
    long_name = json.dumps({**SAM, "name": "Zoë " * 50, "location": "Riverside Clinic"})
    wide = await c.text(f"/console/flows/appointment?data={quote(long_name)}")
    assert "UCS-2 because of ë" in wide and "5 segments" in wide  # ask.txt, 331 units
    bad = await c.text("/console/flows/appointment?data=%7B", status=400)
    assert "Sample data:" in bad
    assert (await c.client.get("/console/flows/nope")).status == 404
