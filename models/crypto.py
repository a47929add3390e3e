"""Secrets at rest: AES-256-GCM with a key ring and associated data bound to the row.

Why AES-GCM with associated data rather than Fernet: the associated data
``v1|{table}|{column}|{row_id}|{kid}`` is authenticated but not stored, so someone who can write
to the database cannot move a token from one account (or column) to another: decryption of a
moved value fails. The key id inside the value lets several keys coexist during a rotation
(first key encrypts, any key decrypts) — see ``models.keys``.

Stored text: ``v1:<kid>:<base64url(nonce12 || ciphertext+tag)>``.

Error messages name the table, column, row id and key id — never a key or a plaintext.
"""

from __future__ import annotations

import binascii
import os
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from social_accounts.errors import ConfigError, DecryptError, UnknownKeyError
from social_accounts.signing import b64url_decode, b64url_encode

if TYPE_CHECKING:
    from social_accounts.settings import Settings

__all__ = ["VERSION", "KeyRing"]

VERSION = "v1"
_NONCE = 12
_TAG = 16


class KeyRing:
    """Keys as ``[(kid, 32-byte key)]``; the first one encrypts, any of them decrypts.

    Parameters:
      keys(list[tuple[str, bytes]]): newest first, as ``Settings.key_ring()`` returns them.
    """

    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        if not keys:
            raise ConfigError("the key ring is empty: set TOKEN_KEYS")
        self._keys: dict[str, AESGCM] = {}
        for kid, key in keys:
            if not kid or ":" in kid:
                raise ConfigError(f"key id {kid!r} is not usable (empty or contains ':')")
            if len(key) != 32:
                raise ConfigError(f"key {kid!r} is {len(key)} bytes; it must be 32 (AES-256)")
            if kid in self._keys:
                raise ConfigError(f"key id {kid!r} appears twice")
            self._keys[kid] = AESGCM(key)
        self.current_kid = keys[0][0]

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        """The ring from ``TOKEN_KEYS`` (``ConfigError`` when missing or malformed)."""
        return cls(settings.key_ring())

    @property
    def kids(self) -> list[str]:
        return list(self._keys)

    def __repr__(self) -> str:  # never the keys
        return f"KeyRing(kids={self.kids!r})"

    # ---- the format ---------------------------------------------------------------------------

    @staticmethod
    def _aad(table: str, column: str, row_id: str, kid: str) -> bytes:
        return f"{VERSION}|{table}|{column}|{row_id}|{kid}".encode()

    @staticmethod
    def kid_of(value: str) -> str:
        """The key id a stored value was encrypted with (``DecryptError`` when it is no ciphertext)."""
        version, sep, rest = value.partition(":")
        kid, sep2, _ = rest.partition(":")
        if version != VERSION or not sep or not sep2 or not kid:
            raise DecryptError(f"stored value is not a {VERSION} ciphertext")
        return kid

    # ---- operations ---------------------------------------------------------------------------

    def encrypt(self, plaintext: str, *, table: str, column: str, row_id: str) -> str:
        """Encrypt under the current key, bound to ``table.column`` of row ``row_id``."""
        kid = self.current_kid
        nonce = os.urandom(_NONCE)
        sealed = self._keys[kid].encrypt(nonce, plaintext.encode("utf-8"), self._aad(table, column, row_id, kid))
        return f"{VERSION}:{kid}:{b64url_encode(nonce + sealed)}"

    def decrypt(self, value: str, *, table: str, column: str, row_id: str) -> str:
        """The plaintext of ``value`` read from ``table.column`` of row ``row_id``.

        Raises:
          UnknownKeyError: the value names a key id this ring does not hold.
          DecryptError: the value is malformed, tampered with, or belongs to another row/column.
        """
        where = f"{table}.{column} of row {row_id}"
        kid = self.kid_of(value)
        aead = self._keys.get(kid)
        if aead is None:
            raise UnknownKeyError(f"{where} is encrypted with key id {kid!r}, which TOKEN_KEYS does not hold")
        body = value[len(VERSION) + len(kid) + 2 :]
        try:
            raw = b64url_decode(body)
        except (binascii.Error, ValueError):
            raise DecryptError(f"{where} is not valid base64") from None
        if len(raw) < _NONCE + _TAG:
            raise DecryptError(f"{where} is truncated")
        try:
            plain = aead.decrypt(raw[:_NONCE], raw[_NONCE:], self._aad(table, column, row_id, kid))
        except InvalidTag:
            raise DecryptError(f"{where} fails authentication (tampered with, or copied from elsewhere)") from None
        return plain.decode("utf-8")

    def needs_rotation(self, value: str) -> bool:
        """True when ``value`` is not encrypted under the current (first) key."""
        return self.kid_of(value) != self.current_kid

    def rotate(self, value: str, *, table: str, column: str, row_id: str) -> str:
        """``value`` re-encrypted under the current key (unchanged when it already is)."""
        if not self.needs_rotation(value):
            return value
        plain = self.decrypt(value, table=table, column=column, row_id=row_id)
        return self.encrypt(plain, table=table, column=column, row_id=row_id)

    # ---- conveniences for nullable columns ----------------------------------------------------

    def encrypt_optional(self, plaintext: str | None, *, table: str, column: str, row_id: str) -> str | None:
        """``None`` (and the empty string) stay ``None``: nothing to protect, nothing to store."""
        if not plaintext:
            return None
        return self.encrypt(plaintext, table=table, column=column, row_id=row_id)

    def decrypt_optional(self, value: str | None, *, table: str, column: str, row_id: str) -> str | None:
        if value is None:
            return None
        return self.decrypt(value, table=table, column=column, row_id=row_id)
