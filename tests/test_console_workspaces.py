"""The web console scoped to a workspace (issue 14), through the real app and aiohttp's client:
the admin's selector, every page within the session's workspace, another workspace's rows as
404s, and a workspace credential's session that sees its own workspace only.

Two workspaces' data is seeded with Core inserts that name the workspace, as the pipeline writes
it; the pages must list only the chosen workspace's rows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from smsbot.app.cli import main
from smsbot.app.console.security import Sessions
from smsbot.app.keys_cli import create_key
from smsbot.config import Secret
from smsbot.store.models import (
    Direction,
    EventState,
    OutboxState,
    contact_groups_t,
    contacts_t,
    conversations_t,
    events_t,
    messages_t,
    opt_outs_t,
    state_changes_t,
    timers_t,
)
from tests.test_console import KEY, SAM, T0, VN, Console, open_console

VA, VB = "+447700900200", "+447700900300"  # workspace a's number, workspace b's
PA, PB = "+447700900201", "+447700900301"  # a phone texting each
SHARED = "+447700900555"  # a person who is a contact of both clients
WORKSPACES: dict[str, dict[str, Any]] = {
    "default": {"numbers": [VN]},
    "a": {"provider": "sandbox", "numbers": [VA]},
    "b": {"provider": "sandbox", "numbers": [VB]},
}


@dataclasses.dataclass
class Seeded:
    """The ids of each workspace's rows: {workspace: id}."""

    conversations: dict[str, int]
    contacts: dict[str, int]
    events: dict[str, int]


async def seed(c: Console) -> Seeded:
    """Each of a and b: a conversation with two messages, a state change and a timer; a contact
    in a group; the shared phone as a contact; an opt-out; a parked event."""
    rows = {"a": (VA, PA, "Alice"), "b": (VB, PB, "Bob")}
    seeded = Seeded({}, {}, {})
    async with c.bot.db.session() as s, s.begin():
        for ws, (vn, phone, name) in rows.items():
            key = {"workspace": ws, "virtual_number": vn, "phone": phone}
            convo = await s.execute(
                conversations_t.insert().values(
                    **key,
                    data={},
                    version=0,
                    flow="appointment",
                    state="waiting",
                    started_at=T0,
                    last_activity_at=T0,
                )
            )
            convo_id = convo.inserted_primary_key[0]
            seeded.conversations[ws] = convo_id
            await s.execute(
                messages_t.insert().values(
                    **key,
                    id=f"{ws}-out",
                    direction=Direction.OUTBOUND,
                    body=f"Question for {name}",
                    status="delivered",
                    outbox=OutboxState.DONE,
                    created_at=T0,
                    sent_at=T0,
                    status_at=T0,
                )
            )
            await s.execute(
                messages_t.insert().values(
                    **key,
                    id=f"{ws}-in",
                    direction=Direction.INBOUND,
                    body=f"Answer from {name}",
                    created_at=T0 + dt.timedelta(minutes=1),
                )
            )
            await s.execute(
                state_changes_t.insert().values(
                    conversation_id=convo_id,
                    workspace=ws,
                    at=T0,
                    flow="appointment",
                    from_state=None,
                    to_state="waiting",
                    reason="started",
                    event_kind="start",
                )
            )
            await s.execute(
                timers_t.insert().values(
                    conversation_id=convo_id,
                    workspace=ws,
                    name=f"reminder-{ws}",
                    kind="remind",
                    token=ws,
                    due_at=T0 + dt.timedelta(days=1),
                    payload={},
                    created_at=T0,
                )
            )
            contact = await s.execute(
                contacts_t.insert().values(
                    workspace=ws, phone=phone, name=f"{name} Smith", created_at=T0
                )
            )
            seeded.contacts[ws] = contact.inserted_primary_key[0]
            await s.execute(
                contact_groups_t.insert().values(
                    contact_id=seeded.contacts[ws], name=f"group-{ws}", created_at=T0
                )
            )
            await s.execute(
                contacts_t.insert().values(
                    workspace=ws, phone=SHARED, name=f"Sam of {ws}", created_at=T0
                )
            )
            await s.execute(
                opt_outs_t.insert().values(
                    workspace=ws,
                    virtual_number=vn,
                    phone=f"+44770090099{ws == 'b':d}",
                    keyword=f"STOP-{ws}",
                    created_at=T0,
                )
            )
            event = await s.execute(
                events_t.insert().values(
                    **key,
                    source="api",
                    event_id=f"parked-{ws}",
                    kind="start",
                    payload={"flow": "flaky"},
                    received_at=T0,
                    state=EventState.FAILED.value,
                    attempts=1,
                    last_error=f"FlowError: {name} broke",
                )
            )
            seeded.events[ws] = event.inserted_primary_key[0]
    return seeded


