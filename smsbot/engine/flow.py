"""The flow API: Flow, State and its transition decorators, Message, FlowError.

A flow is a small state machine. Its states are class attributes; decorators on a state say
which handler answers which message in that state; a handler returns the next State, or None
to stay. What a handler gets as `convo` is smsbot.engine.conversation's Conversation.
docs/writing-flows.md walks through it; smsbot.engine.runtime executes it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from smsbot.engine.jsondata import is_plain_json
from smsbot.engine.startdata import parse_start_data
from smsbot.sms.keywords import match_keyword, normalize_keyword

if TYPE_CHECKING:  # conversation.py imports this module: only the type checker reads the other way
    from smsbot.engine.conversation import Conversation

__all__ = ["Flow", "FlowError", "Message", "State"]

Handler = Callable[..., Any]  # async (or plain) method returning the next State or None
H = TypeVar("H", bound=Callable[..., Any])
Predicate = Callable[["Message"], bool]


class FlowError(Exception):
    """A flow did something smsbot cannot carry out; the message names the flow and the fix."""

    # Running the same event again would fail the same way: the dispatcher parks it at once.
    retryable = False


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    """An inbound SMS as a handler sees it."""

    text: str  # as the phone sent it
    normalized: str  # casefolded, no punctuation, single spaces: what keywords match against
    message_id: str | None = None
    received_at: dt.datetime | None = None
    looks_like_opt_out: bool = False  # starts with an opt-out word but is not one ("stop pls")
    match: re.Match[str] | None = None  # set for a @state.matches() handler

    def keyword(self, *keywords: str) -> str | None:
        """Return which of `keywords` this message is or starts with (as written), else None."""
        by_normal = {normalize_keyword(word): word for word in keywords}
        found = match_keyword(self.normalized, by_normal)
        return None if found is None else by_normal[found]


@dataclasses.dataclass(frozen=True, slots=True)
class _Rule:
    """A regex or predicate transition, tried in the order declared."""

    handler: Handler
    pattern: re.Pattern[str] | None = None
    predicate: Predicate | None = None


class State:
    """A state of a flow; decorate methods with its .on/.matches/.when/... to handle messages."""

    def __init__(
        self,
        *,
        initial: bool = False,
        final: bool = False,
        timeout: dt.timedelta | None = None,
        free_text: bool = False,
    ) -> None:
        if timeout is not None and timeout <= dt.timedelta(0):
            raise ValueError(f"State(timeout=...) must be positive, got {timeout}")
        self.initial = initial
        self.final = final
        self.timeout = timeout
        # Every message but a compliance word is this state's answer: no keyword trigger, not
        # even this flow's own, takes it (docs/writing-flows.md, "How a message finds its handler").
        self.free_text = free_text
        self.name = ""  # set by __set_name__ when the flow class is created
        self.keywords: dict[str, Handler] = {}  # normalised keyword -> handler
        self.rules: list[_Rule] = []
        self.fallback: Handler | None = None
        self.timeout_handler: Handler | None = None
        self.enter_hooks: list[Handler] = []

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"State({self.name!r})"

    @property
    def timer_name(self) -> str:
        """The name of this state's wait-timeout timer."""
        return f"timeout:{self.name}"

    def on(self, *keywords: str) -> Callable[[H], H]:
        """Handle a message that is, or starts with, one of `keywords` (any case/punctuation)."""
        if not keywords:
            raise ValueError("State.on() needs at least one keyword, such as @waiting.on('YES')")
        normal = [normalize_keyword(word) for word in keywords]

        def register(handler: H) -> H:
            for word in normal:
                if word in self.keywords:
                    raise ValueError(
                        f"{self.name or 'this state'} already listens for {word.upper()}"
                        f" ({self.keywords[word].__name__}): a keyword has one handler per state"
                    )
                self.keywords[word] = handler
            return handler

        return register

    def matches(self, pattern: str, flags: int = 0) -> Callable[[H], H]:
        """Handle a message whose normalised text matches the regular expression (re.search)."""
        compiled = re.compile(pattern, flags)

        def register(handler: H) -> H:
            self.rules.append(_Rule(handler, pattern=compiled))
            return handler

        return register

    def when(self, predicate: Predicate) -> Callable[[H], H]:
        """Handle a message for which `predicate(msg)` is true."""

        def register(handler: H) -> H:
            self.rules.append(_Rule(handler, predicate=predicate))
            return handler

        return register

    def otherwise(self, handler: H) -> H:
        """Handle any message nothing else in this state matched (without it: the catch-all)."""
        if self.fallback is not None:
            raise ValueError(f"{self.name or 'this state'} already has an otherwise handler")
        self.fallback = handler
        return handler

    def on_timeout(self, handler: H) -> H:
        """Run `handler(convo)` when the state's timeout passes with no step leaving it."""
        if self.timeout_handler is not None:
            raise ValueError(f"{self.name or 'this state'} already has an on_timeout handler")
        self.timeout_handler = handler
        return handler

    def on_enter(self, handler: H) -> H:
        """Run `handler(convo)` each time the state is entered; it may return the next state."""
        self.enter_hooks.append(handler)
        return handler

    def listens_for(self, normalized: str) -> bool:
        """Whether this state has an .on() keyword that is exactly the normalised message."""
        return normalized in self.keywords

    def select(self, msg: Message) -> tuple[Handler, Message] | None:
        """Pick the handler: keywords, then regexes and predicates in order, then otherwise."""
        if (word := match_keyword(msg.normalized, self.keywords)) is not None:
            return self.keywords[word], msg
        for rule in self.rules:
            if rule.pattern is not None:
                if found := rule.pattern.search(msg.normalized):
                    return rule.handler, dataclasses.replace(msg, match=found)
            elif rule.predicate is not None and rule.predicate(msg):
                return rule.handler, msg
        return (self.fallback, msg) if self.fallback is not None else None

    def handlers(self) -> list[Handler]:
        """Every handler registered on this state."""
        found = [*self.keywords.values(), *(r.handler for r in self.rules), *self.enter_hooks]
        found += [h for h in (self.fallback, self.timeout_handler) if h is not None]
        return list(dict.fromkeys(found))


