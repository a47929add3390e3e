"""Identifiers of the data layer.

Account ids are *deterministic* (uuid5 of the unique key) rather than random: an upsert that
hits the unique constraint keeps the same id, so the ciphertexts, whose associated data names the
row id, stay valid whichever code path wrote them, and the id is known before the INSERT runs.
Mastodon app ids follow the same idea per instance. Everything else gets a random uuid4.
"""

from __future__ import annotations

import uuid

__all__ = ["ACCOUNT_NS", "MASTODON_NS", "account_id", "mastodon_app_id", "new_id"]

#: namespace of ``social_accounts.id``; never change it: existing ids and ciphertexts depend on it
ACCOUNT_NS = uuid.UUID("6f1c8a52-3b9e-5d4a-9c3e-2f7a1b0d8e61")
#: namespace of ``social_mastodon_apps.id``
MASTODON_NS = uuid.UUID("0b7d2e94-51a6-5c83-8f1d-9e4c6a2b3f70")


def account_id(site_id: str, platform: str, platform_account_id: str) -> str:
    """The id of the account row for this unique key (36-char UUID string)."""
    return str(uuid.uuid5(ACCOUNT_NS, f"{site_id}|{platform}|{platform_account_id}"))


def mastodon_app_id(instance: str) -> str:
    """The id of the registered-app row for a Mastodon instance host."""
    return str(uuid.uuid5(MASTODON_NS, instance.strip().lower()))


def new_id() -> str:
    """A random id: attempts, events."""
    return str(uuid.uuid4())
