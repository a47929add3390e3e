"""The signed OAuth ``state``: what lets the callback act without touching the database.

The callback must answer fast and must not depend on PostgreSQL, so everything it needs to
redirect the browser travels inside ``state`` itself: the attempt id, the platform, an expiry and
the ``return_to`` URL. An HMAC-SHA256 under ``STATE_SECRET`` makes it unforgeable; the worker
still checks the attempt row (single use, stage) before it exchanges anything.

Format (compact and URL-safe, no padding)::

    base64url(json payload) "." base64url(hmac_sha256(secret, "sa-state-v1." + payload_part))

Verification checks the length bound first, then the signature in constant time, and only then
parses the payload, so nothing an attacker sends is interpreted before it is authenticated.
It runs on every callback, on the event loop, so it is kept cheap (``bench/callback.py``): the
HMAC state for a secret is keyed once and copied per token, base64 goes straight to ``binascii``,
and the expiry is compared with ``time.time()`` instead of an aware ``datetime.now``.
Errors are ``InputError`` with ``code`` ``state_invalid`` (malformed or forged) or
``state_expired`` (authentic but too old): the two are explained differently to the user.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from social_accounts.errors import InputError

__all__ = ["MAX_RETURN_TO", "MAX_STATE_LENGTH", "SignedState", "sign_state", "verify_state"]

#: longest ``return_to`` accepted anywhere (the connect body enforces the same bound)
MAX_RETURN_TO = 1024
#: longest encoded state accepted; a signed state with the longest return_to stays below it
MAX_STATE_LENGTH = 2048
_DOMAIN = b"sa-state-v1."
#: base64url's alphabet to the standard one (what ``base64.urlsafe_b64decode`` does first)
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")


@dataclass(frozen=True)
class SignedState:
    """The facts a state carries. ``expires_at`` is whole seconds, aware UTC."""

    attempt_id: str
    platform: str
    expires_at: datetime
    return_to: str | None = None


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    """``base64.urlsafe_b64decode`` of unpadded ``text``, without its wrappers (same result and
    errors: ``UnicodeEncodeError`` for non-ASCII text, ``binascii.Error`` for bad padding)."""
    return binascii.a2b_base64(text.encode("ascii").translate(_FROM_URLSAFE) + b"=" * (-len(text) % 4))


@functools.lru_cache(maxsize=8)
def _keyed(secret: str) -> hmac.HMAC:
    """The HMAC state after key and domain, per secret (copying it skips the key setup per token)."""
    return hmac.new(secret.encode("utf-8"), _DOMAIN, hashlib.sha256)


def _mac(secret: str, payload_part: str) -> bytes:
    mac = _keyed(secret).copy()
    mac.update(payload_part.encode("ascii"))
    return mac.digest()


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
    payload_part = _b64encode(json.dumps(payload, separators=(",", ":")).encode("utf-8"))
    token = f"{payload_part}.{_b64encode(_mac(secret, payload_part))}"
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
    payload_part, sep, mac_part = token.partition(".")
    if not sep or not payload_part or not mac_part or "." in mac_part:
        raise _invalid("the state is malformed")
    try:
        given = _b64decode(mac_part)
        expected = _mac(secret, payload_part)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise _invalid("the state is malformed") from None
    if not hmac.compare_digest(given, expected):
        raise _invalid("the state's signature does not match")
    try:
        payload = json.loads(_b64decode(payload_part).decode("utf-8"))  # sign_state writes ASCII JSON
        attempt_id, platform, expiry = payload["a"], payload["p"], payload["e"]
        return_to = payload.get("r")
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise _invalid("the state is malformed") from None
    if not (isinstance(attempt_id, str) and isinstance(platform, str) and isinstance(expiry, int)):
        raise _invalid("the state is malformed")
    if return_to is not None and not isinstance(return_to, str):
        raise _invalid("the state is malformed")
    expires_at = datetime.fromtimestamp(expiry, UTC)
    if (time.time() >= expiry) if now is None else (now >= expires_at):
        raise InputError(
            "This sign-in link has expired. Please start connecting the account again.",
            code="state_expired",
        )
    return SignedState(attempt_id=attempt_id, platform=platform, expires_at=expires_at, return_to=return_to)
