"""The tables: conversations and their state changes, messages (in and out), the inbox, opt-outs
and timers; the contact and credential tables (contact_tables.py, credential_tables.py) and
the column helpers (columns.py) are re-exported here, where most code imports them from."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    ColumnElement,
    Index,
    Text,
    UniqueConstraint,
    and_,
    not_,
    or_,
    true,
)
from sqlmodel import Field, SQLModel

from smsbot.engine.contract import EventKind, Origin
from smsbot.sms.status import DeliveryStatus
from smsbot.store.columns import DEFAULT_WORKSPACE as DEFAULT_WORKSPACE
from smsbot.store.columns import enum_column, only_rows, ts, workspace_column
from smsbot.store.columns import is_value as is_value
from smsbot.store.columns import new_id as new_id
from smsbot.store.columns import new_token as new_token
from smsbot.store.columns import table as table
from smsbot.store.contact_tables import ContactFieldRow as ContactFieldRow
from smsbot.store.contact_tables import ContactGroupRow as ContactGroupRow
from smsbot.store.contact_tables import ContactRow as ContactRow
from smsbot.store.contact_tables import SuppressionRow as SuppressionRow
from smsbot.store.contact_tables import contact_fields_t as contact_fields_t
from smsbot.store.contact_tables import contact_groups_t as contact_groups_t
from smsbot.store.contact_tables import contacts_t as contacts_t
from smsbot.store.contact_tables import suppressions_t as suppressions_t
from smsbot.store.credential_tables import OperatorKeyRow as OperatorKeyRow
from smsbot.store.credential_tables import ServerSecretRow as ServerSecretRow
from smsbot.store.credential_tables import operator_keys_t as operator_keys_t
from smsbot.store.credential_tables import server_secrets_t as server_secrets_t


class Direction(enum.StrEnum):
    """Which way a message travelled."""

    INBOUND = "in"
    OUTBOUND = "out"


class OutboxState(enum.StrEnum):
    """Where an outbound message is in our outbox (the provider's view is DeliveryStatus)."""

    PENDING = "pending"
    INFLIGHT = "inflight"  # claimed by a sender; lease_until says when the claim lapses
    DONE = "done"


class EventState(enum.StrEnum):
    """Inbox event lifecycle."""

    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"  # parked after its retries; visible with `smsbot events failed`
    UNMATCHED = "unmatched"  # a receipt for a message we do not know; kept for reconciliation
    IGNORED = "ignored"


class ConversationRow(SQLModel, table=True):
    """The one conversation slot of a (virtual number, phone) key; its row is the key's lock."""

    __tablename__ = "conversations"
    __table_args__ = (UniqueConstraint("virtual_number", "phone", name="uq_conversation_key"),)

    id: int | None = Field(default=None, primary_key=True)
    workspace: str = workspace_column()
    virtual_number: str = Field(max_length=32)
    phone: str = Field(max_length=32, index=True)
    flow: str | None = Field(default=None, max_length=100)  # None: no active conversation
    state: str | None = Field(default=None, max_length=100)
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    version: int = Field(default=0)
    state_token: str | None = Field(default=None, max_length=32)  # new on every state entry
    started_at: dt.datetime | None = ts()
    last_activity_at: dt.datetime | None = ts()
    ended_at: dt.datetime | None = ts()
    end_reason: str | None = Field(default=None, max_length=100)
    end_state: str | None = Field(default=None, max_length=100)  # the outcome: where it ended


class MessageRow(SQLModel, table=True):
    """An inbound or outbound SMS; outbound rows are also the outbox."""

    __tablename__ = "messages"
    __table_args__ = (
        # Each workspace's sender claims its own messages (pipeline/outbox.py): by outbox state
        # and workspace, so one client's backlog is never read by another's claim (migration
        # 0013). The state leads: the console's counts by state use it too, and a
        # query by workspace alone (a receipt's match) is not drawn to it.
        Index("ix_messages_outbox", "outbox", "workspace", "send_after", "created_at"),
        # the sender's interactive lane: replies found past a campaign's pending backlog
        # (pending messages only, migration 0016: a reply handed over in flight adds none)
        Index(
            "ix_messages_lane",
            "outbox",
            "workspace",
            "origin",
            "send_after",
            "created_at",
            **only_rows("outbox", OutboxState.PENDING),
        ),
        Index("ix_messages_key", "virtual_number", "phone", "created_at"),
        # A conversation's open messages (one send at a time per conversation: the sender's
        # claim, a step's handover), read without the rest of the conversation's history.
        Index(
            "ix_messages_open",
            "virtual_number",
            "phone",
            "created_at",
            **only_rows("outbox", OutboxState.PENDING, OutboxState.INFLIGHT),
        ),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    direction: Direction = enum_column(Direction, nullable=False)
    workspace: str = workspace_column()
    virtual_number: str = Field(max_length=32)
    phone: str = Field(max_length=32)
    body: str = Field(sa_column=Column(Text, nullable=False))
    origin: Origin | None = enum_column(Origin)
    status: DeliveryStatus | None = enum_column(DeliveryStatus)
    provider_message_id: str | None = Field(default=None, max_length=100, index=True)
    client_reference: str | None = Field(default=None, max_length=100, index=True)
    batch_id: str | None = Field(default=None, max_length=100)
    segments: int = Field(default=1)
    encoding: str = Field(default="GSM-7", max_length=8)
    error: str | None = Field(default=None, max_length=500)
    event_id: int | None = Field(default=None)  # the inbox event that produced or carried it
    # outbox bookkeeping (outbound only)
    outbox: OutboxState | None = enum_column(OutboxState)
    send_after: dt.datetime | None = ts()
    attempts: int = Field(default=0)
    lease_until: dt.datetime | None = ts()
    created_at: dt.datetime = ts(nullable=False)
    sent_at: dt.datetime | None = ts()
    status_at: dt.datetime | None = ts()


_PENDING = only_rows("state", EventState.PENDING)
_PARKED = only_rows("state", EventState.FAILED, EventState.UNMATCHED)


class InboxEventRow(SQLModel, table=True):
    """The inbox: every accepted webhook, timer firing and outside start, in arrival order."""

    __tablename__ = "webhook_events"
    __table_args__ = (
        UniqueConstraint("source", "event_id", name="uq_event_source_id"),
        # The pending events' indexes hold only pending events (columns.only_rows, migration
        # 0015): an event written done (a fired timer stepped as it fired, a bulk start) adds
        # an entry to none of them. Their queries name the state with is_value().
        Index("ix_events_pending", "state", "virtual_number", "phone", "id", **_PENDING),
        Index("ix_events_state_id", "state", "id", **_PENDING),  # the oldest, in order
        Index("ix_events_state_kind", "state", "kind", "id", **_PENDING),  # inbound, receipts
        # the dispatcher's fair share: which workspaces wait, and each one's oldest events
        Index("ix_events_workspace", "state", "workspace", "id", **_PENDING),
        # what an operator looks at: parked events, unowned webhooks (a handful of rows)
        Index("ix_events_parked", "state", "workspace", "id", **_PARKED),
        # one phone's events: a conversation's history in the console, a contact's erasure
        Index("ix_events_phone", "phone", "virtual_number", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)  # arrival order
    source: str = Field(max_length=16)  # divergent | puresms | timer | api
    event_id: str = Field(max_length=200)
    kind: EventKind = enum_column(EventKind, nullable=False)
    # None: a webhook for a number no workspace owns, kept for reconciliation (UNMATCHED)
    workspace: str | None = workspace_column(nullable=True)
    virtual_number: str | None = Field(default=None, max_length=32)
    phone: str | None = Field(default=None, max_length=32)
    body_sha256: str | None = Field(default=None, max_length=64)
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    state: EventState = enum_column(EventState, EventState.PENDING, nullable=False)
    attempts: int = Field(default=0)
    next_attempt_at: dt.datetime | None = ts()
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    received_at: dt.datetime = ts(nullable=False, index=True)
    processed_at: dt.datetime | None = ts()


class OptOutRow(SQLModel, table=True):
    """A phone that said STOP to a virtual number; nothing but the confirmation goes out."""

    __tablename__ = "opt_outs"
    __table_args__ = (UniqueConstraint("virtual_number", "phone", name="uq_optout_key"),)

    id: int | None = Field(default=None, primary_key=True)
    workspace: str = workspace_column()
    virtual_number: str = Field(max_length=32)
    phone: str = Field(max_length=32, index=True)
    keyword: str = Field(max_length=50)
    created_at: dt.datetime = ts(nullable=False)


class TimerState(enum.StrEnum):
    """Timer lifecycle; only a SCHEDULED timer with a matching token may fire."""

    SCHEDULED = "scheduled"
    FIRED = "fired"
    CANCELLED = "cancelled"
    MISSED = "missed"  # fell due while we were down for longer than the allowed lateness
    SKIPPED = "skipped"  # a campaign fire already past due when it was (re)scheduled


_SCHEDULED = only_rows("state", TimerState.SCHEDULED)


class TimerRow(SQLModel, table=True):
    """A reminder, wait timeout, expiry or campaign fire; what makes a double firing a no-op.

    A conversation's timers have a conversation_id; a campaign's fires (pipeline/campaigns.py)
    have a contact_id instead, and no conversation until they fire.
    """

    __tablename__ = "timers"
    __table_args__ = (
        UniqueConstraint("conversation_id", "name", name="uq_timer_name"),
        UniqueConstraint("contact_id", "name", name="uq_timer_contact_name"),
        # Scheduled timers only (columns.only_rows, migration 0015): a timer that fires,
        # is cancelled or is missed leaves these indexes. Their queries use TIMER_SCHEDULED.
        # (ix_timers_changed, on state and created_at, went in 0015: the scheduler mirrors
        # timers by due time, and no query read it.)
        Index("ix_timers_due", "state", "due_at", **_SCHEDULED),
        # A step cancels its conversation's scheduled timers: without this index SQLite
        # walks every scheduled timer of every conversation (ix_timers_due's `state = ?`).
        Index("ix_timers_conversation", "conversation_id", "state", **_SCHEDULED),
    )

    id: int | None = Field(default=None, primary_key=True)
    conversation_id: int | None = Field(default=None, foreign_key="conversations.id")
    # No foreign key: erasing or deleting a contact deletes its fires (cancel_contact_fires).
    contact_id: int | None = Field(default=None)
    workspace: str = workspace_column()
    name: str = Field(max_length=100)
    kind: str = Field(max_length=16)  # remind | call | timeout | expiry
    token: str = Field(max_length=32)  # new on every (re)schedule; a firing must match it
    due_at: dt.datetime = ts(nullable=False)
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    state: TimerState = enum_column(TimerState, TimerState.SCHEDULED, nullable=False)
    created_at: dt.datetime = ts(nullable=False)
    fired_at: dt.datetime | None = ts()


class StateChangeRow(SQLModel, table=True):
    """One change of a conversation's state: a flow started, moved or ended (its history)."""

    __tablename__ = "state_changes"
    __table_args__ = (
        Index("ix_state_changes_conversation", "conversation_id", "id"),
        Index("ix_state_changes_flow", "flow", "at"),  # flow results: a flow's runs in a period
    )

    id: int | None = Field(default=None, primary_key=True)  # order within one step
    conversation_id: int = Field(foreign_key="conversations.id")
    workspace: str = workspace_column()
    at: dt.datetime = ts(nullable=False)  # the step's time (the injected clock)
    flow: str = Field(max_length=100)
    from_state: str | None = Field(default=None, max_length=100)  # None: the flow started
    to_state: str | None = Field(default=None, max_length=100)  # None: the flow ended
    reason: str | None = Field(default=None, max_length=100)  # why it ended (completed, …)
    event_kind: str = Field(max_length=16)  # what caused it: inbound, timer, start, …
    event_id: int | None = Field(default=None)  # the inbox event of the step


class BulkRunRow(SQLModel, table=True):
    """A bulk start (`smsbot start --csv`): the file it started from, for --resume to check."""

    __tablename__ = "bulk_runs"

    run: str = Field(primary_key=True, max_length=32)  # in its starts' event ids: bulk:RUN:LINE
    workspace: str = Field(max_length=64)
    flow: str = Field(max_length=100)
    file_sha256: str = Field(max_length=64)  # hex SHA-256 of the file's bytes, as read
    rows: int  # the rows it was to start (the good ones)
    created_at: dt.datetime = ts(nullable=False)


events_t = table(InboxEventRow)
messages_t = table(MessageRow)
conversations_t = table(ConversationRow)
opt_outs_t = table(OptOutRow)
timers_t = table(TimerRow)
state_changes_t = table(StateChangeRow)
bulk_runs_t = table(BulkRunRow)
# A timer still waiting to fire (not fired, cancelled or missed): the claims' and writes' test.
TIMER_SCHEDULED = is_value(timers_t.c.state, TimerState.SCHEDULED)
# An event still to be stepped: the dispatcher's, receipts' and counts' test.
EVENT_PENDING = is_value(events_t.c.state, EventState.PENDING)


def message_open(outbox: ColumnElement[Any]) -> ColumnElement[bool]:
    """An outbound message pending or in flight (`outbox`: messages.outbox of an alias too)."""
    return or_(is_value(outbox, OutboxState.PENDING), is_value(outbox, OutboxState.INFLIGHT))


def opt_out_applies(
    opted_out_of: str,
    sender: str,
    opted_out_in: str | None = None,
    sending_in: str | None = None,
) -> bool:
    """Whether a phone's opt-out from `opted_out_of` stops messages from `sender` to it.

    It stops its own number, whichever workspace owns it now; and an alphanumeric sender ID
    (anything not in E.164) is stopped by an opt-out from any number of the same workspace,
    since nobody can reply STOP to a name (docs/compliance.md, "Alphanumeric senders"). The
    workspaces are those of the opt-out (`opted_out_in`) and of the sender (`sending_in`);
    when either is not given, any number's opt-out stops a sender ID, as before workspaces.
    opt_out_blocks() is the same rule in SQL.
    """
    if opted_out_of == sender:
        return True
    if sender.startswith("+"):
        return False
    return opted_out_in is None or sending_in is None or opted_out_in == sending_in


def opt_out_blocks(
    sender: ColumnElement[str] | str,
    phone: Any,
    workspace: ColumnElement[str] | str | None = None,
) -> ColumnElement[bool]:
    """SQL: this opt_outs row stops messages from `sender` to `phone` (see opt_out_applies).

    `workspace` is the sender's (a column such as messages.workspace, or a name): an opt-out
    from another workspace's number never stops a sender ID. None: any workspace's does.
    """
    o = opt_outs_t
    same_workspace: ColumnElement[bool] = (
        true() if workspace is None else o.c.workspace == workspace
    )
    if isinstance(sender, str):
        same: ColumnElement[bool] = (
            same_workspace if not sender.startswith("+") else o.c.virtual_number == sender
        )
    else:
        same = or_(o.c.virtual_number == sender, and_(not_(sender.startswith("+")), same_workspace))
    return and_(o.c.phone == phone, same)
