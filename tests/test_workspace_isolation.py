"""Workspace isolation: a credential of workspace A can never read, start, send, change or list
anything of workspace B, on any route of the operator API.

B is seeded with a conversation and its messages and state history, two contacts (with a group
and a custom field), an opt-out and a hashed one, a parked event and a campaign fire. Then every
operation of the served OpenAPI document is called with A's key and with an OAuth token of A,
aimed at B's objects (B's phone, B's number and sender ID, B's contact), once as A and once
naming B in ?workspace=. A route the document gains without a recipe here fails the test. Each
answer must hold nothing of B, and B's rows, and what was sent, must be the same after.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import or_, select

from smsbot.channels.sandbox import Sandbox
from smsbot.engine.campaign import timer_name
from smsbot.pipeline.contacts import suppression_hash
from smsbot.store.models import (
    contact_fields_t,
    contact_groups_t,
    contacts_t,
    conversations_t,
    events_t,
    messages_t,
    opt_outs_t,
    state_changes_t,
    suppressions_t,
    timers_t,
)
from tests.operator_support import (
    A_SENDER_ID,
    A_VN,
    B_SENDER_ID,
    B_VN,
    T0,
    WorkspaceApi,
    workspace_api,
)

B_PHONE = "+447700900999"  # B's contact, with a conversation
B_OTHER = "+447700900998"  # B's second contact, only ever named in paths
B_OPTED = "+447700900997"  # opted out of B's number
MARKERS = ("B-secret", "b-vip", "b_secret_field")  # in B's rows, never sent by A
APPOINTMENT = {"name": "Sam", "starts_at": "2026-01-20T10:30:00+00:00", "location": "Riverside"}
PERIOD = "from=2026-01-01&to=2026-01-31"


async def seed_b(api: WorkspaceApi) -> None:
    """Give workspace B one of everything, as its flows and operators would have left it."""
    at = T0 - dt.timedelta(hours=1)

    def write(conn: Any) -> None:
        [convo] = conn.execute(
            conversations_t.insert()
            .values(
                workspace="b",
                virtual_number=B_VN,
                phone=B_PHONE,
                flow="appointment",
                state="waiting",
                data={"name": "B-secret Bea"},
                version=1,
                started_at=at,
                last_activity_at=at,
            )
            .returning(conversations_t.c.id)
        ).one()
        conn.execute(
            state_changes_t.insert().values(
                conversation_id=convo,
                workspace="b",
                at=at,
                flow="appointment",
                to_state="waiting",
                event_kind="start",
            )
        )
        for direction, body in (("out", "B-secret question"), ("in", "B-secret answer")):
            conn.execute(
                messages_t.insert().values(
                    id=f"b-{direction}",
                    direction=direction,
                    workspace="b",
                    virtual_number=B_VN,
                    phone=B_PHONE,
                    body=body,
                    status="delivered" if direction == "out" else None,
                    created_at=at,
                )
            )
        conn.execute(
            contact_fields_t.insert().values(
                workspace="b", name="b_secret_field", type="text", created_at=at
            )
        )
        ids = []
        for phone, name in ((B_PHONE, "B-secret Bea"), (B_OTHER, "B-secret Bob")):
            [contact] = conn.execute(
                contacts_t.insert()
                .values(
                    workspace="b",
                    phone=phone,
                    name=name,
                    fields={"b_secret_field": "B-secret value"},
                    created_at=at,
                    updated_at=at,
                )
                .returning(contacts_t.c.id)
            ).one()
            ids.append(contact)
            conn.execute(
                contact_groups_t.insert().values(contact_id=contact, name="b-vip", created_at=at)
            )
        conn.execute(
            opt_outs_t.insert().values(
                workspace="b", virtual_number=B_VN, phone=B_OPTED, keyword="STOP", created_at=at
            )
        )
        conn.execute(
            suppressions_t.insert().values(
                workspace="b",
                virtual_number=B_VN,
                phone_hash=suppression_hash("+447700900996"),
                keyword="STOP",
                created_at=at,
            )
        )
        conn.execute(
            events_t.insert().values(
                source="divergent",
                event_id="evt_b_parked",
                kind="inbound",
                workspace="b",
                virtual_number=B_VN,
                phone=B_PHONE,
                payload={"text": "B-secret parked"},
                state="failed",
                attempts=5,
                last_error="ValueError: B-secret",
                received_at=at,
                processed_at=at,
            )
        )
        conn.execute(
            timers_t.insert().values(
                contact_id=ids[0],
                workspace="b",
                name=timer_name("appointment-reminder", "2026-01-20T10:30:00+00:00"),
                kind="campaign",
                token="b-fire",
                due_at=T0 + dt.timedelta(days=4),
                payload={},
                state="scheduled",
                created_at=at,
            )
        )

    await api.bot.db.write(write)


async def b_rows(api: WorkspaceApi) -> dict[str, list[tuple[str, ...]]]:
    """Every row of B's, and every row naming B's numbers whatever its workspace."""
    ours = (B_VN, B_SENDER_ID)

    def read(conn: Any) -> dict[str, list[tuple[str, ...]]]:
        found: dict[str, list[tuple[str, ...]]] = {}
        for t in (
            contacts_t,
            conversations_t,
            messages_t,
            events_t,
            opt_outs_t,
            suppressions_t,
            timers_t,
            state_changes_t,
        ):
            where = [t.c.workspace == "b"]
            if "virtual_number" in t.c:
                where.append(t.c.virtual_number.in_(ours))
            rows = conn.execute(select(t).where(or_(*where)).order_by(*t.primary_key)).all()
            found[t.name] = [tuple(map(str, r)) for r in rows]
        contacts = select(contacts_t.c.id).where(contacts_t.c.workspace == "b")
        g = contact_groups_t
        rows = conn.execute(select(g).where(g.c.contact_id.in_(contacts)).order_by(g.c.name))
        found[g.name] = [tuple(map(str, r)) for r in rows]
        return found

    return await api.bot.db.read(read)


# --- a recipe per operation: requests aimed at B's objects, and what the answer must be --------


@dataclasses.dataclass(frozen=True)
class Call:
    """One request, what its status must be, and more to check of its body."""

    method: str
    path: str
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    status: tuple[int, ...] = (200,)
    check: Callable[[Any], None] | None = None
    shows_b: bool = False  # the admin acting in B sees B's markers here (the aim is true)


def _no_started(body: Any) -> None:
    assert body["started"] == 0, body


def _empty(key: str) -> Callable[[Any], None]:
    def check(body: Any) -> None:
        assert body[key] == [], body

    return check


A_NAMES = {"A's", "Mallory"}  # the contacts A's own calls make, with B's phone


def _only_as(body: Any) -> None:
    assert {c["name"] for c in body["contacts"]} <= A_NAMES, body


def _no_fires(body: Any) -> None:
    for campaign in body["campaigns"]:
        assert not any(campaign["fires"].values()), campaign


def _nothing_erased(body: Any) -> None:
    assert not any(body["erased"].values()), body


def _no_data(body: Any) -> None:
    assert body["contact"] is None, body
    for kind in ("conversations", "messages", "opt_outs", "suppressions", "timers"):
        assert body[kind] == [], (kind, body)


def _data(flow: str) -> dict[str, Any]:
    return {"data": APPOINTMENT} if flow == "appointment" else {}


def _start(flow: str) -> list[Call]:
    path = f"/api/flows/{flow}/start"
    return [
        Call("POST", path, {"json": {"to": B_PHONE, "from": sender, **_data(flow)}}, (400,))
        for sender in (B_VN, B_SENDER_ID)
    ]


def _start_many(flow: str) -> list[Call]:
    path = f"/api/flows/{flow}/start-many"
    row = {"to": B_PHONE, "from": B_VN, **_data(flow)}
    csv = f"to,from\n{B_PHONE},{B_SENDER_ID}\n"
    return [
        Call("POST", path, {"json": [row]}, (400,)),
        Call("POST", f"{path}?skip_invalid=true", {"json": [row]}, (202,), _no_started),
        Call(
            "POST",
            f"{path}?skip_invalid=true",
            {"data": csv, "headers": {"Content-Type": "text/csv"}},
            (202,),
            _no_started,
        ),
    ]


def _messages(_: str) -> list[Call]:
    return [
        Call("POST", "/api/messages", {"json": {"to": B_PHONE, "from": s, "text": "hi"}}, (400,))
        for s in (B_VN, B_SENDER_ID)
    ] + [
        Call(
            "POST",
            "/api/messages",
            {"json": {"to": B_PHONE, "from": B_VN, "template": "keywords/hours.txt"}},
            (400,),
        )
    ]


def _results(flow: str) -> list[Call]:
    def check(body: Any) -> None:
        assert body["started"] == 0 and not body["outcomes"] and not body["deliveries"], body

    return [Call("GET", f"/api/flows/{flow}/results?{PERIOD}", check=check)]


RECIPES: dict[str, Callable[[str], list[Call]]] = {
    "POST /api/flows/{name}/start": _start,
    "POST /api/flows/{name}/start-many": _start_many,
    "POST /api/messages": _messages,
    "GET /api/flows/{name}/results": _results,
    "GET /api/conversations": lambda _: [
        Call(
            "GET",
            f"/api/conversations?phone={B_PHONE}",
            check=_empty("conversations"),
            shows_b=True,
        ),
        Call("GET", f"/api/conversations?phone={B_OPTED}", check=_empty("conversations")),
    ],
    "GET /api/campaigns": lambda _: [Call("GET", "/api/campaigns", check=_no_fires)],
    "GET /api/contacts": lambda _: [
        *(
            Call("GET", f"/api/contacts{query}", check=_only_as, shows_b=True)
            for query in ("", f"?phone={B_PHONE}", "?group=b-vip", "?name=secret")
        ),
        # B's field is B's: A has no field of that name (its 400 echoes only A's own words)
        Call("GET", "/api/contacts?field=b_secret_field&value=", status=(400,), shows_b=True),
    ],
    "POST /api/contacts": lambda _: [  # A's own contact with the same phone: B's is untouched
        Call("POST", "/api/contacts", {"json": {"phone": B_PHONE, "name": "A's"}}, (201, 409))
    ],
    "POST /api/contacts/import": lambda _: [
        Call(
            "POST",
            "/api/contacts/import?group=imported",
            {"data": f"phone,name\n{B_PHONE},Mallory\n", "headers": {"Content-Type": "text/csv"}},
        )
    ],
    "GET /api/contacts/export": lambda _: [
        Call("GET", f"/api/contacts/export{q}", shows_b=True) for q in ("", "?group=b-vip")
    ],
    "GET /api/contacts/{phone}": lambda _: [
        Call("GET", f"/api/contacts/{B_OTHER}", status=(404,), shows_b=True)
    ],
    "PATCH /api/contacts/{phone}": lambda _: [
        Call(
            "PATCH",
            f"/api/contacts/{B_OTHER}",
            {"json": {"name": "Mallory", "groups_remove": ["b-vip"]}},
            (404,),
        )
    ],
    "DELETE /api/contacts/{phone}": lambda _: [
        Call("DELETE", f"/api/contacts/{p}", check=_nothing_erased) for p in (B_OTHER, B_OPTED)
    ],
    "GET /api/contacts/{phone}/data": lambda _: [
        Call("GET", f"/api/contacts/{B_OTHER}/data", check=_no_data, shows_b=True),
        Call("GET", f"/api/contacts/{B_OPTED}/data", check=_no_data),
    ],
}
_FLOW_ROUTE = re.compile(r"^(\w+) /api/flows/([^/]+)/(.+)$")


def calls_for(label: str) -> list[Call]:
    """The recipe's calls for one operation of the document (a flow's routes by flow name)."""
    flow = "appointment"
    if (m := _FLOW_ROUTE.match(label)) and m.group(2) != "{name}":
        flow = m.group(2)
        label = f"{m.group(1)} /api/flows/{{name}}/{m.group(3)}"
    recipe = RECIPES.get(label)
    assert recipe is not None, f"{label} has no recipe in {__name__}.RECIPES: add one"
    return recipe(flow)


def with_workspace(path: str, name: str) -> str:
    return f"{path}{'&' if '?' in path else '?'}workspace={name}"


def _holds_b(body: Any, asked: str = "") -> list[str]:
    """B's markers in `body`, but for those the request itself named (`asked`, echoed back)."""
    text = body if isinstance(body, str) else repr(body)
    return [marker for marker in MARKERS if marker in text and marker not in asked]


