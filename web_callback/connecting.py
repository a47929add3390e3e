"""Connect, read and act on accounts: the one code path behind both the ``/v1`` API and the page.

The API (``web_callback.api``) and the accounts page (``web_callback.pages``) must behave the
same: the same validation (the API's body models), the same attempt rows, the same messages.
So the work lives here as plain, blocking functions over the app's ``Runtime``; the HTTP layers only parse
their input (JSON or a form), call these in a worker thread, and render the outcome.

Nothing is written when a request is refused: a connect attempt row exists only once everything
before it (configuration, ``return_to``, the Mastodon app registration) succeeded.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from sqlalchemy.orm import Session

from models import repository
from models.ids import new_id
from models.tables import SocialAccount, SocialOAuthState
from platforms.oauth2 import pkce_pair
from social_accounts.errors import InputError, PlatformNotConfigured
from web_callback.health import BROKER_ERRORS
from web_callback.messages import error_message
from web_callback.schemas import BlueskyConnectBody, ConnectBody
from web_callback.state import SignedState, sign_state

if TYPE_CHECKING:
    from platforms.base import PlatformAdapter
    from workers.runtime import Runtime

__all__ = [
    "ATTEMPT_TTL",
    "Action",
    "account_view",
    "attempt_view",
    "check_return_to",
    "connect_adapter",
    "enqueue_for_account",
    "site_accounts",
    "start_bluesky",
    "start_bluesky_oauth",
    "start_oauth",
    "valid_id",
]

#: how long a connect attempt (and its signed state) stays usable
ATTEMPT_TTL = timedelta(minutes=10)

Action = Literal["refresh", "sync", "disconnect"]


def valid_id(value: str) -> bool:
    """A 36-character UUID string (every primary key here)."""
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return len(value) == 36


def check_return_to(services: Runtime, return_to: str | None) -> None:
    """``return_to`` must be an absolute http(s) URL on an allowed origin (RETURN_TO_ALLOWED).

    Refused as ``return_to_invalid`` (400), before anything is written: a URL ``urlsplit`` cannot
    parse (an unclosed ``[`` IPv6 bracket; a host with characters such as the fullwidth ``＃`` or
    ``＠`` that NFKC turns into URL delimiters, https://docs.python.org/3/library/urllib.parse.html#urllib.parse.urlsplit),
    user information, and whitespace or control characters (the browser is later redirected
    there, and a line break cannot go into a ``Location`` header).
    """
    if return_to is None:
        return
    invalid = InputError(
        "return_to must be an absolute http(s) URL without user information, spaces or control characters",
        code="return_to_invalid",
    )
    if any(ch.isspace() or not ch.isprintable() for ch in return_to):
        raise invalid
    try:
        parts = urlsplit(return_to)
        parts.port  # noqa: B018 - a port that is not a number (or out of range) raises here
    except ValueError:
        raise invalid from None
    origin = f"{parts.scheme}://{parts.netloc}".lower()
    if parts.scheme not in ("http", "https") or not parts.netloc or "@" in parts.netloc:
        raise invalid
    if origin not in services.settings.allowed_return_origins:
        raise InputError(
            f"return_to must be on one of the allowed origins ({', '.join(services.settings.allowed_return_origins)})",
            code="return_to_not_allowed",
        )


def connect_adapter(services: Runtime, platform: str) -> PlatformAdapter:
    """The adapter for ``platform``, built exactly as the workers build it (Mastodon with the
    database-backed app store, rate hints into the shared cooldowns), on this app's resources."""
    from workers.adapters import adapter_for

    return adapter_for(services, platform)


# ---- connect ----------------------------------------------------------------------------------


def start_oauth(services: Runtime, platform: str, body: ConnectBody) -> dict[str, str]:
    """Build the authorization URL (registering the Mastodon app first), then write the attempt.

    Returns ``{attempt_id, authorization_url}``. Raises ``InputError`` (unknown or unconfigured
    platform, bad ``return_to`` or ``instance``) or ``PlatformError`` (Mastodon registration).
    """
    settings = services.settings
    if platform == "bluesky":
        raise InputError("bluesky connects with a handle and an app password", code="wrong_flow")
    adapter = connect_adapter(services, platform)
    if missing := adapter.missing_env():
        raise PlatformNotConfigured(platform, missing)
    check_return_to(services, body.return_to)
    instance: str | None = None
    if platform == "mastodon":
        if not body.instance:
            raise InputError("mastodon needs the 'instance' field (e.g. mastodon.social)", code="instance_required")
        instance = adapter.instance_url(body.instance)  # type: ignore[attr-defined]
    elif body.instance is not None:
        raise InputError("'instance' is only used for mastodon", code="instance_not_allowed")

    now = datetime.now(UTC).replace(microsecond=0)
    attempt_id = new_id()
    verifier, challenge = pkce_pair()
    expires_at = now + ATTEMPT_TTL
    state = sign_state(SignedState(attempt_id, platform, expires_at, body.return_to), settings.state_secret or "")
    url = adapter.authorization_url(
        state=state, redirect_uri=settings.redirect_uri, code_challenge=challenge, instance=instance
    )
    with Session(services.engine) as session, session.begin():
        repository.create_attempt(
            session,
            services.ring,
            attempt_id=attempt_id,
            platform=platform,
            site_id=body.site_id,
            user_id=body.user_id,
            expires_at=expires_at,
            now=now,
            return_to=body.return_to,
            instance=instance,
            code_verifier=verifier,
        )
    return {"attempt_id": attempt_id, "authorization_url": url}


def start_bluesky(services: Runtime, body: BlueskyConnectBody) -> dict[str, str]:
    """Write the attempt (app password encrypted) and enqueue the login; undo the row if that fails."""
    from workers.publish import enqueue_bluesky_login

    if body.app_password is None:
        raise InputError("an app password is required for this path", code="app_password_missing")
    check_return_to(services, body.return_to)
    now = datetime.now(UTC)
    with Session(services.engine) as session, session.begin():
        attempt_id = repository.create_attempt(
            session,
            services.ring,
            platform="bluesky",
            site_id=body.site_id,
            user_id=body.user_id,
            expires_at=now + ATTEMPT_TTL,
            now=now,
            return_to=body.return_to,
            instance=body.handle.lstrip("@").lower(),
            app_password=body.app_password.get_secret_value(),
        )
    try:
        enqueue_bluesky_login(attempt_id, broker=services.broker)
    except BROKER_ERRORS:
        with Session(services.engine) as session, session.begin():
            row = session.get(SocialOAuthState, attempt_id)
            if row is not None:  # the password must not outlive a login that will never run
                session.delete(row)
        raise
    return {"attempt_id": attempt_id}


def start_bluesky_oauth(services: Runtime, body: BlueskyConnectBody) -> dict[str, str]:
    """AT Protocol OAuth: discovery and the pushed request, then the attempt row.

    The attempt keeps the PKCE verifier and the session (DPoP key, DID, PDS, issuer) encrypted;
    the state names the issuer so the callback checks ``iss`` (``web_callback.callback``).
    Returns ``{attempt_id, authorization_url}``.
    """
    settings = services.settings
    adapter: Any = connect_adapter(services, "bluesky")
    if missing := adapter.oauth.client.missing():
        raise PlatformNotConfigured("bluesky", missing)
    check_return_to(services, body.return_to)
    now = datetime.now(UTC).replace(microsecond=0)
    attempt_id = new_id()
    verifier, challenge = pkce_pair()
    expires_at = now + ATTEMPT_TTL

    def state_for(issuer: str) -> str:
        signed = SignedState(attempt_id, "bluesky", expires_at, body.return_to, issuer=issuer)
        return sign_state(signed, settings.state_secret or "")

    started = adapter.start_oauth(body.handle, sign_state=state_for, code_challenge=challenge)
    with Session(services.engine) as session, session.begin():
        repository.create_attempt(
            session,
            services.ring,
            attempt_id=attempt_id,
            platform="bluesky",
            site_id=body.site_id,
            user_id=body.user_id,
            expires_at=expires_at,
            now=now,
            return_to=body.return_to,
            instance=body.handle.lstrip("@").lower(),
            code_verifier=verifier,
            dpop_key=started.session,
        )
    return {"attempt_id": attempt_id, "authorization_url": started.authorization_url}


# ---- reading ----------------------------------------------------------------------------------


def attempt_view(services: Runtime, attempt_id: str) -> dict[str, Any] | None:
    """The attempt as the API shows it (error message in words), or None when unknown."""
    if not valid_id(attempt_id):
        return None
    with Session(services.engine) as session:
        row = repository.load_attempt(session, attempt_id)
        if row is None:
            return None
        return {
            "attempt_id": row.id,
            "platform": row.platform,
            "site_id": row.site_id,
            "status": row.status,
            "error_code": row.error_code,
            "error_message": error_message(row.error_code),
            "account_ids": list(row.account_ids or []),
        }


def site_accounts(services: Runtime, site_id: str) -> list[dict[str, Any]]:
    """The public dicts of one site's accounts, oldest first (never a token)."""
    with Session(services.engine) as session:
        return [repository.account_public_dict(row) for row in repository.list_accounts(session, site_id=site_id)]


def account_view(services: Runtime, account_id: str) -> dict[str, Any] | None:
    """One account's public dict, or None when the id is malformed or unknown."""
    if not valid_id(account_id):
        return None
    with Session(services.engine) as session:
        row = session.get(SocialAccount, account_id)
        return repository.account_public_dict(row) if row is not None else None


# ---- actions ----------------------------------------------------------------------------------


def enqueue_for_account(services: Runtime, account_id: str, action: Action, *, reason: str = "api") -> bool:
    """Enqueue ``action`` for an existing account; False when there is no such account.

    Raises the broker's connection error when the broker does not take the message.
    """
    from workers import publish

    if account_view(services, account_id) is None:
        return False
    broker = services.broker
    if action == "refresh":
        publish.request_refresh(account_id, reason, broker=broker)
    elif action == "sync":
        publish.request_sync(account_id, broker=broker)
    else:
        publish.request_disconnect(account_id, broker=broker)
    return True
