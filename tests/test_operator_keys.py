"""Operator credentials: workspace keys (`smsbot keys`), the OAuth token endpoint, expiry and
revocation, and which workspace each credential acts in."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import json
import logging
import os
import re
import shlex
from pathlib import Path
from typing import Any

import jwt
import pytest
from sqlalchemy import create_engine, func, select, text

from smsbot.app.cli import main
from smsbot.app.credentials import authenticate
from smsbot.app.keys_cli import revoke_key
from smsbot.app.tokens import LIFETIME
from smsbot.channels.sandbox import Sandbox
from smsbot.store.models import operator_keys_t, server_secrets_t
from tests.operator_support import ADMIN, T0, WorkspaceApi, workspace_api, workspace_bot

TOML = """
[workspaces.clinic]
provider = "sandbox"
numbers = ["+447700900200"]
"""


@pytest.fixture
async def api(db_url: str, sandbox: Sandbox, aiohttp_client: Any) -> WorkspaceApi:
    return await workspace_api(db_url, sandbox, aiohttp_client)


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def project(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A project directory with a `clinic` workspace, on a fresh database; its sync URL."""
    (tmp_path / "smsbot.toml").write_text(TOML)
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("SMSBOT_")]:
        if not name.startswith("SMSBOT_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SMSBOT_DATABASE_URL", db_url)
    url = db_url.replace("+aiosqlite", "").replace("+asyncpg", "+psycopg")
    return url


def test_keys_are_shown_once_stored_as_hashes_listed_and_revoked(
    project: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _cli(capsys, "keys", "create", "--workspace", "clinic", "--name", "crm-sync")
    assert code == 0
    key_id = re.search(r"key id: (key_[0-9a-f]{12})", out)
    key = re.search(r"key:\s+(smsk_[A-Za-z0-9_-]{43})", out)
    assert key_id and key, out
    assert "not shown again" in out
    engine = create_engine(project)
    with engine.connect() as conn:
        [row] = conn.execute(select(operator_keys_t)).all()
    engine.dispose()
    assert (row.id, row.workspace, row.name) == (key_id.group(1), "clinic", "crm-sync")
    assert row.key_hash == hashlib.sha256(key.group(1).encode()).hexdigest()
    assert key.group(1) not in repr(tuple(row))  # only the hash is stored

    code, out, _ = _cli(capsys, "keys", "create", "--workspace", "default", "--format", "env")
    assert code == 0
    lines = dict(line.split("=", 1) for line in out.strip().splitlines())
    assert set(lines) == {"OPERATOR_KEY_ID", "OPERATOR_KEY"}
    assert shlex.quote(lines["OPERATOR_KEY"]) == lines["OPERATOR_KEY"]  # safe to eval

    code, out, _ = _cli(capsys, "keys", "list")
    assert code == 0 and key_id.group(1) in out and "crm-sync" in out and "active" in out
    assert key.group(1) not in out and lines["OPERATOR_KEY"] not in out
    code, out, _ = _cli(capsys, "keys", "list", "--workspace", "default", "--json")
    [listed] = json.loads(out)
    assert listed["id"] == lines["OPERATOR_KEY_ID"] and "key" not in listed

    code, out, _ = _cli(capsys, "keys", "revoke", key_id.group(1))
    assert code == 0 and "revoked" in out
    code, out, _ = _cli(capsys, "keys", "list", "--workspace", "clinic")
    assert "revoked" in out and "active" not in out
    code, out, _ = _cli(capsys, "keys", "revoke", key_id.group(1))
    assert code == 0 and "revoked already" in out


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("keys", "create", "--workspace", "clinc"), "did you mean 'clinic'?"),
        (("keys", "create", "--workspace", "other"), "the workspaces here: default, clinic"),
        (("keys", "list", "--workspace", "other"), "no workspace 'other'"),
        (("keys", "revoke", "key_000000000000"), "`smsbot keys list` shows the keys"),
        (("keys", "create", "--workspace", "clinic", "--name", "x" * 101), "--name is longer"),
    ],
)
def test_a_keys_mistake_is_one_line_saying_what_to_fix(
    project: str, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], said: str
) -> None:
    code, out, err = _cli(capsys, *args)
    assert code == 2
    *migrated, line = err.strip().splitlines()  # a fresh database's migration is said first
    assert said in line and "Traceback" not in err
    assert all("created the database schema" in m for m in migrated)
    assert "smsk_" not in out + err


