"""Settings from the environment and smsbot.toml: defaults, validation, precedence, secrecy."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Mapping
from pathlib import Path

import pytest

from smsbot.config import ConfigError, Secret, Settings

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
SECRET_VALUE = "zebra-7f3c91-TOPSECRET"  # distinctive, so a leak cannot be a coincidence
DB_PASSWORD = "hunter2-9d1e77-DBPASS"


@pytest.fixture
def no_file(tmp_path: Path) -> Path:
    return tmp_path / "absent.toml"


def load(env: Mapping[str, str], toml_path: Path) -> Settings:
    return Settings.from_env(env, toml_path=toml_path)


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "smsbot.toml"
    path.write_text(text, encoding="utf-8")
    return path


def env_names() -> dict[str, str]:
    """Map each Settings field read from the environment to its variable."""
    return {f.name: f.metadata["env"] for f in dataclasses.fields(Settings) if f.metadata}


# --- defaults -------------------------------------------------------------------------------


def test_defaults_with_an_empty_environment(no_file: Path) -> None:
    settings = load({}, no_file)
    assert settings == Settings()
    assert settings.database_url == "sqlite+aiosqlite:///./smsbot.db"
    assert settings.sync_database_url == "sqlite:///./smsbot.db"
    assert settings.provider == "sandbox"
    assert settings.divergent_api_key is None and settings.puresms_api_key is None
    assert settings.divergent_url == "https://connect-api.divergent.cloud"
    assert settings.puresms_url == "https://api.puresms.uk"
    assert settings.puresms_test_mode is False
    assert settings.webhook_secret is None and settings.webhook_secret_previous is None
    assert settings.webhook_tolerance_seconds == 300
    assert settings.insecure_no_signature is False
    assert settings.puresms_webhook_token is None and settings.api_key is None
    assert settings.sandbox_webhook_secret.get() == "sandbox-secret"
    assert settings.default_sender is None
    assert settings.sender == "+447700900100"  # the sandbox's number
    assert settings.default_region == "GB"
    assert (settings.host, settings.port, settings.sandbox_port) == ("127.0.0.1", 8080, 8081)
    assert (settings.workers, settings.step_max_attempts) == (8, 5)
    assert (settings.lease_seconds, settings.send_rate_per_second) == (30.0, 10.0)
    assert (settings.send_batch_size, settings.max_body_bytes) == (500, 1_048_576)
    assert settings.quiet_hours == "" and settings.quiet_window is None
    assert settings.default_timezone == "Europe/London"
    assert settings.conversation_expiry == dt.timedelta(days=7)
    assert settings.reminder_max_lateness == dt.timedelta(hours=6)
    assert (settings.max_segments, settings.segment_policy) == (6, "warn")
    assert settings.smart_characters is True
    assert (settings.flows_dir, settings.templates_dir) == (Path("flows"), Path("templates"))
    assert settings.log_level == "INFO"
    assert settings.numbers == {}


def test_every_field_but_numbers_has_a_variable() -> None:
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert set(env_names()) == fields - {
        "numbers",
        "contact_fields",
        "workspace_tables",
        "environ",
        "workspaces",
    }
    renamed = {"webhook_tolerance_seconds", "send_rate_per_second", "send_batch_size"}
    for field, env in env_names().items():
        if field not in renamed:
            assert env == "SMSBOT_" + field.upper()


def test_docs_list_every_variable() -> None:
    text = DOCS.read_text(encoding="utf-8")
    missing = [env for env in env_names().values() if f"`{env}`" not in text]
    assert missing == []


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().port = 1  # type: ignore[misc]


def test_empty_values_count_as_unset(no_file: Path) -> None:
    assert load({"SMSBOT_PORT": "", "SMSBOT_DIVERGENT_API_KEY": "  "}, no_file) == Settings()


def test_from_env_none_reads_os_environ(monkeypatch: pytest.MonkeyPatch, no_file: Path) -> None:
    monkeypatch.setenv("SMSBOT_PORT", "9999")
    assert Settings.from_env(toml_path=no_file).port == 9999


# --- values ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "text", "expected"),
    [
        *[("SMSBOT_PURESMS_TEST_MODE", t, True) for t in ("true", "1", "YES", "On", "TRUE")],
        *[("SMSBOT_SMART_CHARACTERS", t, False) for t in ("false", "0", "no", "OFF", "False")],
        ("SMSBOT_PORT", " 9000 ", 9000),
        ("SMSBOT_SANDBOX_PORT", "0", 0),
        ("SMSBOT_WORKERS", "256", 256),
        ("SMSBOT_SEND_RATE", "2.5", 2.5),
        ("SMSBOT_LEASE_SECONDS", "5", 5.0),
        ("SMSBOT_SEND_BATCH", "15000", 15_000),
        ("SMSBOT_CONVERSATION_EXPIRY", "7d", dt.timedelta(days=7)),
        ("SMSBOT_CONVERSATION_EXPIRY", "12h", dt.timedelta(hours=12)),
        ("SMSBOT_CONVERSATION_EXPIRY", "30m", dt.timedelta(minutes=30)),
        ("SMSBOT_CONVERSATION_EXPIRY", "3600s", dt.timedelta(hours=1)),
        ("SMSBOT_CONVERSATION_EXPIRY", "3600", dt.timedelta(hours=1)),
        ("SMSBOT_REMINDER_MAX_LATENESS", "1d12h", dt.timedelta(hours=36)),
        ("SMSBOT_REMINDER_MAX_LATENESS", "2H30M", dt.timedelta(minutes=150)),
        ("SMSBOT_DEFAULT_REGION", "IE", "IE"),
        ("SMSBOT_DEFAULT_TIMEZONE", "UTC", "UTC"),
        ("SMSBOT_DEFAULT_TIMEZONE", "America/New_York", "America/New_York"),
        ("SMSBOT_SEGMENT_POLICY", "fail", "fail"),
        ("SMSBOT_LOG_LEVEL", "DEBUG", "DEBUG"),
        ("SMSBOT_LOG_LEVEL", "debug", "DEBUG"),  # choices in any case, as booleans are
        ("SMSBOT_LOG_LEVEL", "Warning", "WARNING"),
        ("SMSBOT_PROVIDER", "Sandbox", "sandbox"),
        ("SMSBOT_SEGMENT_POLICY", "FAIL", "fail"),
        ("SMSBOT_FLOWS_DIR", "bots/flows", Path("bots/flows")),
        ("SMSBOT_DEFAULT_SENDER", "ACME", "ACME"),
        ("SMSBOT_HOST", "0.0.0.0", "0.0.0.0"),
        ("SMSBOT_DIVERGENT_URL", "http://localhost:9000/", "http://localhost:9000"),
    ],
)
def test_valid_values(env: str, text: str, expected: object, no_file: Path) -> None:
    field = {v: k for k, v in env_names().items()}[env]
    assert getattr(load({env: text}, no_file), field) == expected


BAD_VALUES = [
    ("SMSBOT_DATABASE_URL", "mysql://u:p@h/db"),
    ("SMSBOT_DATABASE_URL", "sqlite:smsbot.db"),
    ("SMSBOT_DATABASE_URL", "smsbot.db"),
    ("SMSBOT_DATABASE_URL", "sqlite://"),
    ("SMSBOT_PROVIDER", "twilio"),
    ("SMSBOT_PROVIDER", "divergent-connect"),
    ("SMSBOT_DIVERGENT_URL", "ftp://connect-api.divergent.cloud"),
    ("SMSBOT_DIVERGENT_URL", "connect-api.divergent.cloud"),
    ("SMSBOT_DIVERGENT_URL", "https://"),
    ("SMSBOT_PURESMS_URL", "https://api.puresms.uk:99999"),
    ("SMSBOT_PURESMS_URL", "http://[::1"),
    ("SMSBOT_PURESMS_TEST_MODE", "maybe"),
    ("SMSBOT_INSECURE_NO_SIGNATURE", "2"),
    ("SMSBOT_SMART_CHARACTERS", "yep"),
    ("SMSBOT_WEBHOOK_TOLERANCE", "0"),
    ("SMSBOT_WEBHOOK_TOLERANCE", "5m"),
    ("SMSBOT_DEFAULT_REGION", "UK"),
    ("SMSBOT_DEFAULT_REGION", "gb"),
    ("SMSBOT_DEFAULT_REGION", "GBR"),
    ("SMSBOT_PORT", "abc"),
    ("SMSBOT_PORT", "0"),
    ("SMSBOT_PORT", "65536"),
    ("SMSBOT_PORT", "80.5"),
    ("SMSBOT_PORT", "١٢٣"),  # Arabic-Indic digits: int() would accept them
    ("SMSBOT_SANDBOX_PORT", "-1"),
    ("SMSBOT_WORKERS", "0"),
    ("SMSBOT_WORKERS", "257"),
    ("SMSBOT_STEP_MAX_ATTEMPTS", "0"),
    ("SMSBOT_LEASE_SECONDS", "0"),
    ("SMSBOT_LEASE_SECONDS", "-5"),
    ("SMSBOT_LEASE_SECONDS", "nan"),
    ("SMSBOT_LEASE_SECONDS", "inf"),
    ("SMSBOT_SEND_RATE", "fast"),
    ("SMSBOT_SEND_BATCH", "15001"),
    ("SMSBOT_MAX_BODY_BYTES", "1MB"),
    ("SMSBOT_MAX_BODY_BYTES", "10"),
    ("SMSBOT_QUIET_HOURS", "21-08"),
    ("SMSBOT_QUIET_HOURS", "25:00-08:00"),
    ("SMSBOT_QUIET_HOURS", "21:00"),
    ("SMSBOT_QUIET_HOURS", "21:00-21:00"),
    ("SMSBOT_QUIET_HOURS", "9pm-8am"),
    ("SMSBOT_DEFAULT_TIMEZONE", "Mars/Olympus_Mons"),
    ("SMSBOT_DEFAULT_TIMEZONE", "europe/london"),
    ("SMSBOT_DEFAULT_TIMEZONE", "../../etc/passwd"),
    ("SMSBOT_CONVERSATION_EXPIRY", "0"),
    ("SMSBOT_CONVERSATION_EXPIRY", "7 days"),
    ("SMSBOT_CONVERSATION_EXPIRY", "1w"),
    ("SMSBOT_CONVERSATION_EXPIRY", "-1"),
    ("SMSBOT_CONVERSATION_EXPIRY", "1h30"),
    ("SMSBOT_REMINDER_MAX_LATENESS", "soon"),
    ("SMSBOT_MAX_SEGMENTS", "256"),
    ("SMSBOT_SEGMENT_POLICY", "ignore"),
    ("SMSBOT_LOG_LEVEL", "VERBOSE"),
]


@pytest.mark.parametrize(("env", "text"), BAD_VALUES)
def test_bad_environment_value_names_the_variable(env: str, text: str, no_file: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load({env: text}, no_file)
    message = str(error.value)
    assert message.startswith(f"{env} must be "), message
    assert f"got {text!r}" in message or env == "SMSBOT_DATABASE_URL"


@pytest.mark.parametrize(("env", "text"), BAD_VALUES)
def test_bad_file_value_names_the_key_and_file(env: str, text: str, tmp_path: Path) -> None:
    key = env.removeprefix("SMSBOT_").lower()
    path = write_toml(tmp_path, f"{key} = {text!r}\n".replace("'", '"'))
    with pytest.raises(ConfigError, match=re.escape(f"{key} in {path} ({env}) must be ")):
        load({}, path)


def test_error_says_how_to_fix() -> None:
    with pytest.raises(ConfigError) as error:
        Settings.from_env({"SMSBOT_PORT": "abc"}, toml_path=Path("/nonexistent/smsbot.toml"))
    assert str(error.value) == "SMSBOT_PORT must be an integer between 1 and 65535, got 'abc'"


# --- database URLs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "async_url", "sync_url"),
    [
        ("sqlite:///x.db", "sqlite+aiosqlite:///x.db", "sqlite:///x.db"),
        ("sqlite:////var/lib/x.db", "sqlite+aiosqlite:////var/lib/x.db", "sqlite:////var/lib/x.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db", "sqlite:///x.db"),
        ("sqlite:///:memory:", "sqlite+aiosqlite:///:memory:", "sqlite:///:memory:"),
        (
            "postgresql://u:p@db:5432/bot",
            "postgresql+asyncpg://u:p@db:5432/bot",
            "postgresql+psycopg://u:p@db:5432/bot",
        ),
        ("postgres://u@db/bot", "postgresql+asyncpg://u@db/bot", "postgresql+psycopg://u@db/bot"),
        (
            "postgresql+psycopg://db/bot",
            "postgresql+asyncpg://db/bot",
            "postgresql+psycopg://db/bot",
        ),
        (
            "postgresql+asyncpg://db/bot",
            "postgresql+asyncpg://db/bot",
            "postgresql+psycopg://db/bot",
        ),
        # asyncpg calls libpq's sslmode "ssl"; both directions are translated
        (
            "postgresql://db/bot?sslmode=require&application_name=smsbot",
            "postgresql+asyncpg://db/bot?ssl=require&application_name=smsbot",
            "postgresql+psycopg://db/bot?sslmode=require&application_name=smsbot",
        ),
    ],
)
def test_database_url_is_rewritten_for_async(
    given: str, async_url: str, sync_url: str, no_file: Path
) -> None:
    settings = load({"SMSBOT_DATABASE_URL": given}, no_file)
    assert settings.database_url == async_url
    assert settings.sync_database_url == sync_url


def test_database_password_is_masked_in_repr(no_file: Path) -> None:
    url = f"postgresql://smsbot:{DB_PASSWORD}@db:5432/bot"
    settings = load({"SMSBOT_DATABASE_URL": url}, no_file)
    assert settings.database_url == f"postgresql+asyncpg://smsbot:{DB_PASSWORD}@db:5432/bot"
    assert DB_PASSWORD not in repr(settings) and DB_PASSWORD not in str(settings)
    assert "postgresql+asyncpg://smsbot:***@db:5432/bot" in repr(settings)


@pytest.mark.parametrize(
    "url",
    [
        f"mysql://u:{DB_PASSWORD}@db/bot",
        f"mysql://u:{DB_PASSWORD}@with@at@db/bot",
        f"mysql://db/bot?user=u&password={DB_PASSWORD}",
        f"ftp://u:{DB_PASSWORD}@db/bot",
    ],
)
def test_database_password_is_masked_in_errors(url: str, no_file: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load({"SMSBOT_DATABASE_URL": url}, no_file)
    assert "SMSBOT_DATABASE_URL" in str(error.value)
    assert "***" in str(error.value)
    assert DB_PASSWORD not in str(error.value)


# --- provider -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "provider"),
    [
        ({}, "sandbox"),
        ({"SMSBOT_DIVERGENT_API_KEY": "k"}, "divergent"),
        ({"SMSBOT_PURESMS_API_KEY": "k"}, "puresms"),
        ({"SMSBOT_DIVERGENT_API_KEY": "k", "SMSBOT_PURESMS_API_KEY": "k"}, "divergent"),
        ({"SMSBOT_DIVERGENT_API_KEY": "k", "SMSBOT_PROVIDER": "sandbox"}, "sandbox"),
        ({"SMSBOT_DIVERGENT_API_KEY": "", "SMSBOT_PURESMS_API_KEY": "k"}, "puresms"),
        ({"SMSBOT_PURESMS_API_KEY": "k", "SMSBOT_PROVIDER": "puresms"}, "puresms"),
    ],
)
def test_provider_is_inferred_from_the_keys(
    env: dict[str, str], provider: str, no_file: Path
) -> None:
    assert load(env, no_file).provider == provider


@pytest.mark.parametrize("provider", ["divergent", "puresms"])
def test_provider_without_its_key_is_an_error(provider: str, no_file: Path) -> None:
    env = f"SMSBOT_{provider.upper()}_API_KEY"
    with pytest.raises(ConfigError) as error:
        load({"SMSBOT_PROVIDER": provider}, no_file)
    assert str(error.value).startswith(f"{env} is not set: ")
    assert str(error.value).endswith("set it, or use SMSBOT_PROVIDER=sandbox for local testing")


def test_replace_runs_the_cross_field_checks() -> None:
    settings = Settings()
    assert settings.replace(port=9000).port == 9000
    assert settings.port == 8080
    with pytest.raises(ConfigError, match="SMSBOT_DIVERGENT_API_KEY is not set"):
        settings.replace(provider="divergent")


# --- webhooks -------------------------------------------------------------------------------


def test_webhook_secrets_current_then_previous(no_file: Path) -> None:
    env = {"SMSBOT_WEBHOOK_SECRET": "new", "SMSBOT_WEBHOOK_SECRET_PREVIOUS": "old"}
    assert load(env, no_file).webhook_secrets() == ["new", "old"]
    assert load({"SMSBOT_WEBHOOK_SECRET": "new"}, no_file).webhook_secrets() == ["new"]


def test_previous_secret_alone_is_an_error(no_file: Path) -> None:
    with pytest.raises(ConfigError, match="SMSBOT_WEBHOOK_SECRET_PREVIOUS is set but"):
        load({"SMSBOT_WEBHOOK_SECRET_PREVIOUS": "old"}, no_file)


def test_sandbox_falls_back_to_the_sandbox_secret(no_file: Path) -> None:
    assert load({}, no_file).webhook_secrets() == ["sandbox-secret"]
    custom = load({"SMSBOT_SANDBOX_WEBHOOK_SECRET": "local"}, no_file)
    assert custom.webhook_secrets() == ["local"]
    real = load({"SMSBOT_DIVERGENT_API_KEY": "k"}, no_file)
    assert real.webhook_secrets() == []


def test_check_serve(no_file: Path) -> None:
    load({}, no_file).check_serve()  # sandbox: the sandbox secret is used
    unsigned = load({"SMSBOT_DIVERGENT_API_KEY": "k"}, no_file)
    with pytest.raises(ConfigError) as error:
        unsigned.check_serve()
    assert str(error.value) == (
        "SMSBOT_WEBHOOK_SECRET is not set: webhooks cannot be verified; set it or pass"
        " --insecure-no-signature for local testing"
    )
    unsigned.replace(insecure_no_signature=True).check_serve()
    unsigned.replace(webhook_secret=Secret("s")).check_serve()


# --- quiet hours ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "window"),
    [
        ("21:00-08:00", (dt.time(21, 0), dt.time(8, 0))),
        ("09:30-17:45", (dt.time(9, 30), dt.time(17, 45))),
        ("9:30-17:45", (dt.time(9, 30), dt.time(17, 45))),
        ("00:00-23:59", (dt.time(0, 0), dt.time(23, 59))),
    ],
)
def test_quiet_hours(text: str, window: tuple[dt.time, dt.time], no_file: Path) -> None:
    settings = load({"SMSBOT_QUIET_HOURS": text}, no_file)
    assert settings.quiet_hours == text
    assert settings.quiet_window == window


# --- TOML file ------------------------------------------------------------------------------

EXAMPLE_TOML = """\
database_url = "postgresql://smsbot@db/bot"
provider = "divergent"
divergent_api_key = "from-file"
port = 9000
smart_characters = false
send_rate = 2.5
conversation_expiry = "3d"
reminder_max_lateness = 600
quiet_hours = "21:00-08:00"

