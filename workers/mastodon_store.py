"""The Mastodon adapter's app store, kept in ``social_mastodon_apps``.

The app that issued an authorization code is needed again to exchange it and, later, to revoke
the token, possibly in another process: so registered apps live in the database, the client
secret encrypted. The web app (building authorization URLs) and the workers (exchanging codes)
both use :func:`mastodon_adapter`, so they always agree on the app of an instance.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from models.crypto import KeyRing
from models.mastodon_apps import MastodonAppRecord, normalize_instance
from models.repository import find_mastodon_app, save_mastodon_app
from models.tables import SocialMastodonApp
from platforms.mastodon import MastodonAdapter, MastodonApp
from workers.runtime import Runtime

__all__ = ["DbMastodonAppStore", "mastodon_adapter"]


class DbMastodonAppStore:
    """A ``platforms.mastodon.MastodonAppStore`` on the database (keyed by the instance base URL)."""

    def __init__(self, engine: Engine, ring: KeyRing) -> None:
        self.engine = engine
        self.ring = ring

    def __repr__(self) -> str:
        return "DbMastodonAppStore()"

    def get(self, instance: str) -> MastodonApp | None:
        with Session(self.engine) as session:
            record = find_mastodon_app(session, self.ring, instance)
        return _app(instance, record) if record is not None else None

    def put(self, app: MastodonApp) -> MastodonApp:
        """Store ``app`` unless one for the same redirect URI won the race; then return the winner.

        An app registered for another redirect URI (``PUBLIC_URL`` changed) is replaced: the
        instance would refuse our new callback URL for it anyway.
        """
        with Session(self.engine) as session, session.begin():
            stored = find_mastodon_app(session, self.ring, app.instance)
            if stored is not None and stored.redirect_uri != app.redirect_uri:
                table = SocialMastodonApp.__table__  # type: ignore[attr-defined]
                session.execute(sa.delete(table).where(table.c.instance == normalize_instance(app.instance)))
            record = save_mastodon_app(
                session,
                self.ring,
                instance=app.instance,
                client_id=app.client_id,
                client_secret=app.client_secret,
                scopes=" ".join(app.scopes),
                redirect_uri=app.redirect_uri,
            )
        return _app(app.instance, record)


def _app(instance: str, record: MastodonAppRecord) -> MastodonApp:
    return MastodonApp(
        instance=instance,
        client_id=record.client_id,
        client_secret=record.client_secret,
        scopes=tuple(record.scopes.split()),
        redirect_uri=record.redirect_uri,
    )


def mastodon_adapter(rt: Runtime) -> MastodonAdapter:
    """A Mastodon adapter on the runtime's HTTP client with the database-backed app store."""
    return MastodonAdapter(rt.settings, rt.http, rt.clock, app_store=DbMastodonAppStore(rt.engine, rt.ring))
