"""Registered Mastodon apps, one per instance (``social_mastodon_apps``).

Two connect requests for a new instance may register an app at the same time. Saving is
``INSERT ... ON CONFLICT DO NOTHING`` followed by a re-read, so both callers end up using the one
row that won, and no request fails because another got there first.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

import sqlalchemy as sa
from sqlalchemy.orm import Session

from models.crypto import KeyRing
from models.dialect import upsert_insert
from models.ids import mastodon_app_id
from models.tables import SocialMastodonApp, table_of, utcnow

__all__ = ["MastodonAppRecord", "find_mastodon_app", "normalize_instance", "save_mastodon_app"]

_T = "social_mastodon_apps"
APPS = table_of(SocialMastodonApp)


class MastodonAppRecord(NamedTuple):
    """``(client_id, client_secret, scopes, redirect_uri)`` with the secret decrypted."""

    client_id: str
    client_secret: str
    scopes: str
    redirect_uri: str

    def __repr__(self) -> str:  # the client secret never reaches a log line
        return f"MastodonAppRecord(client_id={self.client_id!r}, client_secret=<redacted>, scopes={self.scopes!r})"


def normalize_instance(instance: str) -> str:
    """Instance hosts are case-insensitive: ``Mastodon.Social`` and ``mastodon.social`` share one app."""
    return instance.strip().lower()


def find_mastodon_app(session: Session, ring: KeyRing, instance: str) -> MastodonAppRecord | None:
    """The app registered on ``instance``, or ``None``."""
    host = normalize_instance(instance)
    row = session.execute(sa.select(APPS).where(APPS.c.instance == host)).one_or_none()
    if row is None:
        return None
    secret = ring.decrypt(row.client_secret, table=_T, column="client_secret", row_id=row.id)
    return MastodonAppRecord(row.client_id, secret, row.scopes, row.redirect_uri)


def save_mastodon_app(
    session: Session,
    ring: KeyRing,
    *,
    instance: str,
    client_id: str,
    client_secret: str,
    scopes: str,
    redirect_uri: str,
    now: datetime | None = None,
) -> MastodonAppRecord:
    """Store a newly registered app unless one exists already; return the app that is stored."""
    host = normalize_instance(instance)
    row_id = mastodon_app_id(host)
    stmt = (
        upsert_insert(session, APPS)
        .values(
            id=row_id,
            instance=host,
            client_id=client_id,
            client_secret=ring.encrypt(client_secret, table=_T, column="client_secret", row_id=row_id),
            scopes=scopes,
            redirect_uri=redirect_uri,
            created_at=now or utcnow(),
        )
        .on_conflict_do_nothing()
    )
    session.execute(stmt)
    found = find_mastodon_app(session, ring, host)
    if found is None:  # cannot happen: either we inserted it or a row made the insert a no-op
        raise RuntimeError(f"Mastodon app for {host} vanished right after it was saved")
    return found
