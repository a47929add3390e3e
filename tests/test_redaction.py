"""Redaction removes the *whole* secret, whatever characters it is made of.

Checking only that the whole secret string is gone lets a pattern that stops at the first ``.``
pass (``Bearer [REDACTED].DEF-123_xyz`` no longer contains ``abc.DEF-123_xyz``). So these tests
check the exact redacted output, and that no 4-character piece of the secret survives, for
tokens holding each of ``. - _ / + = ~`` in the forms secrets travel in.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from social_accounts.logs import REDACTED, JsonFormatter, RedactingFilter, forget_secrets, redact

#: token-shaped secrets, each with the characters a pattern might stop at
SECRETS = (
    "abc.DEF-123_xyz",
    "Zq9.Lm4.Tt7",
    "kR2-wP5-nB8",
    "hY3_vC6_xJ1",
    "dG4/aB7/qE0",
    "sU5+rI8+oP2",
    "mN6=fK9==",
    "tW1~yH4~gL7",
    "Ab1.Cd2-Ef3_Gh4/Ij5+Kl6=Mn7~Op8",
)

#: (form, template): how secrets are written into log lines
FORMS = {
    "bearer": ("Authorization: Bearer {s}", f"Authorization: Bearer {REDACTED}"),
    "bearer-bare": ("calling with bearer {s} now", f"calling with bearer {REDACTED} now"),
    "query": ("GET /x?access_token={s}&page=2", f"GET /x?access_token={REDACTED}&page=2"),
    "key-value": ("refresh_token={s} account=42", f"refresh_token={REDACTED} account=42"),
    "key-value-spaces": ("client_secret = {s}", f"client_secret = {REDACTED}"),
    "key-value-double-quoted": ('password="{s}" user=alice', f'password="{REDACTED}" user=alice'),
    "key-value-single-quoted": ("client_secret='{s}'", f"client_secret='{REDACTED}'"),
    "key-colon": ("access_token: {s}", f"access_token: {REDACTED}"),
    "key-colon-quoted": ('refresh_token: "{s}"', f'refresh_token: "{REDACTED}"'),
    "bare-token": ("retry with token={s}", f"retry with token={REDACTED}"),
    "api-key": ("api_key={s}", f"api_key={REDACTED}"),
    "percent-encoded": ("GET /cb/access_token%3D{s} HTTP/1.1", f"GET /cb/access_token%3D{REDACTED} HTTP/1.1"),
    "json": ('{{"access_token": "{s}", "expires_in": 60}}', f'{{"access_token": "{REDACTED}", "expires_in": 60}}'),
    "json-compact": ('{{"refreshJwt":"{s}"}}', f'{{"refreshJwt":"{REDACTED}"}}'),
    "repr": ("{{'app_password': '{s}'}}", f"{{'app_password': '{REDACTED}'}}"),
}


@pytest.fixture(autouse=True)
def _empty_registry() -> Iterator[None]:
    forget_secrets()  # only the patterns are under test, not registered values
    yield
    forget_secrets()


def pieces(secret: str, size: int = 4) -> set[str]:
    return {secret[i : i + size] for i in range(len(secret) - size + 1)}


def test_a_quoted_value_with_spaces_is_redacted_whole() -> None:
    assert redact('access_token = "abc def ghi"') == f'access_token = "{REDACTED}"'
    assert redact(r'password="a \"quoted\" pass"') == f'password="{REDACTED}"'


def test_a_status_code_stays_readable() -> None:
    assert redact("status code: 404 for error_code=login_failed") == "status code: 404 for error_code=login_failed"


def test_a_bearer_token_with_dots_dashes_and_underscores_is_redacted_whole() -> None:
    assert redact("Bearer abc.DEF-123_xyz") == f"Bearer {REDACTED}"
    assert redact("Authorization: Bearer abc.DEF-123_xyz (retrying)") == f"Authorization: Bearer {REDACTED} (retrying)"


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("secret", SECRETS)
def test_the_exact_redacted_output(form: str, secret: str) -> None:
    template, expected = FORMS[form]
    assert redact(template.format(s=secret)) == expected


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("secret", SECRETS)
def test_no_four_character_piece_of_a_secret_survives(form: str, secret: str) -> None:
    template, _ = FORMS[form]
    out = redact(template.format(s=secret))
    left = {piece for piece in pieces(secret) if piece in out}
    # a piece may only survive when it is also ordinary text of the line around the secret
    left -= {piece for piece in left if piece in template.format(s="")}
    assert not left, (out, left)


@pytest.mark.parametrize("secret", SECRETS)
def test_a_json_log_line_keeps_no_piece_of_a_secret_in_the_message_or_the_extras(secret: str) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning(
            "refresh failed for %s", f"Bearer {secret}", extra={"url": f"https://x.example/cb?code={secret}"}
        )
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    line = json.loads(stream.getvalue())
    assert line["message"] == f"refresh failed for Bearer {REDACTED}"
    assert line["url"] == f"https://x.example/cb?code={REDACTED}"
    assert not {piece for piece in pieces(secret) if piece in stream.getvalue()}
