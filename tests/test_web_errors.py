"""``web_callback.errors``: the one exception-to-HTTP table, and the handlers the app installs.

Pure: the table itself, then a bare Starlette app with the same handlers (no database, no broker).
"""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from social_accounts.errors import (
    AppPasswordRequired,
    ConfigError,
    InputError,
    InstanceUnreachable,
    LoginFailed,
    NeedsReconnect,
    NotNow,
    Permanent,
    PlatformNotConfigured,
    RateLimited,
    RequestMaybeSent,
    TokenBound,
    Transient,
    UnknownPlatform,
)
from web_callback.errors import EXCEPTION_HANDLERS, Refused, answer_for
from web_callback.health import BROKER_ERRORS

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (UnknownPlatform("no such platform"), 400, "unknown_platform"),
        (InputError("bad", code="return_to_invalid"), 400, "return_to_invalid"),
        (NeedsReconnect("invalid_grant"), 409, "needs_reconnect"),
        (TokenBound("bluesky"), 409, "token_bound"),
        (LoginFailed("the handle cannot be resolved"), 400, "login_failed"),
        (AppPasswordRequired("main password"), 400, "app_password_required"),
        (InstanceUnreachable("not mastodon"), 502, "instance_unreachable"),
        (Permanent("odd answer"), 502, "platform_error"),
        (Transient("503"), 503, "transient"),
        (RequestMaybeSent("no answer"), 503, "request_maybe_sent"),
        (RateLimited("slow", retry_after=30), 503, "rate_limited"),
        (NotNow(12.5, "cooling down"), 503, "rate_limited"),
        (Refused(404, "not_found", "no such account"), 404, "not_found"),
    ],
)
def test_each_error_has_one_status_and_code(error: Exception, status: int, code: str) -> None:
    answer = answer_for(error)
    assert answer is not None and (answer.status, answer.code) == (status, code)


def test_what_may_work_later_says_when_and_the_rest_is_unforeseen() -> None:
    assert [answer_for(e).retry_after for e in (RateLimited("x", retry_after=30), NotNow(2.5))] == [30.0, 2.5]  # type: ignore[union-attr]
    assert answer_for(Transient("x")).retry_after is None  # type: ignore[union-attr]
    unconfigured = answer_for(PlatformNotConfigured("twitter", ["TWITTER_CLIENT_ID"]))
    assert unconfigured is not None and unconfigured.extra == {"missing_env": ["TWITTER_CLIENT_ID"]}
    assert answer_for(ConfigError("TOKEN_KEYS is required")) is None
    assert answer_for(RuntimeError("bug")) is None
    broker_down = answer_for(BROKER_ERRORS[0]("down"))
    assert broker_down is not None and (broker_down.status, broker_down.code) == (503, "broker_unavailable")


def _app(error: Exception) -> TestClient:
    def raises(request: Request) -> Response:
        raise error

    return TestClient(Starlette(routes=[Route("/x", raises)], exception_handlers=EXCEPTION_HANDLERS))


def test_the_handlers_answer_in_the_api_shape_with_retry_after() -> None:
    with _app(NotNow(2.2, "cooling down")) as client:
        answer = client.get("/x")
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "3"
    assert answer.json() == {"error": "rate_limited", "message": "the platform asked us to wait; try again later"}

    with _app(Refused(422, "invalid_body", "the request body is not valid", details=[{"field": "site_id"}])) as client:
        answer = client.get("/x")
    assert answer.status_code == 422 and "Retry-After" not in answer.headers
    assert answer.json()["details"] == [{"field": "site_id"}] and answer.json()["error"] == "invalid_body"


def test_an_error_of_ours_the_table_does_not_know_is_a_plain_500_without_its_text() -> None:
    with _app(ConfigError("TOKEN_KEYS holds secret-ish detail")) as client:
        answer = client.get("/x")
    assert answer.status_code == 500
    assert answer.json() == {"error": "internal_error", "message": "the server failed; try again later"}
