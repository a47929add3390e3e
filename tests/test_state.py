"""The signed OAuth state: round trip, forgery, tampering, expiry and size bounds."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest

from social_accounts.errors import InputError
from web_callback.state import MAX_RETURN_TO, MAX_STATE_LENGTH, SignedState, sign_state, verify_state

pytestmark = pytest.mark.unit

SECRET = "state-secret-for-tests"
NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)


def make(return_to: str | None = "https://dash.example/accounts?tab=social", **kw: object) -> SignedState:
    values: dict[str, object] = {
        "attempt_id": "5d0f8c1e-6a8b-4f0c-9a52-3b1c2d4e5f60",
        "platform": "twitter",
        "expires_at": NOW + timedelta(minutes=10),
        "return_to": return_to,
    }
    values.update(kw)
    return SignedState(**values)  # type: ignore[arg-type]


def code_of(token: str, *, now: datetime = NOW, secret: str = SECRET) -> str:
    with pytest.raises(InputError) as caught:
        verify_state(token, secret, now=now)
    return caught.value.code


def test_round_trip_keeps_every_field() -> None:
    state = make()
    token = sign_state(state, SECRET)
    assert verify_state(token, SECRET, now=NOW) == state
    assert verify_state(sign_state(make(return_to=None), SECRET), SECRET, now=NOW).return_to is None


def test_token_is_url_safe_and_compact() -> None:
    token = sign_state(make(), SECRET)
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
    assert len(token) < 400


def test_other_secret_is_forged() -> None:
    token = sign_state(make(), "another-secret")
    assert code_of(token) == "state_invalid"


def test_tampered_payload_is_invalid() -> None:
    token = sign_state(make(), SECRET)
    payload_part, mac_part = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(payload_part + "=" * (-len(payload_part) % 4)))
    payload["r"] = "https://evil.example/"
    forged = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    assert code_of(f"{forged}.{mac_part}") == "state_invalid"


@pytest.mark.parametrize("token", ["", "no-dot", ".", "abc.", ".abc", "a.b.c", "%%%.%%%", "é.é"])
def test_malformed_is_invalid(token: str) -> None:
    assert code_of(token) == "state_invalid"


def test_signed_garbage_payload_is_invalid() -> None:
    # authentic signature over a payload that is not our JSON shape
    import hashlib
    import hmac

    payload_part = base64.urlsafe_b64encode(b'{"a":1}').rstrip(b"=").decode()
    mac = hmac.new(SECRET.encode(), b"sa-state-v1." + payload_part.encode(), hashlib.sha256).digest()
    token = f"{payload_part}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    assert code_of(token) == "state_invalid"


def test_expired_is_distinguished_from_invalid() -> None:
    token = sign_state(make(), SECRET)
    assert verify_state(token, SECRET, now=NOW + timedelta(minutes=9, seconds=59))
    assert code_of(token, now=NOW + timedelta(minutes=10)) == "state_expired"
    assert code_of(token, now=NOW + timedelta(days=3)) == "state_expired"


def test_expired_and_forged_is_invalid_not_expired() -> None:
    token = sign_state(make(), "another-secret")
    assert code_of(token, now=NOW + timedelta(days=3)) == "state_invalid"


def test_length_is_bounded() -> None:
    longest = make(return_to="https://dash.example/" + "x" * (MAX_RETURN_TO - len("https://dash.example/")))
    assert len(sign_state(longest, SECRET)) <= MAX_STATE_LENGTH
    with pytest.raises(InputError):
        sign_state(make(return_to="https://dash.example/" + "x" * 4000), SECRET)
    assert code_of("a" * (MAX_STATE_LENGTH + 1)) == "state_invalid"


def test_messages_explain_without_echoing_the_state() -> None:
    token = sign_state(make(), "another-secret")
    with pytest.raises(InputError) as caught:
        verify_state(token, SECRET, now=NOW)
    assert token not in str(caught.value)
    assert "start connecting" in str(caught.value)
