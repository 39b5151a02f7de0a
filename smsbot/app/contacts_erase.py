"""A data subject's rights: everything stored about one phone (`show`), and erasure (`erase`).

Erasure removes the contact, its fields and groups, its campaign fires, its conversations with
their timers and state history, blanks the body and number of its messages and the payload of
its inbox events (delivery metadata stays for the accounts), and turns its opt-outs into keyed
hashes (`suppressions`) so an earlier STOP still holds: the dispatcher restores the opt-out when
the number comes back.

Both act in one workspace: the same phone in another workspace is another client's data subject,
neither shown nor erased.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from sqlalchemy import Connection, Engine, delete, or_, select, update

from smsbot.pipeline.campaigns import cancel_contact_fires
from smsbot.pipeline.contacts import suppression_hash
from smsbot.store.models import (
    contact_groups_t,
    contacts_t,
    conversations_t,
    events_t,
    messages_t,
    opt_outs_t,
    state_changes_t,
    suppressions_t,
    timers_t,
)
from smsbot.store.upsert import insert_on_conflict
from smsbot.workspaces import DEFAULT

log = logging.getLogger(__name__)


def _rows(conn: Connection, query: Any) -> list[dict[str, Any]]:
    return [_json(dict(r._mapping)) for r in conn.execute(query).all()]


def _json(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, dt.datetime) else v for k, v in row.items()}


def subject_data(engine: Engine, phone: str, workspace: str = DEFAULT) -> dict[str, Any]:
    """Everything `workspace` stores about `phone` (E.164), as JSON-ready dicts."""
    with engine.connect() as conn:
        contact = _rows(
            conn,
            select(contacts_t).where(
                contacts_t.c.phone == phone, contacts_t.c.workspace == workspace
            ),
        )
        if contact:
            contact[0]["groups"] = sorted(
                conn.execute(
                    select(contact_groups_t.c.name).where(
                        contact_groups_t.c.contact_id == contact[0]["id"]
                    )
                ).scalars()
            )
        c = conversations_t
        convos = _rows(conn, select(c).where(c.c.phone == phone, c.c.workspace == workspace))
        ids = [c["id"] for c in convos]
        people = [c["id"] for c in contact]
        timers = _rows(
            conn,
            select(timers_t).where(
                timers_t.c.workspace == workspace,
                or_(timers_t.c.conversation_id.in_(ids), timers_t.c.contact_id.in_(people)),
            ),
        )
        changes = _rows(
            conn,
            select(state_changes_t)
            .where(state_changes_t.c.conversation_id.in_(ids))
            .order_by(state_changes_t.c.id),
        )
        messages = _rows(
            conn,
            select(messages_t)
            .where(messages_t.c.phone == phone, messages_t.c.workspace == workspace)
            .order_by(messages_t.c.created_at),
        )
        o = opt_outs_t
        opt_outs = _rows(conn, select(o).where(o.c.phone == phone, o.c.workspace == workspace))
        suppressed = _rows(
            conn,
            select(suppressions_t.c.virtual_number, suppressions_t.c.keyword).where(
                suppressions_t.c.phone_hash == suppression_hash(phone),
                suppressions_t.c.workspace == workspace,
            ),
        )
    return {
        "phone": phone,
        "contact": contact[0] if contact else None,
        "conversations": convos,
        "timers": timers,
        "state_changes": changes,
        "messages": messages,
        "opt_outs": opt_outs,
        "suppressions": suppressed,
    }


def erase(engine: Engine, phone: str, workspace: str = DEFAULT) -> dict[str, int]:
    """Erase what `workspace` stores of `phone` (E.164) in one transaction; return what was
    removed or blanked, by kind."""
    with engine.begin() as conn:
        done: dict[str, int] = {}
        contact = [contacts_t.c.phone == phone, contacts_t.c.workspace == workspace]
        ids = conn.execute(select(contacts_t.c.id).where(*contact)).scalars()
        contact_ids = list(ids)
        done["campaign_fires"] = cancel_contact_fires(conn, contact_ids)
        conn.execute(delete(contact_groups_t).where(contact_groups_t.c.contact_id.in_(contact_ids)))
        done["contact"] = conn.execute(delete(contacts_t).where(*contact)).rowcount
        c = conversations_t
        convo_ids = list(
            conn.execute(
                select(c.c.id).where(c.c.phone == phone, c.c.workspace == workspace)
            ).scalars()
        )
        conn.execute(delete(timers_t).where(timers_t.c.conversation_id.in_(convo_ids)))
        conn.execute(
            delete(state_changes_t).where(state_changes_t.c.conversation_id.in_(convo_ids))
        )
        done["conversations"] = conn.execute(
            delete(conversations_t).where(conversations_t.c.id.in_(convo_ids))
        ).rowcount
        m = messages_t
        done["messages"] = conn.execute(
            update(m)
            .where(m.c.phone == phone, m.c.workspace == workspace)
            .values(body="", phone="")
        ).rowcount
        # Inbox events carry the body and number in their payload; pending ones are dropped.
        conn.execute(
            update(events_t)
            .where(events_t.c.phone == phone, events_t.c.workspace == workspace)
            .values(payload={}, phone=None, virtual_number=None, body_sha256=None, state="ignored")
        )
        o = opt_outs_t
        mine = [o.c.phone == phone, o.c.workspace == workspace]
        opted = conn.execute(
            select(o.c.virtual_number, o.c.keyword, o.c.created_at).where(*mine)
        ).all()
        if opted:
            key = suppression_hash(phone)
            conn.execute(
                insert_on_conflict(suppressions_t, ["virtual_number", "phone_hash"]),
                [
                    {
                        "workspace": workspace,
                        "virtual_number": vn,
                        "phone_hash": key,
                        "keyword": kw,
                        "created_at": at,
                    }
                    for vn, kw, at in opted
                ],
            )
            conn.execute(delete(o).where(*mine))
        done["opt_outs"] = len(opted)
    log.info("erased a contact: %s", done)  # counts only, never the number
    return done
