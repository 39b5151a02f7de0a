"""The contact tables: people, their declared fields and groups, and erased phones' opt-outs."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from smsbot.store.columns import DEFAULT_WORKSPACE, table, ts, workspace_column


class ContactRow(SQLModel, table=True):
    """A person we text: name, language, time zone (quiet hours) and typed custom fields."""

    __tablename__ = "contacts"
    # The campaign sync reads contacts changed since its cursor, in this order.
    __table_args__ = (
        Index("ix_contacts_updated", "updated_at", "id"),
        # one contact per phone in each workspace: the same person may be two clients' patient
        UniqueConstraint("workspace", "phone", name="uq_contact_key"),
    )

    id: int | None = Field(default=None, primary_key=True)
    workspace: str = workspace_column()
    phone: str = Field(max_length=32)
    name: str | None = Field(default=None, max_length=200)
    language: str | None = Field(default=None, max_length=16)
    timezone: str | None = Field(default=None, max_length=64)
    # {field: JSON value}; the type of each field is in contact_fields (engine/contact.py)
    fields: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False, default=lambda: {})
    )  # a Core insert without fields gets {} too
    created_at: dt.datetime = ts(nullable=False)
    updated_at: dt.datetime | None = ts()


class ContactFieldRow(SQLModel, table=True):
    """A workspace's declared custom field and its type: text, number, datetime or boolean."""

    __tablename__ = "contact_fields"

    # Each workspace's own: one client's `visit` may be a datetime, another's free text.
    workspace: str = Field(
        default=DEFAULT_WORKSPACE,
        primary_key=True,
        max_length=64,
        sa_column_kwargs={"server_default": DEFAULT_WORKSPACE},
    )
    name: str = Field(primary_key=True, max_length=64)
    type: str = Field(max_length=16)
    created_at: dt.datetime = ts(nullable=False)


class ContactGroupRow(SQLModel, table=True):
    """A contact's membership of a named group."""

    __tablename__ = "contact_groups"
    __table_args__ = (Index("ix_contact_groups_name", "name", "contact_id"),)

    contact_id: int = Field(foreign_key="contacts.id", primary_key=True)
    name: str = Field(max_length=100, primary_key=True)
    created_at: dt.datetime = ts(nullable=False)


class SuppressionRow(SQLModel, table=True):
    """An opt-out whose phone was erased: kept as a hash so the STOP still holds."""

    __tablename__ = "suppressions"
    __table_args__ = (UniqueConstraint("virtual_number", "phone_hash", name="uq_suppression_key"),)

    id: int | None = Field(default=None, primary_key=True)
    workspace: str = workspace_column()
    virtual_number: str = Field(max_length=32)
    phone_hash: str = Field(max_length=64, index=True)
    keyword: str = Field(max_length=50)
    created_at: dt.datetime = ts(nullable=False)


contacts_t = table(ContactRow)
contact_fields_t = table(ContactFieldRow)
contact_groups_t = table(ContactGroupRow)
suppressions_t = table(SuppressionRow)