@pytest.fixture
async def console(db_url: str, tmp_path: Path, aiohttp_client: Any) -> AsyncIterator[Console]:
    async with open_console(db_url, tmp_path, aiohttp_client, workspaces=WORKSPACES) as c:
        yield c


async def choose(c: Console, workspace: str, back: str = "/console/conversations") -> Any:
    """Pick a workspace with the header's selector, as its form posts it."""
    return await c.post("/console/workspace", {"workspace": workspace, "back": back})


def table(page: str, element_id: str) -> str:
    """The HTML of the table (or list) with this id; "" when the page has none."""
    if f'id="{element_id}"' not in page:
        return ""
    return page.split(f'id="{element_id}"')[1].split("</table>")[0].split("</ul>")[0]


async def test_the_admin_acts_in_one_workspace_at_a_time(console: Console) -> None:
    c = console
    ids = await seed(c)
    await c.sign_in()
    page = await c.text("/console/conversations")
    assert '<select id="workspace" name="workspace">' in page
    assert '<option value="default" selected>default</option>' in page  # at first
    assert PA not in page and PB not in page  # neither is the default workspace's

    resp = await choose(c, "a", back=f"/console/conversations/{ids.conversations['b']}")
    assert (resp.status, resp.headers["Location"]) == (303, "/console/conversations")
    page = await c.text("/console/conversations")
    assert '<option value="a" selected>a</option>' in page
    assert PA in page and PB not in page
    assert f'<option value="{VA}">' in page and f'<option value="{VB}">' not in page
    timeline = await c.text(f"/console/conversations/{ids.conversations['a']}")
    assert "Question for Alice" in timeline and "Answer from Alice" in timeline
    assert "reminder-a" in timeline and "Alice Smith" in timeline
    assert "appointment started in waiting" in timeline
    assert "Bob" not in timeline

    people = await c.text("/console/people")
    assert "Alice Smith" in table(people, "contacts") and "Sam of a" in table(people, "contacts")
    assert "Bob" not in people and "Sam of b" not in people
    assert "STOP-a" in table(people, "opt-outs") and "STOP-b" not in people
    assert '<option value="group-a">' in people and "group-b" not in people
    contact = await c.text(f"/console/people/{ids.contacts['a']}")
    assert (
        "Alice Smith" in contact and f"/console/conversations/{ids.conversations['a']}" in contact
    )

    events = await c.text("/console/events")
    assert "Alice broke" in events and "Bob broke" not in events
    async with c.bot.db.session() as s, s.begin():  # a text to a number nobody owns
        await s.execute(
            events_t.insert().values(
                source="divergent", event_id="unowned", kind="inbound", payload={},
                received_at=T0, state=EventState.UNMATCHED.value, workspace=None,
                virtual_number="+447700900999", phone=PA,
            )
        )  # fmt: skip
    health = await c.text("/console/health")
    assert 'id="unowned">1<' in health  # the admin's deployment figures
    assert 'id="parked" class="bad">1<' in health  # a's
    assert "<dt>Parked events</dt><dd>2</dd>" in health  # every workspace's, for the admin
    assert "Workspace a ·" in health
    csv_text = await c.text("/console/results.csv?flow=appointment&from=2026-01-15&to=2026-01-15")
    assert "conversations,started,1\n" in csv_text and "delivery,delivered,1\n" in csv_text
    assert "replies,2026-01-15,1\n" in csv_text

    assert (await choose(c, "b")).status == 303
    page = await c.text("/console/conversations")
    assert PB in page and PA not in page
    assert "Sam of b" in await c.text("/console/people")


async def test_another_workspaces_rows_answer_404_like_missing_ones(console: Console) -> None:
    c = console
    ids = await seed(c)
    await c.sign_in()
    await choose(c, "a")
    missing = 999_999
    for path in (
        "/console/conversations/{}",
        "/console/conversations/{}/live",
        "/console/people/{}",
    ):
        b_id = ids.contacts["b"] if "people" in path else ids.conversations["b"]
        theirs = await c.client.get(path.format(b_id))
        nothing = await c.client.get(path.format(missing))
        assert theirs.status == nothing.status == 404, path
        # the same page, but for the id in its reason and its path
        shown = re.sub(rf"(?<=[#/]){b_id}\b", "N", await theirs.text())
        assert shown == re.sub(rf"(?<=[#/]){missing}\b", "N", await nothing.text()), path
        assert "Bob" not in shown
    # b's parked event cannot be retried from a, and stays parked
    resp = await c.post(f"/console/events/{ids.events['b']}/retry", {})
    assert resp.status == 404
    async with c.bot.db.session() as s:
        state = await s.execute(select(events_t.c.state).where(events_t.c.id == ids.events["b"]))
        assert state.scalar_one() == EventState.FAILED.value
    resp = await c.post(f"/console/events/{ids.events['a']}/retry", {})
    assert resp.status == 303  # a's own


