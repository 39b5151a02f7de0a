"""The operator API against its own OpenAPI document, fuzzed by schemathesis.

Cases that fit the document and cases that break it (schemathesis's negative mode) go to the real
server; it must never answer 5xx, must refuse (4xx) whatever the document forbids, and must answer
only with statuses, content types and bodies the document describes. The server runs on a loopback
port in a thread of its own, because schemathesis calls it synchronously. Few examples, drawn
deterministically: the same cases on every run, in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import checks
from schemathesis.generation import GenerationMode

from smsbot.app.server.app import create_app
from smsbot.app.server.schema import CONVERSATIONS, MESSAGE, start_body
from smsbot.channels.divergent.client import DivergentClient
from smsbot.clock import VirtualClock
from smsbot.engine.loader import load_flows
from smsbot.engine.runtime import FlowRuntime
from smsbot.pipeline.bot import Bot
from smsbot.sms.templates import SmsTemplates
from smsbot.store.engine import Database
from tests.support import API_KEY, EXAMPLE_FLOWS, VN, settings_for

REPO = Path(__file__).resolve().parents[1]
TOKEN = "schemathesis-operator-token"
EXAMPLES = 25  # per operation and mode
# What the schema cannot say, the test supplies: values of the semantic formats that are valid
# here, so a generated case is refused only for what it breaks on purpose.
schemathesis.openapi.format("phone", st.sampled_from(["+447700900123", "07700 900456"]))
schemathesis.openapi.format("sender", st.just(VN))
schemathesis.openapi.format("workspace", st.just("default"))  # the only one configured here
# Operations where a case that fits the document must be accepted: every field's meaning is in
# the schema or a format above (other routes also check template variables and flow data, such
# as a start's data.timezone, which must name an IANA zone).
FULLY_DESCRIBED = {"GET /api/conversations"}
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
    checks.ignored_auth,
]


async def _serve(db_path: Path, ready: threading.Event, port: list[int]) -> None:
    """Run the app until cancelled; put its port in `port` and set `ready`."""
    nowhere = "http://127.0.0.1:9"  # workers are off: the provider is never called
    settings = settings_for(
        f"sqlite+aiosqlite:///{db_path}",
        nowhere,
        **EXAMPLE_FLOWS,
        SMSBOT_API_KEY=TOKEN,
        SMSBOT_DEFAULT_SENDER=VN,
    )
    db = Database(settings.database_url)
    await db.create_all()
    bot = Bot(
        settings,
        provider=DivergentClient(API_KEY, nowhere),
        handler=FlowRuntime.from_settings(settings),
        clock=VirtualClock(),
        db=db,
    )
    runner = web.AppRunner(create_app(bot, run_workers=False))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port.append(runner.addresses[0][1])
    ready.set()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await db.dispose()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The operator API on a loopback port, served from a thread with its own event loop."""
    loop = asyncio.new_event_loop()
    ready, port = threading.Event(), []
    task = loop.create_task(_serve(tmp_path_factory.mktemp("api") / "smsbot.db", ready, port))

    def run() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(task)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(30), "the server did not start"
    try:
        yield f"http://127.0.0.1:{port[0]}"
    finally:
        loop.call_soon_threadsafe(task.cancel)
        thread.join(30)
        loop.close()


def _own_checks_accept(case: Any, flows: dict[str, Any]) -> None:
    """What the document allows, the server's own schema checks (schema.py) accept.

    The document is generated from those checks; this holds the two together where they could
    still part: JSON Schema's meaning of a keyword against schema.py's reading of it.
    """
    path: str = case.path
    if path == "/api/messages":
        MESSAGE.check(case.body)
    elif path == "/api/conversations":
        CONVERSATIONS.check_query({"phone": str(case.query["phone"])})
    elif path.endswith("/start"):
        name = case.path_parameters.get("name") or path.split("/")[3]
        start_body(flows[name]).check(case.body)


def _exercise(operation: Any, mode: GenerationMode, server: str, flows: dict[str, Any]) -> None:
    """Send EXAMPLES generated cases to one operation and check every answer."""
    extra = [checks.positive_data_acceptance] if operation.label in FULLY_DESCRIBED else []
    auth = {"Authorization": f"Bearer {TOKEN}"}

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def exercise(case: Any) -> None:
        if mode is GenerationMode.POSITIVE:
            _own_checks_accept(case, flows)
        case.call_and_validate(base_url=server, headers=auth, checks=CHECKS + extra, timeout=10)

    exercise()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_the_operator_api_keeps_to_its_openapi_document(server: str, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{server}/api/openapi.json")
    # Every case carries the right bearer token: break the request, not its authentication
    # (ignored_auth checks that separately). No string holds U+0000 or a lone surrogate: the
    # document's description says the server refuses them (the database cannot store them),
    # which no JSON Schema keyword can say of every string in an open object.
    schema.config.generation.update(with_security_parameters=False, allow_x00=False, codec="utf-8")
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {operation.label for operation in operations}
    assert (
        FULLY_DESCRIBED
        | {"POST /api/messages", "POST /api/flows/appointment/start-many"}
        | {"POST /api/contacts", "PATCH /api/contacts/{phone}", "POST /api/contacts/import"}
        | {"DELETE /api/contacts/{phone}", "GET /api/contacts/export"}
        <= labels
    )
    flows = load_flows(REPO / "flows", SmsTemplates(REPO / "templates"))
    for operation in operations:
        inputs = operation.query or operation.path_parameters or operation.body
        if mode is GenerationMode.NEGATIVE and not inputs:
            continue  # nothing a case could break (GET /api/campaigns takes no input)
        _exercise(operation, mode, server, flows)
