"""The operator credential tables: workspace API keys and the secrets servers share."""

from __future__ import annotations

import datetime as dt

from sqlmodel import Field, SQLModel

from smsbot.store.columns import table, ts


class OperatorKeyRow(SQLModel, table=True):
    """A workspace's operator API key (`smsbot keys create`), stored only as its SHA-256 hash.

    The key is a high-entropy random token, so one unsalted SHA-256 is the right lookup hash
    (a slow password hash protects guessable secrets; nobody guesses 256 random bits).
    """

    __tablename__ = "operator_keys"

    id: str = Field(primary_key=True, max_length=32)  # public: the OAuth client_id
    workspace: str = Field(max_length=64, index=True)
    name: str | None = Field(default=None, max_length=100)  # a label: what uses it
    key_hash: str = Field(max_length=64, unique=True)  # hex SHA-256 of the key
    created_at: dt.datetime = ts(nullable=False)
    revoked_at: dt.datetime | None = ts()  # set by `smsbot keys revoke`: refused from then on


class ServerSecretRow(SQLModel, table=True):
    """A secret every `smsbot serve` on one database shares: the OAuth token signing key."""

    __tablename__ = "server_secrets"

    name: str = Field(primary_key=True, max_length=64)
    value: str = Field(max_length=200)  # never logged nor shown
    created_at: dt.datetime = ts(nullable=False)


operator_keys_t = table(OperatorKeyRow)
server_secrets_t = table(ServerSecretRow)
