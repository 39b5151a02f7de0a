"""The Docker files, read rather than run (no engine here): each point docs/deployment.md makes.

Compose's own `${VAR:?message}` / `${VAR:-default}` substitution is re-done here, so a test can
tell what `docker compose up` would do with a given environment.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LOCAL = REPO / "docker-compose.yml"
PRODUCTION = REPO / "docker-compose.prod.yml"
VARIABLE = re.compile(r"\$\{(\w+)(?:(:?[?-])([^}]*))?\}")


class MissingVariableError(Exception):
    """Compose would refuse to start: a `${VAR:?message}` is unset."""


def interpolate(text: str, env: dict[str, str]) -> str:
    """Substitute ${VAR}, ${VAR:-default} and ${VAR:?message} as compose does."""

    def value(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2) or "", match.group(3) or ""
        given = env.get(name)
        unset = given is None or (op.startswith(":") and given == "")
        if op.endswith("?") and unset:
            raise MissingVariableError(f"{name}: {arg}")
        if op.endswith("-") and unset:
            return arg
        return given or ""

    return VARIABLE.sub(value, text)


def compose(path: Path, env: dict[str, str]) -> dict[str, Any]:
    """The file as compose sees it under `env`: parsed, then every string substituted."""

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(item) for item in node]
        return interpolate(node, env) if isinstance(node, str) else node

    loaded: dict[str, Any] = walk(yaml.safe_load(path.read_text()))
    return loaded


def smsbot_services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in config["services"].items() if s.get("build") == "."}


def published(service: dict[str, Any]) -> list[str]:
    return [str(p) for p in service.get("ports", [])]


# --- the image ------------------------------------------------------------------------------

DOCKERFILE = (REPO / "Dockerfile").read_text()


def test_the_image_user_can_write_where_the_default_database_is() -> None:
    user = re.search(r"(?m)^USER (\S+)", DOCKERFILE)
    assert user is not None and user.group(1) not in ("root", "0")
    url = re.search(r"SMSBOT_DATABASE_URL=sqlite:///(/\S+)/smsbot\.db", DOCKERFILE)
    assert url is not None, "the image must point the default SQLite file at a writable place"
    data = url.group(1)
    assert re.search(rf"mkdir {data} && chown {user.group(1)} {data}", DOCKERFILE)
    assert f"VOLUME {data}" in DOCKERFILE


def test_the_health_check_gives_the_first_start_time() -> None:
    check = re.search(r"(?m)^HEALTHCHECK (.*)", DOCKERFILE)
    assert check is not None and "--start-period=" in check.group(1)


def test_the_dockerfile_describes_the_migration_lock_truly() -> None:
    assert "lock-free" not in DOCKERFILE
    assert "advisory lock" in DOCKERFILE


def test_the_build_context_leaves_out_what_the_image_must_not_hold() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    for pattern in (".venv/", ".git/", "**/__pycache__/", ".pytest_cache/", "*.db"):
        assert pattern in ignored, pattern
    for secret in (".env", ".smsbot-api-key"):
        assert secret in ignored, secret


# --- compose on your machine: the sandbox, no secrets ----------------------------------------


def test_local_compose_runs_with_an_empty_environment() -> None:
    config = compose(LOCAL, {})  # raises MissingVariableError if compose would refuse
    [service] = smsbot_services(config).values()
    assert service["environment"]["SMSBOT_PROVIDER"] == "sandbox"
    assert not any("DIVERGENT" in name for name in service["environment"])
    assert any(v.endswith(":/data") for v in service["volumes"])  # the database survives
    assert sorted(published(service)) == ["127.0.0.1:8080:8080", "127.0.0.1:8081:8081"]


def test_local_compose_has_no_password() -> None:
    assert not re.search(r"(?i)password", LOCAL.read_text().split("services:", 1)[1])


# --- compose for production: PostgreSQL, two processes, secrets from the environment ---------

SECRETS = {
    "POSTGRES_PASSWORD": "0123abcd",
    "SMSBOT_DIVERGENT_API_KEY": "key",
    "SMSBOT_WEBHOOK_SECRET": "whsec",
}


def test_production_compose_refuses_to_start_without_a_database_password() -> None:
    with pytest.raises(MissingVariableError, match="POSTGRES_PASSWORD"):
        compose(PRODUCTION, {k: v for k, v in SECRETS.items() if k != "POSTGRES_PASSWORD"})


def test_production_compose_takes_the_password_from_the_environment() -> None:
    config = compose(PRODUCTION, SECRETS)
    postgres = config["services"]["postgres"]["environment"]
    assert postgres["POSTGRES_PASSWORD"] == "0123abcd"
    services = smsbot_services(config)
    assert len(services) == 2
    for service in services.values():
        url = service["environment"]["SMSBOT_DATABASE_URL"]
        assert url == "postgresql://smsbot:0123abcd@postgres:5432/smsbot"
        assert service["environment"]["SMSBOT_DIVERGENT_API_KEY"] == "key"
    raw = PRODUCTION.read_text()
    assert "POSTGRES_PASSWORD: smsbot" not in raw and ":smsbot@" not in raw  # no literal


def test_production_compose_does_not_demand_a_divergent_key_for_the_sandbox() -> None:
    # smsbot itself names a missing provider key in one line; compose must not insist on one.
    config = compose(PRODUCTION, {"POSTGRES_PASSWORD": "x", "SMSBOT_PROVIDER": "sandbox"})
    for service in smsbot_services(config).values():
        assert service["environment"]["SMSBOT_PROVIDER"] == "sandbox"
        assert service["environment"]["SMSBOT_DIVERGENT_API_KEY"] == ""


@pytest.mark.parametrize("path", [LOCAL, PRODUCTION], ids=lambda p: p.name)
def test_metrics_are_never_published_on_every_interface(path: Path) -> None:
    # /metrics has no authentication and shares the bot's port: publish on loopback only.
    env = {"POSTGRES_PASSWORD": "x"}
    for service in compose(path, env)["services"].values():
        for port in published(service):
            assert port.startswith("127.0.0.1:"), f"{path.name} publishes {port} to everyone"


@pytest.mark.parametrize("path", [LOCAL, PRODUCTION], ids=lambda p: p.name)
def test_compose_lets_steps_in_flight_finish(path: Path) -> None:
    for service in smsbot_services(compose(path, {"POSTGRES_PASSWORD": "x"})).values():
        assert service["stop_grace_period"] == "12s"  # smsbot stops within 10 s of SIGTERM


def test_deployment_docs_give_both_commands() -> None:
    text = (REPO / "docs/deployment.md").read_text()
    assert "docker compose up --build" in text
    assert "docker compose -f docker-compose.prod.yml up --build -d" in text
