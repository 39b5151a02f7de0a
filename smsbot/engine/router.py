"""Which flow gets an inbound message: per-number bindings and the order they are tried in.

For each inbound SMS, in order (docs/writing-flows.md, "How a message finds its handler"):

1. compliance words (STOP, START, HELP, ...) - smsbot.engine.compliance decides;
2. an opted-out phone: nothing more happens;
3. keyword triggers - unless the active state is free_text, or listens for the keyword itself,
   or the keyword is the running flow's own trigger (and the flow does not restart_on_trigger);
4. the active conversation's current state;
5. the number's catch-all flow.

A number's bindings come from `[numbers."+44…"]` in smsbot.toml, over those of the workspace
that owns it (`[workspaces.NAME]`, smsbot/workspaces.py): its flows, keywords, catch_all,
quiet_hours and compliance for what the number's table leaves out (flows, keywords and
catch_all go together: a table naming one takes none of the workspace's), and the `default`
workspace's are the defaults when it owns every number. Other numbers (and every number
when nothing is said) get the defaults: every loaded flow, its `triggers`, and the `keywords`
flow as the catch-all when it is loaded.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from typing import Any

from smsbot.config import ConfigError, Settings
from smsbot.engine.compliance import ComplianceAction, ComplianceRules
from smsbot.engine.flow import Flow, FlowError, State
from smsbot.engine.quiet_hours import Window, parse_window
from smsbot.hints import did_you_mean
from smsbot.sms.keywords import match_keyword, normalize_keyword
from smsbot.sms.phone import PhoneNumberError, normalize
from smsbot.workspaces import Workspace

__all__ = ["CheckedStart", "NumberBinding", "Route", "RouteKind", "Router"]

DEFAULT_CATCH_ALL = "keywords"
NUMBER_KEYS = ("flows", "keywords", "catch_all", "quiet_hours", "compliance", "send_rate")


class RouteKind(enum.StrEnum):
    """Where an inbound message goes."""

    COMPLIANCE = "compliance"
    TRIGGER = "trigger"  # start (or hand the message to) a flow bound to a keyword
    ACTIVE = "active"  # the active conversation's current state
    CATCH_ALL = "catch_all"
    IGNORE = "ignore"  # an opted-out phone, or nowhere to go


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    """The router's decision for one inbound message."""

    kind: RouteKind
    action: ComplianceAction | None = None
    flow: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class NumberBinding:
    """What runs on one virtual number: its flows, triggers, catch-all and compliance rules."""

    flows: frozenset[str]
    keywords: Mapping[str, str]  # normalised keyword -> flow name
    catch_all: str | None
    quiet_window: Window | None
    compliance: ComplianceRules
    send_rate: float | None = None  # messages per second from this number; None: its account's


@dataclasses.dataclass(frozen=True, slots=True)
class CheckedStart:
    """A checked START: which flow, with what data, and what to do if one is running."""

    flow: str
    data: dict[str, Any]
    policy: str  # interrupt | reject


def _suggest(name: str, known: list[str]) -> str:
    hint = did_you_mean(name, known, "{!r}")
    hint = f" ({hint})" if hint else ""
    return f"{name!r}{hint}; loaded flows: {', '.join(sorted(known)) or 'none'}"


def _send_rate(where: str, value: object) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(
            f"{where}.send_rate must be a positive number of messages per second, such as 5 or"
            f" 0.5, got {value!r}"
        )
    return float(value)


# What a number runs is one decision: a number table naming any of these takes none of its
# workspace's (its keywords could name a flow its own `flows` leaves out).
_FLOW_KEYS = ("flows", "keywords", "catch_all")


def _over(owner: Workspace | None, table: Mapping[str, Any]) -> dict[str, Any]:
    """A number's table over its workspace's defaults: its HELP text, quiet hours, flows."""
    inherited = dict(owner.routing) if owner is not None else {}
    if any(key in table for key in _FLOW_KEYS):
        inherited = {k: v for k, v in inherited.items() if k not in _FLOW_KEYS}
    return {**inherited, **table}


