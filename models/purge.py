"""Erasing accounts: the row, its audit events, and its id wherever an attempt recorded it.

A disconnected account keeps its row (no tokens) for ``DISCONNECTED_RETENTION_DAYS`` so that a
reconnect finds its history; after that, or at once when an operator purges it, nothing of it
may stay. "Nothing" means every table of the schema:

* ``social_accounts``: the row (name, handle, avatar, counts, last error).
* ``social_account_events``: every event whose ``account_id`` is the account's, published or not
  (a purge right after the disconnect erases its ``account.disconnected`` before it goes out).
* ``social_webhook_deliveries`` and their ``social_webhook_attempts``: the account's webhook
  deliveries, sent or pending.
* ``social_oauth_states``: the attempts that connected it name it in ``account_ids`` and in their
  ``history``; an attempt left naming no account is deleted (it was about this account only),
  one that also connected other accounts (several Facebook Pages) loses this id only.
* ``social_mastodon_apps`` is per instance, shared by every account on it, and holds nothing of
  one account: it stays.

Each function runs inside the caller's transaction (``Connection``): the account and its traces
go together or not at all. The row ``DELETE`` carries its own guard (still ``disconnected``), so a
reconnect that won the race keeps its account: the ``DELETE`` holds the row's lock, and a
reconnect's upsert waits for it, then inserts a fresh row.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from models.tables import (
    SocialAccount,
    SocialAccountEvent,
    SocialOAuthState,
    SocialWebhookAttempt,
    SocialWebhookDelivery,
    table_of,
)

__all__ = ["ERASED", "PURGE_BATCH", "purge_accounts", "purge_disconnected"]

log = logging.getLogger("social_accounts.purge")

ACCOUNTS = table_of(SocialAccount)
EVENTS = table_of(SocialAccountEvent)
STATES = table_of(SocialOAuthState)
DELIVERIES = table_of(SocialWebhookDelivery)
WEBHOOK_ATTEMPTS = table_of(SocialWebhookAttempt)

#: what an erased account id becomes in an attempt's history
ERASED = "(erased)"
#: accounts purged per transaction by the retention cleanup
PURGE_BATCH = 500


def purge_accounts(conn: Connection, account_ids: Sequence[str]) -> list[str]:
    """Erase these accounts, those still ``disconnected``, and everything of them; the ids erased.

    Parameters:
      conn(Connection): an open transaction; nothing is committed here.
      account_ids: the accounts to erase; one that is missing or not disconnected (reconnected
        meanwhile) is left alone and not returned.
    """
    return _erase(conn, list(account_ids))


def purge_disconnected(engine: Engine, *, before: datetime, batch: int = PURGE_BATCH) -> int:
    """Erase every account disconnected since before ``before``; returns how many.

    "Since" is the row's ``updated_at``: disconnecting is the last write a disconnected account
    gets (nothing refreshes, syncs or rates it any more), so it is the time of the disconnect.
    One short transaction per ``batch`` accounts, in id order, so a large purge never holds many
    row locks at once.
    """
    purged = 0
    after = ""
    while True:
        with engine.begin() as conn:
            ids = list(
                conn.execute(
                    sa.select(ACCOUNTS.c.id)
                    .where(ACCOUNTS.c.status == "disconnected", ACCOUNTS.c.updated_at < before, ACCOUNTS.c.id > after)
                    .order_by(ACCOUNTS.c.id)
                    .limit(batch)
                ).scalars()
            )
            if not ids:
                return purged
            # re-checked under the row lock: a reconnect since the SELECT keeps its account
            erased = _erase(conn, ids, ACCOUNTS.c.updated_at < before)
        purged += len(erased)
        if erased:
            log.info("disconnected accounts past retention erased", extra={"count": len(erased)})
        if len(ids) < batch:
            return purged
        after = ids[-1]


def _erase(conn: Connection, ids: list[str], *guards: Any) -> list[str]:
    """Delete the accounts among ``ids`` still disconnected (and matching ``guards``), then their traces."""
    if not ids:
        return []
    erased = list(
        conn.execute(
            sa.delete(ACCOUNTS)
            .where(ACCOUNTS.c.id.in_(ids), ACCOUNTS.c.status == "disconnected", *guards)
            .returning(ACCOUNTS.c.id)
        ).scalars()
    )
    if erased:
        conn.execute(sa.delete(EVENTS).where(EVENTS.c.account_id.in_(erased)))
        # its webhook deliveries (sent or not) and their attempts name it too
        deliveries = sa.select(DELIVERIES.c.id).where(DELIVERIES.c.account_id.in_(erased))
        conn.execute(sa.delete(WEBHOOK_ATTEMPTS).where(WEBHOOK_ATTEMPTS.c.delivery_id.in_(deliveries)))
        conn.execute(sa.delete(DELIVERIES).where(DELIVERIES.c.account_id.in_(erased)))
        _forget_in_attempts(conn, erased)
    return erased


def _forget_in_attempts(conn: Connection, erased: list[str]) -> None:
    """Take the erased ids out of every attempt that names them; drop attempts left naming none.

    The JSON list is matched as text (``LIKE``), the same on JSONB and SQLite's JSON, and every
    candidate is checked exactly in Python before it is changed.
    """
    as_text = sa.cast(STATES.c.account_ids, sa.Text)
    candidates = conn.execute(
        sa.select(STATES.c.id, STATES.c.account_ids, STATES.c.history).where(
            sa.or_(*(as_text.contains(account_id, autoescape=True) for account_id in erased))
        )
    ).all()
    gone = set(erased)
    for attempt_id, account_ids, history in candidates:
        remaining = [i for i in account_ids or [] if i not in gone]
        if len(remaining) == len(account_ids or []):
            continue
        if not remaining:
            conn.execute(sa.delete(STATES).where(STATES.c.id == attempt_id))
            continue
        conn.execute(
            sa.update(STATES)
            .where(STATES.c.id == attempt_id)
            .values(account_ids=remaining, history=[_scrub_entry(entry, gone) for entry in history or []])
        )


def _scrub_entry(entry: Any, gone: set[str]) -> Any:
    """One history entry with every erased id replaced by ``ERASED``."""
    if not isinstance(entry, dict):
        return entry
    detail = entry.get("detail")
    if not isinstance(detail, str):
        return entry
    for account_id in gone:
        detail = detail.replace(account_id, ERASED)
    return {**entry, "detail": detail}
