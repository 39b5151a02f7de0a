"""What the campaign sync keeps: each campaign, the number it sends from and its workspace.

A campaign's fires belong to the workspace of the number it sends from (smsbot/workspaces.py),
and are made for that workspace's contacts only. A campaign that names no number sends from
SMSBOT_DEFAULT_SENDER (or the only [numbers] table), the default workspace's settings: its fires
are the workspace that owns that number, `default` in a single-client deployment. A campaign
whose number no workspace owns schedules nothing, like one with no number at all.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

from smsbot.config import Settings
from smsbot.engine.campaign import Campaign
from smsbot.sms.phone import PhoneNumberError, normalize_sender
from smsbot.store.models import DEFAULT_WORKSPACE

log = logging.getLogger(__name__)


def campaign_sender(settings: Settings, campaign: Campaign) -> str | None:
    """The number a campaign sends from: its own, SMSBOT_DEFAULT_SENDER, or the only [numbers]."""
    if campaign.number or settings.sender:
        return campaign.number or settings.sender
    return next(iter(settings.numbers)) if len(settings.numbers) == 1 else None


def campaign_workspace(settings: Settings, campaign: Campaign) -> str | None:
    """The workspace a campaign's fires belong to: the owner of its number (None: no owner)."""
    sender = campaign_sender(settings, campaign)
    if sender is None:
        return None
    owner = settings.workspaces.owner_name(sender)
    if owner is None:
        try:  # written in the flow module as the person typed it: "07700 900100"
            owner = settings.workspaces.owner_name(
                normalize_sender(sender, settings.default_region)
            )
        except PhoneNumberError:
            return None
    return owner


def no_sender(campaign: Campaign) -> str:
    """What to say about a campaign without a number to send from."""
    return (
        f"campaign {campaign.name!r} has no number to send from, so nothing is scheduled for"
        ' it: give it number="+44..." or set SMSBOT_DEFAULT_SENDER'
    )


def no_workspace(campaign: Campaign) -> str:
    """What to say about a campaign whose number no workspace owns."""
    return (
        f"campaign {campaign.name!r} sends from a number no workspace owns, so nothing is"
        " scheduled for it: add the number to a workspace's numbers in smsbot.toml"
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """The campaigns to keep, and what a fire needs that is not on the contact."""

    campaigns: Mapping[str, Campaign]
    default_timezone: str
    senders: Mapping[str, str | None]  # campaign name -> its number (None: it cannot send)
    # campaign name -> the workspace of its number, whose contacts it reaches (None: none owns
    # it, so it cannot send); a campaign not listed is the default workspace's
    workspaces: Mapping[str, str | None] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, settings: Settings, campaigns: Mapping[str, Campaign]) -> Plan:
        """The plan for these campaigns under these settings; warns of any that cannot send."""
        senders = {name: campaign_sender(settings, c) for name, c in campaigns.items()}
        owners = {name: campaign_workspace(settings, c) for name, c in campaigns.items()}
        for name, sender in senders.items():
            if sender is None:
                log.warning("%s", no_sender(campaigns[name]))
            elif owners[name] is None:
                log.warning("%s", no_workspace(campaigns[name]))
        return cls(campaigns, settings.default_timezone, senders, owners)

    def sender(self, campaign: Campaign) -> str | None:
        """The number a campaign sends from."""
        return self.senders.get(campaign.name)

    def workspace(self, campaign: Campaign) -> str | None:
        """The workspace a campaign's fires belong to; None: it cannot send."""
        return self.workspaces.get(campaign.name, DEFAULT_WORKSPACE)
