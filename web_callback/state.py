"""The signed OAuth ``state``: what lets the callback act without touching the database.

The callback must answer fast and must not depend on PostgreSQL, so everything it needs to
redirect the browser travels inside ``state`` itself: the attempt id, the platform, an expiry and
the ``return_to`` URL. An HMAC-SHA256 under ``STATE_SECRET`` makes it unforgeable; the worker
still checks the attempt row (single use, stage) before it exchanges anything.

Format (compact and URL-safe, no padding)::

    base64url(json payload) "." base64url(hmac_sha256(secret, "sa-state-v1." + payload_part))

Verification checks the length bound first, then the signature in constant time, and only then
parses the payload, so nothing an attacker sends is interpreted before it is authenticated
(``social_accounts.signing``).
Errors are ``InputError`` with ``code`` ``state_invalid`` (malformed or forged) or
``state_expired`` (authentic but too old): the two are explained differently to the user.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime

from social_accounts.errors import InputError
from social_accounts.signing import BadSignature, SignatureExpired, Signer

__all__ = ["MAX_RETURN_TO", "MAX_STATE_LENGTH", "SignedState", "sign_state", "verify_state"]

#: longest ``return_to`` accepted anywhere (the connect body enforces the same bound)
MAX_RETURN_TO = 1024
#: longest encoded state accepted; a signed state with the longest return_to stays below it
MAX_STATE_LENGTH = 2048
_DOMAIN = b"sa-state-v1."


@dataclass(frozen=True)
class SignedState:
    """The facts a state carries. ``expires_at`` is whole seconds, aware UTC."""

    attempt_id: str
    platform: str
    expires_at: datetime
    return_to: str | None = None
    #: the authorization server the request went to, when the callback must check ``iss``
    #: (RFC 9207; Bluesky's AT Protocol OAuth)
    issuer: str | None = None


@functools.lru_cache(maxsize=8)
def _signer(secret: str) -> Signer:
    """The state signer per secret (built once: the callback checks a state per request)."""
    return Signer(secret, _DOMAIN)


def sign_state(state: SignedState, secret: str) -> str:
    """Encode and sign ``state``. Raises ``InputError`` when the result would exceed the bound."""
    if not secret:
        raise InputError("STATE_SECRET is empty", code="state_secret_missing")
    payload = {
        "a": state.attempt_id,
        "p": state.platform,
        "e": int(state.expires_at.timestamp()),
    }
    if state.return_to:
        payload["r"] = state.return_to
    if state.issuer:
        payload["i"] = state.issuer
    token = _signer(secret).sign_json(payload)
    if len(token) > MAX_STATE_LENGTH:
        raise InputError("return_to is too long to carry in the OAuth state", code="return_to_too_long")
    return token


def _invalid(reason: str) -> InputError:
    return InputError(
        f"This sign-in link is not valid ({reason}). Please start connecting the account again.",
        code="state_invalid",
    )


def verify_state(token: str, secret: str, *, now: datetime | None = None) -> SignedState:
    """Check signature and expiry of ``token`` and return what it carries.

    Raises ``InputError`` with ``code="state_invalid"`` for anything malformed or forged and
    ``code="state_expired"`` for an authentic state past its expiry.
    """
    if not token:
        raise _invalid("it carries no state")
    if len(token) > MAX_STATE_LENGTH:
        raise _invalid("the state is too long")
    if not secret:
        raise _invalid("the state's signature does not match")
    try:
        payload = _signer(secret).unsign_json(token, expiry="e", now=None if now is None else now.timestamp())
    except SignatureExpired:
        raise InputError(
            "This sign-in link has expired. Please start connecting the account again.",
            code="state_expired",
        ) from None
    except BadSignature:
        raise _invalid("the state's signature does not match or it is malformed") from None
    attempt_id, platform, return_to = payload.get("a"), payload.get("p"), payload.get("r")
    if not (isinstance(attempt_id, str) and isinstance(platform, str)):
        raise _invalid("the state is malformed")
    issuer = payload.get("i")
    if any(value is not None and not isinstance(value, str) for value in (return_to, issuer)):
        raise _invalid("the state is malformed")
    expires_at = datetime.fromtimestamp(payload["e"], UTC)
    return SignedState(
        attempt_id=attempt_id, platform=platform, expires_at=expires_at, return_to=return_to, issuer=issuer
    )
