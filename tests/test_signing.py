"""The one base64url helper and HMAC signer: round trips, tampering, wrong keys, expiry, compare."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from social_accounts import signing
from social_accounts.signing import (
    BadSignature,
    SignatureExpired,
    Signer,
    b64url_decode,
    b64url_encode,
    constant_time_equal,
    derive_key,
)

pytestmark = pytest.mark.unit

KEY = b"k" * 32
NOW = 1_800_000_000


# ---- base64url ---------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"", b"\x00", b"\xfb\xff", b"abc", b"\xff" * 4, bytes(range(256))])
def test_b64url_round_trips_without_padding(raw: bytes) -> None:
    text = b64url_encode(raw)
    assert "=" not in text and "+" not in text and "/" not in text
    assert text == base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert b64url_decode(text) == raw


@pytest.mark.parametrize("text", ["a", "ab!c", "é"])
def test_b64url_decode_refuses_what_is_not_base64url(text: str) -> None:
    with pytest.raises(ValueError):
        b64url_decode(text)


# ---- keys --------------------------------------------------------------------------------------


def test_derived_keys_differ_per_label_and_secret() -> None:
    keys = {derive_key("s1", b"a"), derive_key("s1", b"b"), derive_key("s2", b"a"), derive_key(b"s1", b"a")}
    assert len(keys) == 3  # str and bytes of the same secret give the same key
    assert all(len(key) == 32 for key in keys)


def test_an_empty_key_is_refused() -> None:
    with pytest.raises(ValueError):
        Signer(b"")


# ---- signed values -----------------------------------------------------------------------------


def test_wire_format_is_payload_dot_hmac_over_domain_and_encoded_payload() -> None:
    """The format states and cookies already in flight were made with: it must not drift."""
    token = Signer(KEY, b"dom|").sign_json({"x": 1})
    payload_part, mac_part = token.split(".")
    assert base64.urlsafe_b64decode(payload_part + "==") == b'{"x":1}'
    expected = hmac.new(KEY, b"dom|" + payload_part.encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64decode(mac_part + "=") == expected


def test_round_trip() -> None:
    signer = Signer(KEY, b"d")
    assert signer.unsign(signer.sign(b"\x00payload\xff")) == b"\x00payload\xff"
    assert signer.unsign_json(signer.sign_json({"a": "é", "n": 2})) == {"a": "é", "n": 2}


def test_json_the_signer_wrote_reads_back_whatever_parser_takes_it() -> None:
    signer = Signer(KEY)
    # orjson reads most payloads; these it refuses or would change, so json reads them
    cases = ({"r": "lone \ud800 surrogate"}, {"big": 2**70 + 1, "neg": -(2**63) - 1}, {"exp": 2**40, "s": "é" * 300})
    for data in cases:
        assert signer.unsign_json(signer.sign_json(data)) == data


def test_tampered_payload_is_refused() -> None:
    signer = Signer(KEY)
    payload_part, mac_part = signer.sign_json({"role": "user"}).split(".")
    forged = b64url_encode(json.dumps({"role": "admin"}).encode())
    with pytest.raises(BadSignature):
        signer.unsign(f"{forged}.{mac_part}")


def test_tampered_mac_is_refused() -> None:
    signer = Signer(KEY)
    payload_part, mac_part = signer.sign(b"data").split(".")
    flipped = ("A" if mac_part[0] != "A" else "B") + mac_part[1:]
    with pytest.raises(BadSignature):
        signer.unsign(f"{payload_part}.{flipped}")
    with pytest.raises(BadSignature):
        signer.unsign(f"{payload_part}.{mac_part}=")  # a non-canonical spelling is not the MAC


def test_wrong_key_and_wrong_domain_are_refused() -> None:
    token = Signer(KEY, b"session|").sign(b"data")
    with pytest.raises(BadSignature):
        Signer(b"x" * 32, b"session|").unsign(token)
    with pytest.raises(BadSignature):
        Signer(KEY, b"login|").unsign(token)


@pytest.mark.parametrize("value", ["", "no-dot", ".", "abc.", ".abc", "a.b.c", "é.é", "%%%.%%%"])
def test_malformed_is_refused(value: str) -> None:
    with pytest.raises(BadSignature):
        Signer(KEY).unsign(value)


@pytest.mark.parametrize("payload", [b"not json", b"[1, 2]", b"\xff\xfe"])
def test_authentic_payload_that_is_not_a_json_object_is_refused(payload: bytes) -> None:
    signer = Signer(KEY)
    with pytest.raises(BadSignature):
        signer.unsign_json(signer.sign(payload))


# ---- expiry ------------------------------------------------------------------------------------


def test_expiry_is_exclusive_of_its_second() -> None:
    signer = Signer(KEY)
    token = signer.sign_json({"exp": NOW})
    assert signer.unsign_json(token, expiry="exp", now=NOW - 1) == {"exp": NOW}
    with pytest.raises(SignatureExpired):
        signer.unsign_json(token, expiry="exp", now=NOW)
    with pytest.raises(SignatureExpired):
        signer.unsign_json(token, expiry="exp", now=NOW + 86_400)


def test_expiry_defaults_to_the_current_time() -> None:
    signer = Signer(KEY)
    with pytest.raises(SignatureExpired):
        signer.unsign_json(signer.sign_json({"exp": 1}), expiry="exp")
    assert signer.unsign_json(signer.sign_json({"exp": 2**40}), expiry="exp")["exp"] == 2**40


def test_forged_and_expired_is_bad_not_expired() -> None:
    token = Signer(b"x" * 32).sign_json({"exp": NOW})
    with pytest.raises(BadSignature) as caught:
        Signer(KEY).unsign_json(token, expiry="exp", now=NOW + 10)
    assert type(caught.value) is BadSignature


@pytest.mark.parametrize("data", [{}, {"exp": "1800000000"}, {"exp": 1.5e9}, {"exp": True}, {"exp": None}])
def test_a_missing_or_non_integer_expiry_is_refused(data: dict[str, object]) -> None:
    signer = Signer(KEY)
    with pytest.raises(BadSignature) as caught:
        signer.unsign_json(signer.sign_json(data), expiry="exp", now=0)
    assert type(caught.value) is BadSignature


# ---- constant-time comparison ------------------------------------------------------------------


def test_comparisons_go_through_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(signing.hmac, "compare_digest", recording)
    signer = Signer(KEY)
    token = signer.sign(b"data")
    assert signer.unsign(token) == b"data"
    assert calls and calls[-1][0] == calls[-1][1] == token.split(".")[1].encode()
    calls.clear()
    assert signer.mac_matches("sid", signer.mac("sid")) and len(calls) == 1
    assert not signer.mac_matches("sid", signer.mac("other")) and len(calls) == 2
    assert constant_time_equal("sécret", "sécret".encode()) and len(calls) == 3
    assert not constant_time_equal("secret", "secreT") and len(calls) == 4


@pytest.mark.parametrize("offered", [None, "", "é" * 43])
def test_mac_matches_refuses_empty_and_non_ascii_without_raising(offered: str | None) -> None:
    assert not Signer(KEY).mac_matches("sid", offered)