async def test_each_credential_acts_in_its_own_workspace(api: WorkspaceApi) -> None:
    for workspace, phone in (("a", "+447700900001"), ("b", "+447700900002")):
        status, _ = await api.call(
            "POST", f"/api/contacts?workspace={workspace}", json={"phone": phone}
        )
        assert status == 201
    key_id, key = await api.key("a")
    token = await api.token(key_id, key)
    for credential in (key, token):
        status, body = await api.call("GET", "/api/contacts", credential)
        assert status == 200 and [c["phone"] for c in body["contacts"]] == ["+447700900001"]
        status, body = await api.call("GET", "/api/contacts?workspace=a", credential)
        assert status == 200 and len(body["contacts"]) == 1
        for other in ("b", "default", "nope"):  # never says whether another one exists
            status, body = await api.call("GET", f"/api/contacts?workspace={other}", credential)
            assert status == 403 and body["field"] == "workspace"
            assert body["error"] == (
                "this credential acts in workspace a only: leave out ?workspace= or name that one"
            )
    # the admin key acts in any workspace: default when none is named
    status, body = await api.call("GET", "/api/contacts")
    assert status == 200 and body["contacts"] == []
    status, body = await api.call("GET", "/api/contacts?workspace=b")
    assert [c["phone"] for c in body["contacts"]] == ["+447700900002"]
    status, body = await api.call("GET", "/api/contacts?workspace=nope")
    assert (
        status == 400 and body["error"] == "no workspace 'nope'; the workspaces here: default, a, b"
    )
    status, body = await api.call("GET", "/api/contacts?workspace=A%20")
    assert status == 400 and "must be a workspace name" in body["error"]
    status, body = await api.call("GET", "/api/contacts?workspace=a&workspace=b")
    assert status == 400 and body["field"] == "workspace"


async def test_a_wrong_credential_is_a_401_with_a_challenge(api: WorkspaceApi) -> None:
    key_id, key = await api.key("a")
    for header in (
        "",
        "Bearer",
        f"Bearer {key}x",
        f"Bearer {key_id}",
        f"Basic {key}",
        "Bearer a.b.c",
    ):
        resp = await api.client.get("/api/contacts", headers={"Authorization": header})
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == 'Bearer realm="smsbot"'
        assert "smsbot keys create" in (await resp.json())["error"]


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def test_the_token_endpoint_grants_client_credentials(api: WorkspaceApi) -> None:
    key_id, key = await api.key("b", "reporting")
    for kwargs in (
        {"data": {"grant_type": "client_credentials"}, "headers": _basic(key_id, key)},
        {"data": {"grant_type": "client_credentials", "client_id": key_id, "client_secret": key}},
        {
            "data": {"grant_type": "client_credentials", "scope": "workspace:b"},
            "headers": _basic(key_id, key),
        },
    ):
        resp = await api.client.post("/oauth/token", **kwargs)
        body = await resp.json()
        assert resp.status == 200, body
        assert resp.headers["Cache-Control"] == "no-store"
        assert (body["token_type"], body["expires_in"], body["scope"]) == (
            "Bearer",
            900,
            "workspace:b",
        )
        claims = jwt.decode(body["access_token"], options={"verify_signature": False})
        assert (claims["sub"], claims["ws"], claims["exp"] - claims["iat"]) == (key_id, "b", 900)
        assert claims["iat"] == int(T0.timestamp())  # the bot's clock, not the wall clock
        assert key not in body["access_token"]
        caller = await authenticate(api.bot, body["access_token"])
        assert caller is not None and caller.workspace == "b" and key_id in caller.name


async def _token_error(api: WorkspaceApi, **kwargs: Any) -> tuple[int, dict[str, Any], Any]:
    resp = await api.client.post("/oauth/token", **kwargs)
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.content_type == "application/json"
    return resp.status, await resp.json(), resp.headers


async def test_token_errors_are_rfc_6749_answers(api: WorkspaceApi) -> None:
    key_id, key = await api.key("a")
    grant = {"grant_type": "client_credentials"}
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"json": grant, "headers": _basic(key_id, key)}, 400, "invalid_request"),
        ({"data": {}, "headers": _basic(key_id, key)}, 400, "invalid_request"),
        (
            {"data": {"grant_type": "password"}, "headers": _basic(key_id, key)},
            400,
            "unsupported_grant_type",
        ),
        (
            {
                "data": "grant_type=client_credentials&grant_type=client_credentials",
                "headers": {
                    **_basic(key_id, key),
                    "Content-Type": "application/x-www-form-urlencoded",
                },
            },
            400,
            "invalid_request",
        ),
        (
            {
                "data": {**grant, "client_id": key_id, "client_secret": key},
                "headers": _basic(key_id, key),
            },
            400,
            "invalid_request",
        ),
        (
            {"data": {**grant, "scope": "workspace:b"}, "headers": _basic(key_id, key)},
            400,
            "invalid_scope",
        ),
        ({"data": grant}, 401, "invalid_client"),
        ({"data": {**grant, "client_id": key_id}}, 401, "invalid_client"),
        ({"data": grant, "headers": _basic(key_id, key + "x")}, 401, "invalid_client"),
        ({"data": grant, "headers": _basic("key_000000000000", key)}, 401, "invalid_client"),
        ({"data": grant, "headers": _basic(key_id, "")}, 401, "invalid_client"),
        ({"data": grant, "headers": {"Authorization": "Basic !!!"}}, 401, "invalid_client"),
        (
            {
                "data": grant,
                "headers": {"Authorization": "Basic " + base64.b64encode(b"nocolon").decode()},
            },
            401,
            "invalid_client",
        ),
    ]
    for kwargs, status, error in cases:
        got, body, headers = await _token_error(api, **kwargs)
        assert (got, body["error"]) == (status, error), (kwargs, body)
        assert body["error_description"] and key not in body["error_description"]
        if status == 401:
            assert headers["WWW-Authenticate"].startswith("Basic realm=")
    resp = await api.client.get("/oauth/token")
    assert resp.status == 405


