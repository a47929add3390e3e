"""Logging: one line per event, JSON or text, and no secret ever reaches the output."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from social_accounts import logs
from social_accounts.logs import REDACTED, configure_logging, redact, register_secret
from tests.support import new_key, root_logging_kept

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def isolated_logging() -> Iterator[None]:
    """Each test configures the root logger; put pytest's handlers and level back afterwards."""
    logs.forget_secrets()
    with root_logging_kept():
        yield
    logs.forget_secrets()


def _configure(settings_factory: Any, fmt: str = "json", **overrides: Any) -> io.StringIO:
    stream = io.StringIO()
    configure_logging(settings_factory(log_format=fmt, log_level="DEBUG", **overrides), stream=stream)
    return stream


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


# ---- registered secrets -------------------------------------------------------------------


def test_a_registered_secret_is_removed_from_message_args_and_exception(settings_factory: Any) -> None:
    stream = _configure(settings_factory)
    token = "ya29.a0AfH6SMBx-decrypted-token-value"
    register_secret(token)
    log = logging.getLogger("tests.logs")

    log.info("refreshed with %s", token)
    log.warning(f"inline {token} in the format string")
    try:
        raise RuntimeError(f"platform echoed {token}")
    except RuntimeError:
        log.exception("call failed")

    text = stream.getvalue()
    assert token not in text
    records = [json.loads(line) for line in _lines(stream)]
    assert records[0]["message"] == f"refreshed with {REDACTED}"
    assert records[1]["message"] == f"inline {REDACTED} in the format string"
    assert "RuntimeError: platform echoed [REDACTED]" in records[2]["exc"]


def test_configure_logging_registers_the_settings_secrets(settings_factory: Any) -> None:
    key = new_key()
    stream = _configure(
        settings_factory,
        api_token="api-token-value-123",
        state_secret="state-secret-value-456",
        token_keys=f"k1:{key}",
        twitter_client_secret="twitter-client-secret-789",
    )
    log = logging.getLogger("tests.logs")
    log.error("values: %s %s %s %s", "api-token-value-123", "state-secret-value-456", key, "twitter-client-secret-789")

    text = stream.getvalue()
    for value in ("api-token-value-123", "state-secret-value-456", key, "twitter-client-secret-789"):
        assert value not in text
    assert json.loads(_lines(stream)[0])["message"].count(REDACTED) == 4


def test_short_values_are_not_registered_so_ordinary_words_survive() -> None:
    register_secret("abc")
    register_secret("")
    register_secret(None)
    assert redact("abc is fine") == "abc is fine"


def test_the_registry_is_bounded_and_forgets_the_oldest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "MAX_REGISTERED", 2)
    for value in ("first-secret", "second-secret", "third-secret"):
        register_secret(value)
    assert redact("first-secret second-secret third-secret") == f"first-secret {REDACTED} {REDACTED}"


# ---- patterns (secrets nobody registered) -------------------------------------------------


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("GET /oauth/callback?code=AQBx7f3kZ9&state=abc.def", "AQBx7f3kZ9"),
        ("grant_type=refresh_token&refresh_token=r-8f7a6b5c&client_id=x", "r-8f7a6b5c"),
        ("url https://graph.example/me?access_token=EAAGm0PX4ZCpsBA&fields=id", "EAAGm0PX4ZCpsBA"),
        ("body client_secret=s3cr3t-client-value", "s3cr3t-client-value"),
        ("login password=hunter2hunter2 handle=alice", "hunter2hunter2"),
        ("PASSWORD = Upper-Case-Pass", "Upper-Case-Pass"),
        ("headers {'Authorization': 'Bearer abc.DEF-123_xyz'}", "abc.DEF-123_xyz"),
        ("Authorization: Bearer 1/fFAGRNJru1FTz70BzhT3Zg", "1/fFAGRNJru1FTz70BzhT3Zg"),
        ('response {"access_token": "tok-json-123", "expires_in": 3600}', "tok-json-123"),
        ('response {"refresh_token":"rt-\\"quoted\\"-456"}', 'rt-\\"quoted\\"-456'),
        ("repr {'app_password': 'abcd-efgh-ijkl-mnop'}", "abcd-efgh-ijkl-mnop"),
        (
            "session eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJkaWQ6cGxjOmFiYyJ9.c2lnbmF0dXJlLXZhbHVl ok",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJkaWQ6cGxjOmFiYyJ9.c2lnbmF0dXJlLXZhbHVl",
        ),
        ("db postgresql+psycopg://social:pg-pass-word@db:5432/x down", "pg-pass-word"),
    ],
)
def test_secret_shaped_text_is_redacted(text: str, secret: str) -> None:
    cleaned = redact(text)
    assert secret not in cleaned
    assert REDACTED in cleaned
    assert redact(cleaned) == cleaned  # redacting twice changes nothing