async def test_the_simulator_texts_the_workspaces_own_number_through_the_pipeline(
    console: Console,
) -> None:
    """Acting in a, a text to a's number is answered, and only a's pages show it."""
    c = console
    await c.sign_in()
    await choose(c, "a")
    page = await c.text("/console/simulator")
    assert f'<option value="{VA}" selected>' in page and VB not in page and VN not in page
    sent = await c.post("/console/simulator/send", {"phone": PA, "number": VA, "text": "HOURS"})
    assert sent.status == 303, await sent.text()
    await c.settle()
    thread = await c.text(f"/console/simulator/thread?phone={PA}&number={VA}".replace("+", "%2B"))
    assert "HOURS" in thread and "open Monday to Friday" in thread
    assert PA in await c.text("/console/conversations")
    async with c.bot.db.session() as s:
        stored = await s.execute(select(messages_t.c.workspace).where(messages_t.c.phone == PA))
        assert set(stored.scalars()) == {"a"}
    for other in ("b", "default"):
        await choose(c, other)
        assert PA not in await c.text("/console/conversations"), other
        path = f"/console/simulator/thread?phone={PA}&number={VA}".replace("+", "%2B")
        refused = await c.text(path, status=400)  # a's number is not theirs to read
        assert f"{VA} is not a number of workspace {other}" in refused
        assert "open Monday to Friday" not in refused


async def test_a_flow_started_from_the_simulator_runs_in_the_workspace(console: Console) -> None:
    c = console
    await c.sign_in()
    await choose(c, "a")
    form = {"flow": "appointment", "phone": PA, "number": VA, "data": json.dumps(SAM)}
    resp = await c.post("/console/simulator/start", form)
    assert resp.status == 303, await resp.text()
    await c.settle()
    async with c.bot.db.session() as s:
        found = await s.execute(select(conversations_t.c.workspace, conversations_t.c.flow))
        assert found.all() == [("a", "appointment")]
    assert PA in await c.text("/console/conversations")


async def test_the_selector_refuses_an_unknown_workspace(console: Console) -> None:
    c = console
    await seed(c)
    await c.sign_in()
    await choose(c, "a")
    for name, said in (("c", "no workspace &#39;c&#39;"), ("", "no workspace &#39;&#39;")):
        resp = await choose(c, name)
        body = await resp.text()
        assert resp.status == 400, name
        assert said in body and "pick one of default, a, b" in body
    hinted = await (await choose(c, "bb")).text()
    assert "did you mean &#39;b&#39;?" in hinted
    for back, lands in (
        ("/console/people/1", "/console/people"),
        ("/console/results?flow=appointment", "/console/results"),
        ("/console/workspace", "/console/"),  # the selector on its own error page
        ("https://evil.example/console/", "/console/"),
    ):
        resp = await choose(c, "a", back=back)
        assert (resp.status, resp.headers["Location"]) == (303, lands), back
    forged = await c.client.post(
        "/console/workspace", data={"workspace": "b", "csrf_token": "x"}, allow_redirects=False
    )
    assert forged.status == 403
    assert PA in await c.text("/console/conversations")  # still acting in a


def test_a_session_carries_its_scope_and_the_admins_choice() -> None:
    sessions, key = Sessions(), Secret(KEY)
    mine = sessions.read(key, sessions.open(key, "key-of-a", "a"))
    assert mine is not None and (mine.who, mine.scope, mine.workspace) == ("key-of-a", "a", "a")
    assert not mine.is_admin
    with pytest.raises(ValueError, match="acts in workspace a only"):
        sessions.switch(key, mine, "b")
    admin = sessions.read(key, sessions.open(key, "admin"))
    assert admin is not None and admin.is_admin and admin.workspace == "default"
    moved = sessions.read(key, sessions.switch(key, admin, "b"))
    assert moved is not None and moved.workspace == "b" and moved.is_admin
    assert (moved.sid, moved.issued, moved.csrf) == (admin.sid, admin.issued, admin.csrf)
    sessions.end(moved)  # signing out ends the session whichever workspace it acts in
    assert sessions.read(key, sessions.switch(key, admin, "a")) is None
    with pytest.raises(ValueError, match="not a workspace name"):
        sessions.switch(key, admin, "a.b")


