"""Build a Bot's parts from Settings: the provider client and the step handler."""

from __future__ import annotations

from smsbot.channels.base import SmsProvider
from smsbot.channels.divergent.client import DivergentClient
from smsbot.channels.puresms.client import PureSmsClient
from smsbot.channels.retry import RetryPolicy
from smsbot.config import Settings
from smsbot.engine.contract import StepHandler

SANDBOX_API_KEY = "sandbox"


def build_provider(
    settings: Settings, *, sandbox_url: str | None = None, attempts: int = 2
) -> SmsProvider:
    """Return the configured provider client; the sandbox speaks the Divergent API.

    The outbox retries durably, so the client itself tries only `attempts` times: a send then
    always ends well inside the outbox lease (SMSBOT_LEASE_SECONDS).
    """
    retry = RetryPolicy(attempts=attempts, max_delay=5.0, max_retry_after=5.0)
    if settings.provider == "puresms":
        assert settings.puresms_api_key is not None  # Settings checks this at start-up
        return PureSmsClient(
            settings.puresms_api_key.get(),
            settings.puresms_url,
            test_mode=settings.puresms_test_mode,
            retry=retry,
        )
    if settings.provider == "divergent":
        assert settings.divergent_api_key is not None
        return DivergentClient(
            settings.divergent_api_key.get(), settings.divergent_url, retry=retry
        )
    url = sandbox_url or f"http://127.0.0.1:{settings.sandbox_port}"
    return DivergentClient(SANDBOX_API_KEY, url, retry=retry)


def build_handler(settings: Settings) -> StepHandler:
    """Return the step handler that runs the flows under settings.flows_dir."""
    from smsbot.engine.runtime import FlowRuntime  # loads user code: only when serving

    return FlowRuntime.from_settings(settings)