@pytest.mark.parametrize(
    "text",
    [
        "error_code=invalid_grant status_code=400",
        "account_id=6f1c8a52-3b9e-5d4a-9c3e-2f7a1b0d8e61 platform=twitter outcome=refreshed",
        "the token endpoint answered 429; retrying in 30s",
        "https://example.org/oauth/callback",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact(text) == text


def test_a_secret_logged_by_a_third_party_logger_is_redacted(settings_factory: Any) -> None:
    """The filter sits on the root handler, so records propagated from any library are caught."""
    stream = _configure(settings_factory, fmt="text")
    logging.getLogger("httpx.somewhere.deep").warning("POST %s", "https://t.example/token?code=secret-code-1")
    assert "secret-code-1" not in stream.getvalue()
    assert "code=[REDACTED]" in stream.getvalue()


def test_extras_named_like_secrets_are_redacted(settings_factory: Any) -> None:
    stream = _configure(settings_factory)
    logging.getLogger("tests.logs").info(
        "exchanged",
        extra={"access_token": "plain-token-value", "payload": {"refresh_token": "rt-value", "n": 3}},
    )
    record = json.loads(_lines(stream)[0])
    assert record["access_token"] == REDACTED
    assert record["payload"] == {"refresh_token": REDACTED, "n": 3}


# ---- formats ------------------------------------------------------------------------------


def test_json_lines_carry_the_standard_fields_and_the_extras(settings_factory: Any) -> None:
    stream = _configure(settings_factory)
    logging.getLogger("workers.refresh").info(
        "token refreshed", extra={"account_id": "acc-1", "platform": "twitter", "outcome": "refreshed"}
    )
    lines = _lines(stream)
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["level"] == "INFO"
    assert record["logger"] == "workers.refresh"
    assert record["message"] == "token refreshed"
    assert record["ts"].endswith("Z") and "T" in record["ts"]
    assert (record["account_id"], record["platform"], record["outcome"]) == ("acc-1", "twitter", "refreshed")


def test_text_format_keeps_each_event_on_one_line_even_with_a_traceback(settings_factory: Any) -> None:
    stream = _configure(settings_factory, fmt="text")
    log = logging.getLogger("tests.logs")
    log.info("multi\nline message", extra={"platform": "bluesky"})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    lines = _lines(stream)
    assert len(lines) == 2
    assert " INFO tests.logs: multi\\nline message platform=bluesky" in lines[0]
    assert "ValueError: boom" in lines[1] and "Traceback" in lines[1]


def test_level_from_settings_filters_lower_records(settings_factory: Any) -> None:
    stream = io.StringIO()
    configure_logging(settings_factory(log_format="json", log_level="WARNING"), stream=stream)
    logging.getLogger("tests.logs").info("hidden")
    logging.getLogger("tests.logs").warning("shown")
    assert [json.loads(line)["message"] for line in _lines(stream)] == ["shown"]


def test_configure_logging_replaces_its_previous_handler(settings_factory: Any) -> None:
    first = _configure(settings_factory)
    second = _configure(settings_factory)
    logging.getLogger("tests.logs").warning("once")
    assert first.getvalue() == ""
    assert len(_lines(second)) == 1