async def test_a_token_expires_by_the_bots_clock(api: WorkspaceApi) -> None:
    key_id, key = await api.key("a")
    token = await api.token(key_id, key)
    api.clock.advance(LIFETIME - dt.timedelta(seconds=1))
    assert (await api.call("GET", "/api/contacts", token))[0] == 200
    api.clock.advance(dt.timedelta(seconds=1))
    assert (await api.call("GET", "/api/contacts", token))[0] == 401
    assert (await api.call("GET", "/api/contacts", key))[0] == 200  # the key itself lasts
    fresh = await api.token(key_id, key)
    assert (await api.call("GET", "/api/contacts", fresh))[0] == 200


async def test_revoking_a_key_refuses_it_and_its_tokens_at_once(api: WorkspaceApi) -> None:
    key_id, key = await api.key("a")
    other_id, other = await api.key("a")
    token = await api.token(key_id, key)
    await api.bot.db.write(lambda conn: revoke_key(conn, key_id))
    for credential in (key, token):
        assert (await api.call("GET", "/api/contacts", credential))[0] == 401
    status, body, _ = await _token_error(
        api, data={"grant_type": "client_credentials"}, headers=_basic(key_id, key)
    )
    assert (status, body["error"]) == (401, "invalid_client")
    assert (await api.call("GET", "/api/contacts", other))[0] == 200  # only that key
    assert (await api.call("GET", "/api/contacts", await api.token(other_id, other)))[0] == 200


async def test_a_forged_or_foreign_token_is_refused(api: WorkspaceApi) -> None:
    key_id, key = await api.key("a")
    token = await api.token(key_id, key)
    claims = jwt.decode(token, options={"verify_signature": False})
    forged = [
        jwt.encode(
            {**claims, "ws": "b"},
            "not-the-signing-key-of-this-deployment-at-all",
            algorithm="HS256",
        ),
        jwt.encode({**claims, "ws": "b"}, None, algorithm="none"),
        ".".join([*token.split(".")[:2], "AAAA"]),
    ]
    header, _, signature = token.split(".")
    body = base64.urlsafe_b64encode(json.dumps({**claims, "ws": "b"}).encode()).decode().rstrip("=")
    forged.append(f"{header}.{body}.{signature}")  # another workspace, the same signature
    for credential in forged:
        assert await authenticate(api.bot, credential) is None
        assert (await api.call("GET", "/api/contacts?workspace=b", credential))[0] == 401


async def test_every_process_on_one_database_shares_the_signing_key(
    api: WorkspaceApi, db_url: str, sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key_id, key = await api.key("a")
    token = await api.token(key_id, key)
    other = await workspace_bot(db_url, sandbox, api.clock)  # a second `smsbot serve`
    try:
        caller = await authenticate(other, token)
        assert caller is not None and caller.workspace == "a"
        async with other.db.session() as s:
            assert (
                await s.execute(select(func.count()).select_from(server_secrets_t))
            ).scalar() == 1
            secret = (await s.execute(select(server_secrets_t.c.value))).scalar_one()
    finally:
        await other.db.dispose()
    for said in (key, token, secret):  # nothing secret is ever logged
        assert said not in caplog.text


async def test_a_key_of_a_workspace_no_longer_configured_is_refused(api: WorkspaceApi) -> None:
    _, key = await api.key("a")
    await api.bot.db.write(
        lambda conn: conn.execute(text("UPDATE operator_keys SET workspace = 'gone'"))
    )
    assert await authenticate(api.bot, key) is None
    assert (await api.call("GET", "/api/contacts", key))[0] == 401
    assert (await api.call("GET", "/api/contacts", ADMIN))[0] == 200


async def test_processes_starting_together_make_one_signing_key(db_url: str) -> None:
    from smsbot.app.tokens import signing_key
    from smsbot.store.engine import Database

    first, second = Database(db_url), Database(db_url)  # two `smsbot serve` on one database
    await first.create_all()
    try:
        keys = await asyncio.gather(signing_key(first, T0), signing_key(second, T0))
        assert keys[0] == keys[1] and len(keys[0]) >= 64
        assert await signing_key(first, T0 + LIFETIME) == keys[0]  # made once, kept
    finally:
        await first.dispose()
        await second.dispose()