@pytest.fixture
async def api(db_url: str, sandbox: Sandbox, aiohttp_client: Any) -> WorkspaceApi:
    api = await workspace_api(db_url, sandbox, aiohttp_client)
    await seed_b(api)
    return api


async def operations(api: WorkspaceApi) -> list[str]:
    status, document = await api.call("GET", "/api/openapi.json")
    assert status == 200
    labels = [f"{m.upper()} {path}" for path, item in document["paths"].items() for m in item]
    assert len(labels) >= 15  # the whole API: a broken document would test nothing
    return labels


async def test_a_credential_of_a_sees_and_changes_nothing_of_b(api: WorkspaceApi) -> None:
    labels = await operations(api)
    key_id, key = await api.key("a", "isolation")
    token = await api.token(key_id, key)
    before = await b_rows(api)
    assert all(before.values()), before  # B has one of everything
    for credential in (key, token):
        for label in labels:
            for call in calls_for(label):
                status, body = await api.call(call.method, call.path, credential, **call.kwargs)
                where = f"{label}: {call.method} {call.path}"
                assert status in call.status, (where, status, body)
                assert not _holds_b(body, call.path), (where, body)
                if call.check is not None:
                    call.check(body)
                named = with_workspace(call.path, "b")
                status, body = await api.call(call.method, named, credential, **call.kwargs)
                assert status == 403 and not _holds_b(body), (where, status, body)
    assert await b_rows(api) == before
    await api.bot.run_until_idle()  # whatever A queued has run
    assert await b_rows(api) == before
    sent_by_b = [m for m in api.sandbox.messages if m.sender in (B_VN, B_SENDER_ID)]
    assert sent_by_b == []