class Flow:
    """Base class of a flow: set `name`, declare States, decorate handlers."""

    name: ClassVar[str] = ""
    # The data a START from outside brings: a dataclass or TypedDict of str, int, float, bool and
    # datetime fields (smsbot.engine.startdata). It is checked before the START is queued.
    start_data: ClassVar[type | None] = None
    # The first message of a flow started from outside says how to opt out (`smsbot check`
    # warns when it does not); False for a message the contact asked for or expects.
    opt_out_notice: ClassVar[bool] = True
    # Keys a START from outside must put in data (checked before the flow starts).
    required_data: ClassVar[tuple[str, ...]] = ()
    # Keywords that start this flow on every number it is bound to (docs/writing-flows.md).
    triggers: ClassVar[tuple[str, ...]] = ()
    # While this flow runs, its own trigger is an answer to the current state; True: a restart.
    restart_on_trigger: ClassVar[bool] = False
    states: ClassVar[dict[str, State]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        states = dict(cls.states)  # inherited ones first
        states.update({n: v for n, v in vars(cls).items() if isinstance(v, State)})
        cls.states = states

    @classmethod
    def check_start_data(cls, data: Mapping[str, Any]) -> None:
        """Raise ValueError if `data` cannot start this flow (checked before a START is queued)."""
        if missing := [key for key in cls.required_data if key not in data]:
            raise ValueError(f"flow {cls.name!r} needs data {', '.join(missing)} to start")

    @classmethod
    def parse_start_data(
        cls, data: Mapping[str, Any], *, now: dt.datetime | None = None, from_text: bool = False
    ) -> dict[str, Any]:
        """Check `data` against start_data and check_start_data; return it as declared.

        `now` checks Future() fields; `from_text` reads numbers and booleans given as text (CSV).
        Raises ValueError (a StartDataError names the field).
        """
        parsed = parse_start_data(cls.start_data, data, now=now, from_text=from_text)
        cls.check_start_data(parsed)
        return parsed

    @classmethod
    def initial_state(cls) -> State:
        """The one state marked initial=True."""
        initial = [s for s in cls.states.values() if s.initial]
        if len(initial) != 1:
            raise FlowError(f"flow {cls.name!r} needs exactly one State(initial=True)")
        return initial[0]

    def next_state(self, value: object, handler: str) -> State | None:
        """Check what `handler` returned: one of this flow's States, or None to stay."""
        if value is None or (isinstance(value, State) and value in self.states.values()):
            return value
        where = f"{type(self).__name__}.{handler}"
        if isinstance(value, str) and value in self.states:
            raise FlowError(f"{where} returned {value!r}: return self.{value} (a State) instead")
        raise FlowError(
            f"{where} returned {value!r}, which is not a State of flow {self.name!r}:"
            f" return one of self.{', self.'.join(self.states)} or None to stay"
        )

    async def start(self, convo: Conversation) -> State | None:
        """Run when the flow begins; return a state to go to instead of the initial one."""
        return None

    async def on_expire(self, convo: Conversation) -> None:
        """Run when the conversation expires after SMSBOT_CONVERSATION_EXPIRY of silence."""

    async def on_send_failed(self, convo: Conversation, error: str) -> State | None:
        """Run when a reply of this conversation could not be sent."""
        return None


def require_json(value: object, what: str) -> None:
    """Raise FlowError unless `value` can be stored as JSON; `what` names it for the author."""
    if is_plain_json(value):
        return  # the common case, without writing the JSON out
    try:
        json.dumps(value, allow_nan=False)  # NaN is not JSON: PostgreSQL would refuse it
    except (TypeError, ValueError) as exc:
        raise FlowError(
            f"{what} must be JSON (str, int, float, bool, None, lists and dicts): {exc};"
            " store datetimes as .isoformat() strings"
        ) from None
