"""Build a Bot's parts from Settings: one provider client per workspace, and the step handler."""

from __future__ import annotations

from smsbot.channels.base import SmsProvider
from smsbot.channels.divergent.client import DivergentClient
from smsbot.channels.puresms.client import PureSmsClient
from smsbot.channels.retry import RetryPolicy
from smsbot.config import Settings
from smsbot.engine.contract import StepHandler
from smsbot.workspaces import DEFAULT, Workspace

SANDBOX_API_KEY = "sandbox"
DIVERGENT_URL = "https://connect-api.divergent.cloud"  # DivergentClient's own default
PURESMS_URL = "https://api.puresms.uk"


def build_providers(
    settings: Settings, *, sandbox_url: str | None = None, attempts: int = 2
) -> dict[str, SmsProvider]:
    """One client per workspace, by name, each with that workspace's account (provider, API
    key, URL): a workspace's messages go only through its own account.

    A sandbox workspace without a `url` of its own talks to the local sandbox: `sandbox_url`
    when `smsbot serve` runs one in-process, else http://127.0.0.1:SMSBOT_SANDBOX_PORT.
    """
    return {
        w.name: workspace_provider(settings, w, sandbox_url=sandbox_url, attempts=attempts)
        for w in settings.workspaces
    }


def build_provider(
    settings: Settings, *, sandbox_url: str | None = None, attempts: int = 2
) -> SmsProvider:
    """The `default` workspace's client (the SMSBOT_* account): `smsbot send`, the test kit."""
    default = settings.workspaces[DEFAULT]
    return workspace_provider(settings, default, sandbox_url=sandbox_url, attempts=attempts)


def workspace_provider(
    settings: Settings, workspace: Workspace, *, sandbox_url: str | None = None, attempts: int = 2
) -> SmsProvider:
    """The client of `workspace`'s account; the sandbox speaks the Divergent API.

    The outbox retries durably, so the client itself tries only `attempts` times: a send then
    always ends well inside the outbox lease (SMSBOT_LEASE_SECONDS).
    """
    retry = RetryPolicy(attempts=attempts, max_delay=5.0, max_retry_after=5.0)
    key = workspace.api_key.get() if workspace.api_key is not None else None
    if workspace.provider == "puresms":
        assert key is not None  # workspaces.py checks this when the settings are read
        return PureSmsClient(
            key, workspace.url or PURESMS_URL, test_mode=workspace.test_mode, retry=retry
        )
    if workspace.provider == "divergent":
        assert key is not None
        return DivergentClient(key, workspace.url or DIVERGENT_URL, retry=retry)
    if workspace.url:  # a sandbox of its own (tests, a demo): its key, if it has one
        return DivergentClient(key or SANDBOX_API_KEY, workspace.url, retry=retry)
    url = sandbox_url or f"http://127.0.0.1:{settings.sandbox_port}"
    return DivergentClient(SANDBOX_API_KEY, url, retry=retry)


def sandbox_providers(settings: Settings, sandbox_url: str) -> dict[str, SmsProvider]:
    """One client per workspace, every one to the sandbox at `sandbox_url`, whatever provider
    the workspace has: the test kit and `smsbot chat` never reach a real account."""
    retry = RetryPolicy(attempts=2, max_delay=5.0, max_retry_after=5.0)
    return {
        name: DivergentClient(SANDBOX_API_KEY, sandbox_url, retry=retry)
        for name in settings.workspaces.names
    }


def local_sandbox(settings: Settings) -> Workspace | None:
    """The first workspace that sends to the local sandbox (provider sandbox, no url), if any:
    `smsbot serve` then runs the sandbox, signing its webhooks with that workspace's secret."""
    return next((w for w in settings.workspaces if w.provider == "sandbox" and not w.url), None)


def build_handler(settings: Settings) -> StepHandler:
    """Return the step handler that runs the flows under settings.flows_dir."""
    from smsbot.engine.runtime import FlowRuntime  # loads user code: only when serving

    return FlowRuntime.from_settings(settings)