async def as_workspace_key(c: Console, workspace: str) -> None:
    """Sign in with a fresh key of `workspace` (as `smsbot keys create` makes one)."""
    made = await c.bot.db.write(lambda conn: create_key(conn, workspace, None))
    assert (await c.sign_in(made["key"])).status == 303


async def test_a_workspace_credentials_session_sees_and_acts_in_its_workspace_only(
    console: Console,
) -> None:
    c = console
    ids = await seed(c)
    await as_workspace_key(c, "a")
    page = await c.text("/console/conversations")
    assert 'id="workspace-name">a</strong>' in page and 'id="workspace"' not in page
    assert PA in page and PB not in page
    assert (await c.client.get(f"/console/conversations/{ids.conversations['b']}")).status == 404
    assert (await c.client.get(f"/console/people/{ids.contacts['b']}")).status == 404
    resp = await choose(c, "b")
    assert resp.status == 403 and "acts in workspace a only" in await resp.text()
    assert PB not in await c.text("/console/conversations")

    simulator = await c.text("/console/simulator")
    assert f'<option value="{VA}" selected>' in simulator and VB not in simulator
    assert 'id="clock-shared"' in simulator and 'id="advance"' not in simulator
    refused = await c.post("/console/simulator/send", {"phone": PA, "number": VB, "text": "hi"})
    assert refused.status == 400
    assert f"Number: {VB} is not a number of workspace a; its numbers: {VA}" in (
        await refused.text()
    )
    before = c.clock.now()
    moved = await c.post("/console/clock/advance", {"by": "1d"})
    assert moved.status == 403 and "shared by every workspace" in await moved.text()
    assert c.clock.now() == before

    health = await c.text("/console/health")
    assert 'id="parked" class="bad">1<' in health
    assert "Every workspace" not in health and "This process since start" not in health


async def test_a_single_workspace_deployment_shows_no_selector(
    db_url: str, tmp_path: Path, aiohttp_client: Any
) -> None:
    async with open_console(db_url, tmp_path, aiohttp_client) as c:
        await c.sign_in()
        page = await c.text("/console/conversations")
        assert 'id="workspace"' not in page and "Workspace" not in page
        health = await c.text("/console/health")
        assert "This process since start" in health and "Every workspace" not in health


KEY_LIKE = re.compile(r"[A-Za-z0-9_\-]{24,}")


async def test_a_workspace_key_signs_in_to_its_workspace(
    db_url: str,
    tmp_path: Path,
    aiohttp_client: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`smsbot keys create --workspace a` makes a key; the console's sign-in takes it
    (credentials.authenticate) and the session acts in a only."""
    cli = tmp_path / "cli"
    cli.mkdir()
    (cli / "smsbot.toml").write_text(
        f'[workspaces.default]\nnumbers = ["{VN}"]\n'
        f'[workspaces.a]\nprovider = "sandbox"\nnumbers = ["{VA}"]\n'
        f'[workspaces.b]\nprovider = "sandbox"\nnumbers = ["{VB}"]\n'
    )
    monkeypatch.chdir(cli)
    plain_url = db_url.replace("+aiosqlite", "").replace("+asyncpg", "")
    monkeypatch.setenv("SMSBOT_DATABASE_URL", plain_url)
    assert await asyncio.to_thread(main, ["keys", "create", "--workspace", "a"]) == 0
    out = capsys.readouterr().out
    printed = KEY_LIKE.findall(out)
    assert printed, "smsbot keys create printed no key"
    workspace_key = max(printed, key=len)
    key_id = re.search(r"key_[0-9a-f]{12}", out)
    assert key_id is not None, out
    async with open_console(db_url, tmp_path, aiohttp_client, workspaces=WORKSPACES) as c:
        ids = await seed(c)
        resp = await c.sign_in(workspace_key)
        assert resp.status == 303
        page = await c.text("/console/conversations")
        assert 'id="workspace-name">a</strong>' in page
        assert PA in page and PB not in page
        assert (
            await c.client.get(f"/console/conversations/{ids.conversations['b']}")
        ).status == 404
        # revoking the key ends the session it opened, from the next page on
        assert await asyncio.to_thread(main, ["keys", "revoke", key_id.group(0)]) == 0
        resp = await c.client.get("/console/conversations", allow_redirects=False)
        assert resp.status in (302, 303) and "sign-in" in resp.headers["Location"]