[numbers."+447700900100"]
flow = "appointments"
quiet_hours = "20:00-09:00"
"""


def test_file_values_are_read(tmp_path: Path) -> None:
    settings = load({}, write_toml(tmp_path, EXAMPLE_TOML))
    assert settings.database_url == "postgresql+asyncpg://smsbot@db/bot"
    assert settings.provider == "divergent"
    assert settings.divergent_api_key == Secret("from-file")
    assert settings.port == 9000
    assert settings.smart_characters is False
    assert settings.send_rate_per_second == 2.5
    assert settings.conversation_expiry == dt.timedelta(days=3)
    assert settings.reminder_max_lateness == dt.timedelta(minutes=10)
    assert settings.quiet_window == (dt.time(21), dt.time(8))
    assert settings.numbers == {
        "+447700900100": {"flow": "appointments", "quiet_hours": "20:00-09:00"}
    }


def test_environment_wins_over_the_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, EXAMPLE_TOML)
    settings = load({"SMSBOT_PORT": "7000", "SMSBOT_PROVIDER": "sandbox"}, path)
    assert (settings.port, settings.provider) == (7000, "sandbox")
    assert settings.send_rate_per_second == 2.5  # not overridden, so still from the file


def test_provider_is_inferred_from_a_key_in_the_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'puresms_api_key = "k"\n')
    assert load({}, path).provider == "puresms"


def test_smsbot_toml_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_toml(tmp_path, "port = 9001\n")
    monkeypatch.chdir(tmp_path)
    assert Settings.from_env({}).port == 9001


def test_smsbot_config_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "conf" / "bot.toml"
    elsewhere.parent.mkdir()
    elsewhere.write_text("port = 9002\n", encoding="utf-8")
    write_toml(tmp_path, "port = 9001\n")
    monkeypatch.chdir(tmp_path)
    assert Settings.from_env({"SMSBOT_CONFIG": str(elsewhere)}).port == 9002
    # an explicit toml_path wins over SMSBOT_CONFIG
    explicit = tmp_path / "smsbot.toml"
    assert Settings.from_env({"SMSBOT_CONFIG": str(elsewhere)}, toml_path=explicit).port == 9001


def test_missing_smsbot_config_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=re.escape(f"SMSBOT_CONFIG names {missing}")):
        Settings.from_env({"SMSBOT_CONFIG": str(missing)})


def test_unknown_file_key_names_the_file_and_key(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "prot = 8080\n")
    with pytest.raises(ConfigError) as error:
        load({}, path)
    assert str(error.value).startswith(f"unknown key prot (did you mean port?) in {path}: ")


def test_file_keys_are_the_variable_names_not_the_field_names(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "send_rate_per_second = 5\n")
    with pytest.raises(ConfigError, match=r"send_rate_per_second \(did you mean send_rate\?\)"):
        load({}, path)


def test_malformed_file_names_the_file_and_line(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'port = 8080\nhost = "unterminated\n')
    with pytest.raises(ConfigError) as error:
        load({}, path)
    assert str(error.value).startswith(f"{path} is not valid TOML: ")
    assert "line 2" in str(error.value)


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "smsbot.toml"
    path.write_bytes(b'host = "\xff"\n')
    with pytest.raises(ConfigError, match="UTF-8"):
        load({}, path)


@pytest.mark.parametrize("value", ["[8080]", "{ number = 8080 }", "2026-01-01T00:00:00Z"])
def test_file_value_of_the_wrong_shape(value: str, tmp_path: Path) -> None:
    path = write_toml(tmp_path, f"port = {value}\n")
    with pytest.raises(ConfigError, match=re.escape(f"port in {path}")):
        load({}, path)


@pytest.mark.parametrize("text", ['numbers = "all"\n', 'numbers = { "+447700900100" = 1 }\n'])
def test_numbers_must_be_tables(text: str, tmp_path: Path) -> None:
    path = write_toml(tmp_path, text)
    with pytest.raises(ConfigError, match=re.escape(f"numbers in {path} must be tables")):
        load({}, path)


# --- unknown variables ----------------------------------------------------------------------


def test_unknown_variable_suggests_the_close_match(no_file: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load({"SMSBOT_PROT": "8080"}, no_file)
    assert "SMSBOT_PROT (did you mean SMSBOT_PORT?)" in str(error.value)


def test_unknown_variables_are_all_listed(no_file: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load({"SMSBOT_WEBHOOK_SECRT": "x", "SMSBOT_ZZZZZZZZ": "y"}, no_file)
    assert "SMSBOT_WEBHOOK_SECRT (did you mean SMSBOT_WEBHOOK_SECRET?)" in str(error.value)
    assert "SMSBOT_ZZZZZZZZ" in str(error.value)


def test_tool_and_foreign_variables_are_allowed(no_file: Path) -> None:
    env = {
        "SMSBOT_TEST_POSTGRES_URL": "postgresql://db/test",
        "PATH": "/usr/bin",
        "smsbot_port": "1",  # not ours: the prefix is upper-case
    }
    assert load(env, no_file) == Settings()


# --- secrets --------------------------------------------------------------------------------


def test_secret_hides_its_value() -> None:
    secret = Secret(SECRET_VALUE)
    for shown in (repr(secret), str(secret), f"{secret}", f"{secret!r}", format(secret)):
        assert shown == "Secret('**********')"
    assert secret.get() == SECRET_VALUE
    assert secret and not Secret("")


def test_secret_equality() -> None:
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    assert Secret("a") == "a" and Secret("a") != "b"
    assert Secret("é") == Secret("é")
    assert Secret("a") != 1
    assert Secret("a") != "\udcff"  # a lone surrogate from a hostile header: unequal, no error
    assert hash(Secret("a")) == hash(Secret("a"))


SECRET_ENV = {
    "SMSBOT_DIVERGENT_API_KEY": SECRET_VALUE + "-divergent",
    "SMSBOT_PURESMS_API_KEY": SECRET_VALUE + "-puresms",
    "SMSBOT_WEBHOOK_SECRET": SECRET_VALUE + "-webhook",
    "SMSBOT_WEBHOOK_SECRET_PREVIOUS": SECRET_VALUE + "-previous",
    "SMSBOT_PURESMS_WEBHOOK_TOKEN": SECRET_VALUE + "-token",
    "SMSBOT_SANDBOX_WEBHOOK_SECRET": SECRET_VALUE + "-sandbox",
    "SMSBOT_API_KEY": SECRET_VALUE + "-api",
    "SMSBOT_DATABASE_URL": f"postgresql://smsbot:{DB_PASSWORD}@db/bot",
}


def assert_no_leak(text: str) -> None:
    assert SECRET_VALUE not in text
    assert DB_PASSWORD not in text


def test_every_secret_field_is_covered_here() -> None:
    secret_fields = {
        f.name for f in dataclasses.fields(Settings) if "Secret" in str(f.type) and f.metadata
    }
    assert {env_names()[name] for name in secret_fields} == set(SECRET_ENV) - {
        "SMSBOT_DATABASE_URL"
    }


def test_secrets_never_appear_in_repr(no_file: Path) -> None:
    settings = load(SECRET_ENV, no_file)
    assert settings.api_key == Secret(SECRET_VALUE + "-api")
    assert_no_leak(repr(settings))
    assert_no_leak(str(settings))
    # asdict() keeps the Secret objects; database_url is a plain string there, by design
    assert SECRET_VALUE not in repr(dataclasses.asdict(settings))


def bad_env(**changes: str) -> dict[str, str]:
    return {**SECRET_ENV, **changes}


ERROR_CASES: list[tuple[dict[str, str], str]] = [
    (bad_env(SMSBOT_PORT="abc"), ""),
    (bad_env(SMSBOT_SMART_CHARACTERS="maybe"), ""),
    (bad_env(SMSBOT_SEND_RATE="fast"), ""),
    (bad_env(SMSBOT_CONVERSATION_EXPIRY="forever"), ""),
    (bad_env(SMSBOT_QUIET_HOURS="late"), ""),
    (bad_env(SMSBOT_DEFAULT_REGION="XX"), ""),
    (bad_env(SMSBOT_DEFAULT_TIMEZONE="Nowhere/Else"), ""),
    (bad_env(SMSBOT_PROVIDER="twilio"), ""),
    (bad_env(SMSBOT_DIVERGENT_URL=f"https://u:{SECRET_VALUE}@[::1"), ""),
    (bad_env(SMSBOT_DATABASE_URL=f"mysql://smsbot:{DB_PASSWORD}@db/bot"), ""),
    (bad_env(SMSBOT_DATABASE_URL=f"oracle://db/bot?password={DB_PASSWORD}"), ""),
    (bad_env(SMSBOT_WEBHOOK_SECRT=SECRET_VALUE), ""),
    (bad_env(SMSBOT_PROVIDER="puresms", SMSBOT_PURESMS_API_KEY=""), ""),
    (bad_env(SMSBOT_WEBHOOK_SECRET=""), ""),
    (bad_env(), f'webhook_secret = "{SECRET_VALUE}"\nport = \n'),
    (bad_env(), f'webhook_secret = "{SECRET_VALUE}\n'),
    (bad_env(), f'api_key = "{SECRET_VALUE}"\ndefault_sender = ["{SECRET_VALUE}"]\n'),
    (bad_env(), f'api_key = "{SECRET_VALUE}"\nlease_seconds = "x"\n'),
    (bad_env(), f'numbers = "{SECRET_VALUE}"\n'),
]


@pytest.mark.parametrize(("env", "toml"), ERROR_CASES)
def test_secrets_never_appear_in_errors(env: dict[str, str], toml: str, tmp_path: Path) -> None:
    path = write_toml(tmp_path, toml)
    with pytest.raises(ConfigError) as error:
        load(env, path)
    assert_no_leak(str(error.value))
    assert_no_leak(repr(error.value))
    # chained exceptions are printed with the traceback, so they must be suppressed
    assert error.value.__cause__ is None
    assert error.value.__suppress_context__ or error.value.__context__ is None


def test_secrets_never_appear_in_check_serve(no_file: Path) -> None:
    env = {k: v for k, v in SECRET_ENV.items() if "WEBHOOK_SECRET" not in k}
    with pytest.raises(ConfigError) as error:
        load(env, no_file).check_serve()
    assert_no_leak(str(error.value))
