"""Tokens at rest: AES-256-GCM bound to table, column, row and key id (models/crypto.py).

The PostgreSQL tests prove the property that matters to an operator: a database dump holds no
secret in clear, and a ciphertext moved to another row or column is refused.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session

from models.attempts import store_token_bundle
from models.crypto import KeyRing
from models.repository import create_attempt, load_account, load_attempt, save_mastodon_app, upsert_account
from social_accounts.errors import ConfigError, CryptoError, DecryptError, UnknownKeyError
from social_accounts.settings import Settings, parse_key_ring
from social_accounts.values import AccountProfile, TokenSet

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
WHERE = {"table": "social_accounts", "column": "access_token", "row_id": "row-1"}


def key() -> bytes:
    return os.urandom(32)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing([("k1", key())])


# ---- the format ------------------------------------------------------------------------------


@pytest.mark.unit
def test_round_trip_and_format(ring: KeyRing) -> None:
    value = ring.encrypt("s3cret-token", **WHERE)
    assert re.fullmatch(r"v1:k1:[A-Za-z0-9_-]+", value)
    assert "s3cret-token" not in value
    assert ring.decrypt(value, **WHERE) == "s3cret-token"
    assert ring.encrypt("s3cret-token", **WHERE) != value  # a fresh nonce every time


@pytest.mark.unit
@pytest.mark.parametrize(
    "moved",
    [
        {"row_id": "row-2"},
        {"column": "refresh_token"},
        {"table": "social_oauth_states"},
    ],
)
def test_value_moved_elsewhere_fails(ring: KeyRing, moved: dict[str, str]) -> None:
    value = ring.encrypt("s3cret-token", **WHERE)
    with pytest.raises(DecryptError) as info:
        ring.decrypt(value, **{**WHERE, **moved})
    assert "s3cret-token" not in str(info.value)
    assert value not in str(info.value)


@pytest.mark.unit
def test_relabelled_key_id_fails() -> None:
    k1, k2 = key(), key()
    ring = KeyRing([("k2", k2), ("k1", k1)])
    value = KeyRing([("k1", k1)]).encrypt("s3cret-token", **WHERE)
    with pytest.raises(DecryptError):
        ring.decrypt(value.replace("v1:k1:", "v1:k2:"), **WHERE)


@pytest.mark.unit
@pytest.mark.parametrize(
    "mangle",
    [
        lambda v: v[:-2] + ("A" if v[-2] != "A" else "B") + v[-1],  # one byte flipped
        lambda v: v[:20],  # truncated
        lambda v: "v1:k1:!!!not-base64!!!",
        lambda v: "plaintext-that-was-never-encrypted",
        lambda v: "v2:k1:" + v[6:],
    ],
)
def test_tampered_or_malformed_values_fail(ring: KeyRing, mangle: object) -> None:
    value = ring.encrypt("s3cret-token", **WHERE)
    bad = mangle(value)  # type: ignore[operator]
    with pytest.raises(DecryptError) as info:
        ring.decrypt(bad, **WHERE)
    assert "s3cret-token" not in str(info.value)


@pytest.mark.unit
def test_unknown_key_id_fails_clearly(ring: KeyRing) -> None:
    other_key = key()
    value = KeyRing([("old", other_key)]).encrypt("s3cret-token", **WHERE)
    with pytest.raises(UnknownKeyError) as info:
        ring.decrypt(value, **WHERE)
    message = str(info.value)
    assert "'old'" in message and "TOKEN_KEYS" in message
    assert "s3cret-token" not in message and b64(other_key) not in message
    assert isinstance(info.value, CryptoError)


@pytest.mark.unit
def test_rotation_helpers() -> None:
    k1, k2 = key(), key()
    old = KeyRing([("k1", k1)])
    new = KeyRing([("k2", k2), ("k1", k1)])
    value = old.encrypt("s3cret-token", **WHERE)
    assert new.needs_rotation(value) and not old.needs_rotation(value)
    rotated = new.rotate(value, **WHERE)
    assert rotated.startswith("v1:k2:") and not new.needs_rotation(rotated)
    assert new.rotate(rotated, **WHERE) == rotated
    assert KeyRing([("k2", k2)]).decrypt(rotated, **WHERE) == "s3cret-token"


@pytest.mark.unit
def test_repr_hides_keys() -> None:
    raw = key()
    ring = KeyRing([("k1", raw)])
    assert repr(ring) == "KeyRing(kids=['k1'])"
    assert b64(raw) not in repr(ring)


@pytest.mark.unit
def test_optional_helpers_store_nothing_for_empty(ring: KeyRing) -> None:
    assert ring.encrypt_optional("", **WHERE) is None
    assert ring.encrypt_optional(None, **WHERE) is None
    assert ring.decrypt_optional(None, **WHERE) is None


# ---- configuration ---------------------------------------------------------------------------


@pytest.mark.unit
def test_from_settings_uses_token_keys() -> None:
    k2, k1 = key(), key()
    settings = Settings(_env_file=None, token_keys=f"k2:{b64(k2)}, k1:{b64(k1)}")  # type: ignore[call-arg]
    ring = KeyRing.from_settings(settings)
    assert ring.kids == ["k2", "k1"] and ring.current_kid == "k2"
    value = KeyRing([("k1", k1)]).encrypt("x", **WHERE)
    assert ring.decrypt(value, **WHERE) == "x"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("nocolon", "malformed"),
        ("k1:", "malformed"),
        (":abc", "malformed"),
        ("k1:%%%notbase64", "not valid base64"),
        (f"k1:{b64(os.urandom(16))}", "16 bytes; it must be 32"),
        (f"k1:{b64(os.urandom(32))},k1:{b64(os.urandom(32))}", "twice"),
        (f"bad kid:{b64(os.urandom(32))}", "must be letters"),
        (" , ", "empty"),
    ],
)
def test_malformed_token_keys_is_a_clear_config_error(raw: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        KeyRing.from_settings(Settings(_env_file=None, token_keys=raw))  # type: ignore[call-arg]
    message = str(info.value)
    assert expected in message and "\n" not in message
    for part in raw.split(","):  # never echo key material back
        secret = part.partition(":")[2].strip()
        if len(secret) > 8:
            assert secret not in message


@pytest.mark.unit
def test_missing_token_keys_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="TOKEN_KEYS is required"):
        KeyRing.from_settings(Settings(_env_file=None, token_keys=None))  # type: ignore[call-arg]


@pytest.mark.unit
def test_key_ring_constructor_checks_key_length() -> None:
    with pytest.raises(ConfigError, match="must be 32"):
        KeyRing([("k1", b"short")])
    with pytest.raises(ConfigError, match="empty"):
        KeyRing([])
    assert parse_key_ring(f"k1:{b64(os.urandom(32))}")[0][0] == "k1"


# ---- on a real database ----------------------------------------------------------------------


def _profile(pid: str, access: str, refresh: str | None) -> AccountProfile:
    tokens = TokenSet(access_token=access, refresh_token=refresh, expires_at=NOW + timedelta(hours=1))
    return AccountProfile(platform_account_id=pid, name=f"Name {pid}", handle=pid, avatar_url=None, tokens=tokens)


def test_database_dump_holds_no_secret_in_clear(engine: Engine, pg_url: str, ring: KeyRing) -> None:
    secrets = {
        "access": "AT-plain-4f1d9c2e7b",
        "refresh": "RT-plain-8a3e5b1c0d",
        "verifier": "PKCE-verifier-plain-77c1e2",
        "password": "app-pass-plain-19ab",
        "bundle": "bundle-access-plain-5e6f",
        "client": "client-secret-plain-3c4d",
    }
    with Session(engine) as s, s.begin():
        upsert_account(
            s,
            ring,
            site_id="site-1",
            platform="twitter",
            user_id="u1",
            profile=_profile("acct-visible-name", secrets["access"], secrets["refresh"]),
            next_refresh_at=None,
            now=NOW,
        )
        attempt_id = create_attempt(
            s,
            ring,
            platform="bluesky",
            site_id="site-1",
            user_id="u1",
            expires_at=NOW + timedelta(minutes=10),
            now=NOW,
            code_verifier=secrets["verifier"],
            app_password=secrets["password"],
        )
        row = load_attempt(s, attempt_id)
        assert row is not None
        store_token_bundle(ring, row, TokenSet(access_token=secrets["bundle"]))
        save_mastodon_app(
            s,
            ring,
            instance="mastodon.example",
            client_id="cid",
            client_secret=secrets["client"],
            scopes="read",
            redirect_uri="http://x/cb",
        )
    url = make_url(pg_url)
    dump = subprocess.run(
        ["pg_dump", "-h", url.host or "127.0.0.1", "-p", str(url.port or 5432), "-U", "postgres", url.database or ""],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert "acct-visible-name" in dump  # the dump did include the rows
    assert dump.count("v1:k1:") == 6  # six ciphertexts, all under k1
    for name, secret in secrets.items():
        assert secret not in dump, f"{name} appears in clear in pg_dump output"


def test_ciphertext_swapped_to_another_row_or_column_fails(engine: Engine, ring: KeyRing) -> None:
    with Session(engine) as s, s.begin():
        a, _ = upsert_account(
            s,
            ring,
            site_id="s",
            platform="x",
            user_id=None,
            profile=_profile("a", "AT-a", "RT-a"),
            next_refresh_at=None,
            now=NOW,
        )
        b, _ = upsert_account(
            s,
            ring,
            site_id="s",
            platform="x",
            user_id=None,
            profile=_profile("b", "AT-b", "RT-b"),
            next_refresh_at=None,
            now=NOW,
        )
    with engine.begin() as conn:  # an attacker with write access to the table
        conn.execute(
            sa.text(
                "UPDATE social_accounts SET access_token ="
                " (SELECT access_token FROM social_accounts WHERE id = :a) WHERE id = :b"
            ),
            {"a": a, "b": b},
        )
        conn.execute(sa.text("UPDATE social_accounts SET refresh_token = access_token WHERE id = :a"), {"a": a})
    with Session(engine) as s:
        with pytest.raises(DecryptError) as info:
            load_account(s, ring, b)
        assert "AT-a" not in str(info.value) and b in str(info.value)
        with pytest.raises(DecryptError, match="refresh_token"):
            load_account(s, ring, a)


def test_unknown_key_on_load_names_the_key(engine: Engine, ring: KeyRing) -> None:
    with Session(engine) as s, s.begin():
        acc, _ = upsert_account(
            s,
            ring,
            site_id="s",
            platform="x",
            user_id=None,
            profile=_profile("a", "AT-a", None),
            next_refresh_at=None,
            now=NOW,
        )
    with Session(engine) as s, pytest.raises(UnknownKeyError, match="'k1'"):
        load_account(s, KeyRing([("k9", key())]), acc)