class Router:
    """Resolves a number's bindings and routes one inbound message."""

    def __init__(self, settings: Settings, flows: Mapping[str, type[Flow]]) -> None:
        self._flows = flows
        self._default_window = settings.quiet_window
        self.default = self._binding("the default binding", {})
        self._numbers: dict[str, NumberBinding] = {}
        # A workspace's defaults, for its numbers and sender IDs (checked first, under its name).
        for workspace in settings.workspaces:
            if not workspace.routing:
                continue
            binding = self._binding(f"workspaces.{workspace.name}", workspace.routing)
            if workspace.catch_all:
                self.default = binding
            for sender in workspace.numbers | workspace.sender_ids:
                self._numbers[sender] = binding
        # A number's own table; the keys it leaves out are its workspace's.
        for raw, table in settings.numbers.items():
            where = f'[numbers."{raw}"]'
            try:
                number = normalize(raw)
            except PhoneNumberError as exc:
                raise ConfigError(f"{where}: {exc}") from None
            owner = settings.workspaces.owner(number)
            self._numbers[number] = self._binding(where, _over(owner, table))

    def binding(self, virtual_number: str) -> NumberBinding:
        """The bindings of `virtual_number` (the defaults if it has no table of its own)."""
        return self._numbers.get(virtual_number, self.default)

    def route(
        self,
        binding: NumberBinding,
        normalized: str,
        *,
        opted_out: bool,
        state: State | None,
        flow: str | None = None,
    ) -> Route:
        """Decide where a normalised inbound message goes; `state` of `flow` is the active one."""
        action = binding.compliance.classify(normalized)
        if action is ComplianceAction.SOFT_OPT_OUT:
            # CANCEL, END, QUIT: a state that asked for the word gets it; otherwise it opts out.
            if state is None or not state.listens_for(normalized) or opted_out:
                return Route(RouteKind.COMPLIANCE, ComplianceAction.OPT_OUT)
        elif action is not None:
            return Route(RouteKind.COMPLIANCE, action)
        if opted_out:
            return Route(RouteKind.IGNORE)
        keyword = match_keyword(normalized, binding.keywords)
        triggered = binding.keywords[keyword] if keyword is not None else None
        if triggered is not None and not self._answers(state, flow, normalized, triggered):
            return Route(RouteKind.TRIGGER, flow=triggered)
        if state is not None:
            return Route(RouteKind.ACTIVE)
        if binding.catch_all is not None:
            return Route(RouteKind.CATCH_ALL, flow=binding.catch_all)
        return Route(RouteKind.IGNORE)

    def _answers(
        self, state: State | None, flow: str | None, normalized: str, triggered: str
    ) -> bool:
        """Whether a message that would trigger flow `triggered` answers the active state."""
        if state is None:
            return False
        if state.free_text:  # "Hours are too short on Saturdays" answers the question
            return True
        if match_keyword(normalized, state.keywords) is not None:  # the state asked for it
            return True
        # A flow's own trigger does not wipe its running conversation unless it asks to.
        running = self._flows.get(flow or "")
        return triggered == flow and not (running is not None and running.restart_on_trigger)

    def check_start(
        self, binding: NumberBinding, payload: Mapping[str, Any], *, parsed: bool = False
    ) -> CheckedStart:
        """Check a START event's payload against the loaded flows and the number's bindings.

        `parsed`: its data is already the flow's parse_start_data answer (not parsed again).
        """
        name, data = payload.get("flow"), payload.get("data")
        data = {} if data is None else data
        policy = payload.get("policy") or "interrupt"
        if policy not in ("interrupt", "reject"):
            raise FlowError(f'START policy must be "interrupt" or "reject", got {policy!r}')
        if not isinstance(name, str) or name not in self._flows:
            raise FlowError(f"cannot start flow {_suggest(str(name), list(self._flows))}")
        if name not in binding.flows:
            raise FlowError(f"flow {name!r} is not bound to this number (see its flows setting)")
        if not isinstance(data, dict):
            raise FlowError(f"START data for flow {name!r} must be a JSON object")
        if parsed:
            return CheckedStart(name, data, policy)
        try:
            data = self._flows[name].parse_start_data(data)  # as the operator API checked it
        except (ValueError, TypeError, KeyError) as exc:
            raise FlowError(f"cannot start flow {name!r}: {exc}") from None
        return CheckedStart(name, data, policy)

    # --- building bindings from config --------------------------------------------------------

    def _flow_name(self, where: str, name: object) -> str:
        if not isinstance(name, str) or name not in self._flows:
            raise ConfigError(f"{where} names flow {_suggest(str(name), list(self._flows))}")
        return name

    def _binding(self, where: str, table: Mapping[str, Any]) -> NumberBinding:
        for key in table:
            if key not in NUMBER_KEYS:
                hint = did_you_mean(key, NUMBER_KEYS)
                hint = f" ({hint})" if hint else ""
                raise ConfigError(
                    f"unknown key {key!r}{hint} in {where}: use {', '.join(NUMBER_KEYS)}"
                )
        compliance = ComplianceRules.from_config(
            table.get("compliance"), where=f"{where}.compliance"
        )
        flows = self._bound_flows(where, table.get("flows"))
        keywords = self._keywords(where, flows, table.get("keywords", {}), compliance)
        catch_all = table.get("catch_all")
        if catch_all is None:  # "" switches the catch-all off
            catch_all = DEFAULT_CATCH_ALL if DEFAULT_CATCH_ALL in flows else ""
        elif catch_all != "":
            catch_all = self._flow_name(f"{where}.catch_all", catch_all)
            if catch_all not in flows:
                raise ConfigError(f"{where}.catch_all names {catch_all!r}, not in {where}.flows")
        quiet = table.get("quiet_hours")
        try:
            window = self._default_window if quiet is None else parse_window(str(quiet))
        except ValueError as exc:
            raise ConfigError(f"{where}.quiet_hours must be {exc}, got {quiet!r}") from None
        return NumberBinding(
            flows=flows,
            keywords=keywords,
            catch_all=catch_all or None,
            quiet_window=window,
            compliance=compliance,
            send_rate=_send_rate(where, table.get("send_rate")),
        )

    def _bound_flows(self, where: str, names: object) -> frozenset[str]:
        if names is None:
            return frozenset(self._flows)
        if not isinstance(names, list):
            raise ConfigError(f'{where}.flows must be a list of flow names like ["appointment"]')
        return frozenset(self._flow_name(f"{where}.flows", name) for name in names)

    def _keywords(
        self, where: str, flows: frozenset[str], table: object, compliance: ComplianceRules
    ) -> dict[str, str]:
        if not isinstance(table, Mapping):
            raise ConfigError(f'{where}.keywords must be a table like {{ HOURS = "keywords" }}')
        keywords: dict[str, str] = {}
        owner: dict[str, str] = {}
        for name in sorted(flows):
            for word in self._flows[name].triggers:
                normal = normalize_keyword(word)
                if normal in keywords:
                    raise ConfigError(
                        f"{word.upper()} is a trigger of both flow {owner[normal]!r} and flow"
                        f" {name!r}: remove it from one, or bind it in {where}.keywords"
                    )
                keywords[normal], owner[normal] = name, name
        for word, flow in table.items():
            label = f"{where}.keywords.{word}"
            try:
                normal = normalize_keyword(str(word))
            except ValueError as exc:
                raise ConfigError(f"{label}: {exc}") from None
            keywords[normal] = self._flow_name(label, flow)
            if flow not in flows:
                raise ConfigError(f"{label} names flow {flow!r}, which {where}.flows leaves out")
        for normal in keywords:
            if compliance.classify(normal) is not None:
                raise ConfigError(
                    f"{normal.upper()} is a compliance word on {where} and cannot trigger a flow"
                )
        return keywords
