"""base64url and HMAC-SHA256 signed values: the one implementation state, session and demo share.

Why one module: the OAuth ``state``, the accounts page's cookies and CSRF tokens, and the demo
provider's tokens all need the same three things (unpadded base64url, a MAC under a key kept
apart per purpose, a constant-time check), and each hand-rolled copy is one more place to get
the comparison or the parsing order wrong.

A signed value is ``base64url(payload) "." base64url(hmac_sha256(key, domain + payload_part))``
(the MAC covers the *encoded* payload, so nothing is decoded before it is authenticated). The
``domain`` keeps values signed for one purpose from being accepted for another under the same
key. Expiry, where a value has one, is a whole-seconds Unix time inside the signed JSON; the
check happens only after the signature holds, so "expired" never reveals anything about a forgery.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

from social_accounts import fastjson

__all__ = [
    "BadSignature",
    "SignatureExpired",
    "Signer",
    "b64url_decode",
    "b64url_encode",
    "constant_time_equal",
    "derive_key",
]


class BadSignature(ValueError):
    """The value is malformed, forged, signed under another key or for another purpose."""


class SignatureExpired(BadSignature):
    """The value is authentic, but its expiry has passed."""


def b64url_encode(raw: bytes) -> str:
    """Unpadded base64url (RFC 4648 §5), as JWTs, PKCE and our signed values use it."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """The inverse of :func:`b64url_encode`; padding is optional.

    Raises ``ValueError`` (``binascii.Error`` is one) for text that is not base64url, non-ASCII
    text included.
    """
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def constant_time_equal(a: str | bytes, b: str | bytes) -> bool:
    """``hmac.compare_digest`` for secrets as text or bytes (text compared as UTF-8)."""
    left = a.encode("utf-8") if isinstance(a, str) else a
    right = b.encode("utf-8") if isinstance(b, str) else b
    return hmac.compare_digest(left, right)


def derive_key(secret: str | bytes, label: bytes) -> bytes:
    """A 32-byte key for one purpose, ``HMAC-SHA256(secret, label)``: one secret, many keys."""
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    return hmac.new(key, label, hashlib.sha256).digest()


class Signer:
    """HMAC-SHA256 under one key for one ``domain``.

    The HMAC state after key and domain is built once and copied per value, so signing and
    checking cost one hash of the payload (the OAuth state is checked on every callback).
    """

    __slots__ = ("_keyed",)

    def __init__(self, key: str | bytes, domain: bytes = b"") -> None:
        raw = key.encode("utf-8") if isinstance(key, str) else key
        if not raw:
            raise ValueError("a signing key must not be empty")
        self._keyed = hmac.new(raw, domain, hashlib.sha256)

    # ---- MACs -----------------------------------------------------------------------------------

    def mac(self, message: str | bytes) -> str:
        """base64url of ``HMAC-SHA256(key, domain + message)``."""
        mac = self._keyed.copy()
        mac.update(message.encode("utf-8") if isinstance(message, str) else message)
        return b64url_encode(mac.digest())

    def mac_matches(self, message: str | bytes, offered: str | None) -> bool:
        """True when ``offered`` is :meth:`mac` of ``message``, compared in constant time."""
        if not offered or not offered.isascii():
            return False
        return hmac.compare_digest(offered.encode("ascii"), self.mac(message).encode("ascii"))

    # ---- signed values --------------------------------------------------------------------------

    def sign(self, payload: bytes) -> str:
        """``base64url(payload) "." mac``: URL-safe, cookie-safe, no padding."""
        payload_part = b64url_encode(payload)
        return f"{payload_part}.{self.mac(payload_part)}"

    def unsign(self, value: str) -> bytes:
        """The payload of a value :meth:`sign` made with this key and domain.

        The MAC is checked (in constant time) before the payload is decoded. Raises
        :class:`BadSignature` for anything else.
        """
        payload_part, sep, mac_part = value.partition(".")
        if not sep or not payload_part or not mac_part or not payload_part.isascii():
            raise BadSignature("malformed signed value")
        if not self.mac_matches(payload_part, mac_part):
            raise BadSignature("signature does not match")
        try:
            return b64url_decode(payload_part)
        except ValueError:
            raise BadSignature("malformed signed value") from None

    def sign_json(self, data: dict[str, Any]) -> str:
        """:meth:`sign` of compact JSON."""
        return self.sign(json.dumps(data, separators=(",", ":")).encode("utf-8"))

    def unsign_json(self, value: str, *, expiry: str | None = None, now: float | None = None) -> dict[str, Any]:
        """The JSON object of a value :meth:`sign_json` made.

        With ``expiry``, that field must be an int (Unix seconds) and the value counts as expired
        from that second on (:class:`SignatureExpired`); ``now`` defaults to ``time.time()``.
        Raises :class:`BadSignature` for a forgery, a payload that is not a JSON object, or a
        missing or non-integer expiry field.
        """
        payload = self.unsign(value)
        try:
            data = fastjson.loads(payload)  # json.loads's value, faster (a state per callback)
        except ValueError:  # UnicodeDecodeError included
            raise BadSignature("payload is not JSON") from None
        if not isinstance(data, dict):
            raise BadSignature("payload is not a JSON object")
        if expiry is not None:
            expires = data.get(expiry)
            if not isinstance(expires, int) or isinstance(expires, bool):
                raise BadSignature("payload carries no expiry")
            if (time.time() if now is None else now) >= expires:
                raise SignatureExpired("signed value has expired")
        return data