async def test_the_recipes_aim_at_bs_objects(api: WorkspaceApi) -> None:
    """The admin, acting in B, finds B's data where the recipes look: they aim true."""
    for label in await operations(api):
        for call in calls_for(label):
            if call.shows_b and call.method == "GET":
                status, body = await api.call("GET", with_workspace(call.path, "b"))
                assert status == 200 and _holds_b(body), (label, call.path, status, body)
    status, body = await api.call("GET", f"/api/flows/appointment/results?{PERIOD}&workspace=b")
    assert status == 200 and body["started"] == 1
    status, body = await api.call("GET", "/api/campaigns?workspace=b")
    [fires] = [c["fires"] for c in body["campaigns"] if c["name"] == "appointment-reminder"]
    assert fires["scheduled"] == 1
    status, body = await api.call(
        "POST", "/api/messages?workspace=b", json={"to": B_OPTED, "from": B_VN, "text": "hi"}
    )
    assert status == 409  # B's opt-out holds in B


async def test_one_workspaces_opt_out_never_silences_another(api: WorkspaceApi) -> None:
    # B_OPTED texted STOP to B's number: A's alphanumeric sender is not stopped by it
    status, body = await api.call(
        "POST", "/api/messages?workspace=a", json={"to": B_OPTED, "from": A_SENDER_ID, "text": "hi"}
    )
    assert status == 202, body
    status, body = await api.call(
        "POST", "/api/messages?workspace=b", json={"to": B_OPTED, "from": B_SENDER_ID, "text": "hi"}
    )
    assert status == 409, body  # in B it is


