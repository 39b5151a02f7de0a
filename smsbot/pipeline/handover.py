"""Replies written already claimed, and handed to their sender in memory.

A reply due now would otherwise wait in the outbox for its sender's next claim: a write
transaction of its own (on SQLite, the one writer's lock again) and a query for what is due. The
step already knows everything that claim decides, so the step's own transaction claims it:

1. before the write, in the event loop (`offer`): a step's first reply, due now and not
   suppressed by an opt-out, is offered to its workspace's sender, which takes a rate-limit
   token for it or declines (stopping, quiet after a 429, over its rate);
2. in the write (`take`, called by effects.write_effects): the reply is written `inflight` with
   the sender's lease, as a claim would, but only if nothing else to that phone from that
   number is pending or in flight (one send at a time per conversation, in order; the query
   reads that conversation's open rows on ix_messages_open) and no opt-out blocks it (the claim's
   rule, opt_out_applies; STOP/START/HELP answers go regardless, as they do from a claim);
3. after the commit: the claimed messages go to the sender (`StepOutcome.handed`), which sends
   them ahead of its next claim.

A process that dies between the commit and the send leaves them in flight with a lease, like
any claim: the lease lapses and the message is recovered (sender.py). A reply the write does not
take stays `pending` and goes by the normal claim. A token taken for a step the write dropped
is simply not used: the sender sends a little under its rate for that second.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from sqlalchemy import Connection, select

from smsbot.engine.contract import Origin
from smsbot.pipeline.outbox import Claimed
from smsbot.store.lookup import KeyedRows, Listed
from smsbot.store.models import (
    OutboxState,
    message_open,
    messages_t,
    opt_out_applies,
    opt_outs_t,
)

# The write's two reads, prepared (store/prepared.py): compiled once, run through sqlite3.
_BUSY = KeyedRows(
    (messages_t.c.virtual_number, messages_t.c.phone),
    lambda where: (
        select(messages_t.c.virtual_number, messages_t.c.phone)
        .where(where, message_open(messages_t.c.outbox))  # on ix_messages_open
        .distinct()
    ),
)
_STOPS = Listed(
    lambda listed: select(
        opt_outs_t.c.virtual_number, opt_outs_t.c.phone, opt_outs_t.c.workspace
    ).where(listed(opt_outs_t.c.phone, "phones"))
)


class Taker(Protocol):
    """A workspace's sender, as a step hands it replies."""

    @property
    def lease(self) -> dt.timedelta:
        """How long a claim of this sender holds a message."""
        ...

    def accepts(self, sender: str) -> bool:
        """Whether a reply from `sender` can be handed over now (a rate-limit token is taken)."""
        ...


Takers = Callable[[str], Taker | None]  # a workspace's sender, None when it has none


def offer(items: Sequence[Any], now: dt.datetime, takers: Takers) -> None:
    """In the event loop, before the write: mark the steps whose first reply may be handed over
    (`Stepped.lease`)."""
    for item in items:
        replies = item.result.replies
        if not replies:
            continue
        first = replies[0]
        if first.send_after is not None and first.send_after > now:
            continue  # quiet hours or a delay: the claim takes it when it is due
        opted = item.result.opt_out if item.result.opt_out is not None else item.snapshot.opted_out
        if opted and first.origin is not Origin.COMPLIANCE:
            continue  # suppressed when written
        taker = takers(item.workspace)
        if taker is not None and taker.accepts(item.snapshot.key.virtual_number):
            item.lease = taker.lease


def take(
    conn: Connection, offered: Sequence[tuple[Any, dict[str, Any]]], now: dt.datetime
) -> dict[int, Claimed]:
    """In the write, before the rows are inserted: claim the offered reply rows that may go
    now (see above); return them by the step's event id."""
    if not offered:
        return {}
    keys = {(row["virtual_number"], row["phone"]) for _, row in offered}
    busy = {(vn, phone) for vn, phone in _BUSY.all(conn, keys)}
    phones = sorted({phone for _, phone in keys})
    stops: dict[str, list[tuple[str, str]]] = {}
    for number, phone, workspace in _STOPS.all(conn, {"phones": phones}):
        stops.setdefault(phone, []).append((number, workspace))
    handed: dict[int, Claimed] = {}
    for item, row in offered:
        vn, phone = row["virtual_number"], row["phone"]
        if (vn, phone) in busy:
            continue
        opt_outs = stops.get(phone)  # None for nearly every phone: no generator made
        if (
            opt_outs is not None
            and row["origin"] != Origin.COMPLIANCE.value
            and any(opt_out_applies(n, vn, w, row["workspace"]) for n, w in opt_outs)
        ):
            continue  # an opt-out since the step's read: the claim will suppress it
        row.update(outbox=OutboxState.INFLIGHT.value, lease_until=now + item.lease, attempts=1)
        handed[item.event.id] = Claimed(
            row["id"],
            vn,
            phone,
            row["body"],
            row["encoding"],
            1,
            row["created_at"],
            row["origin"],
            row["workspace"],
        )
    return handed
