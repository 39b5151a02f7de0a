"""[workspaces.NAME] tables: what they mean, and that every error names the workspace and key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from smsbot.config import ConfigError, Settings
from smsbot.engine.runtime import FlowRuntime
from smsbot.workspaces import DEFAULT

KEY_A = "a-key-0123456789abcdef"
SECRET_A = "a-webhook-secret-zebra-4411"

TWO_CLIENTS = """
[workspaces.clinic]
provider = "divergent"
api_key_env = "CLINIC_API_KEY"
webhook_secret_env = "CLINIC_WEBHOOK_SECRET"
workspace_id = "ws_clinic"
numbers = ["+447700900200", "07700 900201"]
sender_ids = ["Clinic"]
flows = ["appointment"]
send_rate = 5
[workspaces.clinic.compliance]
help_text = "Clinic: call 020 7946 0000."

[workspaces.shop]
provider = "sandbox"
numbers = ["+447700900300"]
quiet_hours = "21:00-08:00"
"""
ENV = {"CLINIC_API_KEY": KEY_A, "CLINIC_WEBHOOK_SECRET": SECRET_A}


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Settings:
    path = tmp_path / "smsbot.toml"
    path.write_text(text, encoding="utf-8")
    return Settings.from_env(ENV if env is None else env, toml_path=path)


def fails(tmp_path: Path, text: str, message: str, env: dict[str, str] | None = None) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(tmp_path, text, env)


def test_an_old_single_account_configuration_is_the_default_workspace_owning_every_number(
    tmp_path: Path,
) -> None:
    settings = Settings.from_env(
        {
            "SMSBOT_PROVIDER": "divergent",
            "SMSBOT_DIVERGENT_API_KEY": KEY_A,
            "SMSBOT_WEBHOOK_SECRET": SECRET_A,
            "SMSBOT_WEBHOOK_SECRET_PREVIOUS": "the-old-secret",
            "SMSBOT_SEND_RATE": "3",
        },
        toml_path=tmp_path / "absent.toml",
    )
    (default,) = settings.workspaces
    assert default.name == DEFAULT and default.catch_all
    assert default.provider == "divergent" and default.api_key == KEY_A
    assert default.url == "https://connect-api.divergent.cloud"
    assert [s.get() for s in default.webhook_secrets] == [SECRET_A, "the-old-secret"]
    assert default.send_rate == 3.0
    assert settings.workspaces.owner("+447700900999") is default  # any number, as before
    assert settings.workspaces.owner("AnyName") is default


def test_two_declared_workspaces_own_exactly_their_numbers(tmp_path: Path) -> None:
    settings = load(tmp_path, TWO_CLIENTS)
    workspaces = settings.workspaces
    assert workspaces.names == [DEFAULT, "clinic", "shop"]
    clinic, shop = workspaces["clinic"], workspaces["shop"]
    assert clinic.numbers == {"+447700900200", "+447700900201"}  # national form normalised
    assert clinic.sender_ids == {"Clinic"}
    assert clinic.api_key == KEY_A and [s.get() for s in clinic.webhook_secrets] == [SECRET_A]
    assert clinic.provider_workspace_id == "ws_clinic" and clinic.send_rate == 5.0
    assert clinic.routing == {
        "flows": ["appointment"],
        "compliance": {"help_text": "Clinic: call 020 7946 0000."},
    }
    assert shop.routing == {"quiet_hours": "21:00-08:00"}
    assert shop.webhook_secrets == (settings.sandbox_webhook_secret,)  # the sandbox's own
    assert workspaces.owner("+447700900201") is clinic
    assert workspaces.owner("Clinic") is clinic
    assert workspaces.owner("+447700900300") is shop
    # with clients declared, the default workspace is no longer a catch-all
    assert not workspaces[DEFAULT].catch_all
    assert workspaces.owner("+447700900999") is None
    assert workspaces.by_provider_id("ws_clinic") is clinic
    assert workspaces.by_provider_id("ws_other") is None


def test_a_default_table_gives_the_single_account_its_numbers(tmp_path: Path) -> None:
    text = TWO_CLIENTS + '\n[workspaces.default]\nnumbers = ["+447700900100"]\n'
    workspaces = load(tmp_path, text).workspaces
    assert workspaces.owner("+447700900100") is workspaces[DEFAULT]
    assert workspaces[DEFAULT].provider == "sandbox"  # from SMSBOT_PROVIDER's default


def test_secrets_never_print(tmp_path: Path) -> None:
    settings = load(tmp_path, TWO_CLIENTS)
    shown = repr(settings) + str(settings) + repr(list(settings.workspaces))
    assert KEY_A not in shown and SECRET_A not in shown


def test_the_receipts_token_finds_its_workspace(tmp_path: Path) -> None:
    text = (
        '[workspaces.legacy]\nprovider = "puresms"\napi_key = "k-0123456789abcdef"\n'
        'receipts_token = "tok-legacy-0123456789"\nnumbers = ["+447700900400"]\n'
    )
    workspaces = load(tmp_path, text, {}).workspaces
    assert workspaces.by_receipts_token("tok-legacy-0123456789") is workspaces["legacy"]
    assert workspaces.by_receipts_token("tok-legacy-012345678") is None


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        (
            '[workspaces.a]\nnumbers = ["+447700900200"]\n',
            {},
            "workspaces.a.provider is not set",
        ),
        (
            '[workspaces.a]\nprovider = "divergent"\nnumbers = ["+447700900200"]\n',
            {},
            "workspaces.a.api_key is not set",
        ),
        (
            '[workspaces.a]\nprovider = "divergent"\napi_key_env = "NOPE"\n'
            'numbers = ["+447700900200"]\n',
            {},
            "workspaces.a.api_key_env names NOPE, which is not set",
        ),
        (
            '[workspaces.a]\nprovider = "divergent"\napi_key = "x"\napi_key_env = "A"\n',
            {"A": "y"},
            "workspaces.a.api_key and workspaces.a.api_key_env are both set",
        ),
        (
            '[workspaces.a]\nprovider = "divergent"\napi_key = "k"\nnumbers = ["+447700900200"]\n',
            {},
            "workspaces.a.webhook_secret is not set",
        ),
        ('[workspaces.a]\nprovider = "sandbox"\n', {}, "workspaces.a owns no number"),
        (
            '[workspaces.a]\nprovider = "sms-r-us"\nnumbers = ["+447700900200"]\n',
            {},
            "workspaces.a.provider must be one of sandbox, divergent, puresms",
        ),
        (
            '[workspaces.a]\nprovider = "sandbox"\nnumbers = ["not a number"]\n',
            {},
            "workspaces.a.numbers: 'not a number'",
        ),
        (
            '[workspaces.a]\nprovider = "sandbox"\nnumbers = "+447700900200"\n',
            {},
            "workspaces.a.numbers must be a list of strings",
        ),
        (
            '[workspaces.a]\nprovider = "sandbox"\nnumbers = ["+447700900200"]\n'
            '[workspaces.b]\nprovider = "sandbox"\nnumbers = ["07700900200"]\n',
            {},
            "+447700900200 is in both workspaces.a and workspaces.b",
        ),
        (
            '[workspaces.a]\nprovider = "sandbox"\nnumbers = ["+447700900200"]\nnumber = 1\n',
            {},
            "unknown key workspaces.a.number (did you mean numbers?)",
        ),
        (
            '[workspaces."Clinic A"]\nprovider = "sandbox"\n',
            {},
            "[workspaces.Clinic A]",
        ),
        (
            '[workspaces.a]\nprovider = "sandbox"\nnumbers = ["+447700900200"]\nsend_rate = 0\n',
            {},
            "workspaces.a.send_rate must be a number greater than 0, got '0'",
        ),
        (
            '[workspaces.a]\nprovider = "sandbox"\nnumbers = ["+447700900200"]\n'
            'webhook_secret_previous = "old"\n',
            {},
            "workspaces.a.webhook_secret_previous is set but workspaces.a.webhook_secret is not",
        ),
        ('workspaces = "all"\n', {}, "workspaces in"),
    ],
)
def test_every_error_names_the_workspace_and_the_key(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    fails(tmp_path, text, message, env)


def test_an_error_never_shows_a_secret(tmp_path: Path) -> None:
    text = (
        '[workspaces.a]\nprovider = "divergent"\napi_key = "k-zebra-secret-991"\n'
        'webhook_secret = "sandbox-secret"\nnumbers = ["+447700900200"]\n'
    )
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, {})
    assert "the sandbox's public secret" in str(caught.value)
    assert "zebra" not in str(caught.value)


def test_the_documented_two_client_example_loads(tmp_path: Path) -> None:
    page = Path(__file__).resolve().parents[1] / "docs" / "workspaces.md"
    blocks = re.findall(r"^```toml\n(.*?)^```", page.read_text(encoding="utf-8"), re.M | re.S)
    env = {"CLINIC_API_KEY": KEY_A, "CLINIC_WEBHOOK_SECRET": SECRET_A}
    repo = page.parents[1]
    settings = load(tmp_path, "\n".join(blocks), env).replace(
        flows_dir=repo / "flows", templates_dir=repo / "templates"
    )
    workspaces = settings.workspaces
    assert workspaces.names == [DEFAULT, "clinic", "shop"]
    assert workspaces.owner("+447700900100") is workspaces[DEFAULT]
    assert workspaces.owner("+447700900200") is workspaces["clinic"]
    assert workspaces.owner("Clinic") is workspaces["clinic"]
    # the example's routing holds too: its flows exist, and a number's own table (send_rate)
    # keeps the clinic's flows and HELP text
    router = FlowRuntime.from_settings(settings).router
    clinic = router.binding("+447700900200")
    assert clinic.flows == {"appointment", "keywords"} and clinic.send_rate == 1.0
    assert clinic.compliance.help_text.startswith("Riverside Clinic")
    assert router.binding("+447700900300").flows == {"keywords"}