async def test_the_admin_acts_in_any_workspace(api: WorkspaceApi) -> None:
    status, body = await api.call("GET", f"/api/contacts/{B_OTHER}?workspace=b")
    assert status == 200 and body["name"] == "B-secret Bob"
    status, body = await api.call("GET", f"/api/contacts/{B_OTHER}")  # default's: none
    assert status == 404
    status, body = await api.call(
        "POST", "/api/messages?workspace=a", json={"to": B_PHONE, "text": "hello"}
    )
    assert (status, body["from"]) == (202, A_VN)  # a's first number when "from" is left out
    status, body = await api.call(
        "POST", "/api/messages?workspace=a", json={"to": B_PHONE, "from": B_VN, "text": "x"}
    )
    assert status == 400 and "not one of workspace a's senders" in body["error"]
    assert B_VN in body["error"] and "workspace b" not in body["error"]  # who owns it: unsaid
    status, body = await api.call(
        "PATCH", f"/api/contacts/{B_OTHER}?workspace=b", json={"name": "Bo"}
    )
    assert status == 200 and body["name"] == "Bo"
    await api.bot.run_until_idle()
    assert [(m.sender, m.recipient) for m in api.sandbox.messages] == [(A_VN, B_PHONE)]


async def test_idempotency_keys_are_each_workspaces_own(api: WorkspaceApi) -> None:
    a_key = (await api.key("a"))[1]
    b_key = (await api.key("b"))[1]
    for credential, sender in ((a_key, A_VN), (b_key, B_VN)):
        status, body = await api.call(
            "POST",
            "/api/messages",
            credential,
            json={"to": "+447700900123", "text": "same key"},
            headers={"Idempotency-Key": "order-42"},
        )
        assert (status, body["status"], body["from"]) == (202, "queued", sender)
