"""``platforms.http.send`` on the client it is given.

The request reaches the client's transport (mounts included) with the client's timeout, headers,
cookies and hooks; transport errors keep their meaning (nothing sent versus maybe sent); and the
workers' client (``workers.runtime.platform_client``) keeps no cookie from one call to the next.
"""

from __future__ import annotations

import httpx
import pytest

from platforms.http import send
from social_accounts.errors import RequestMaybeSent, Transient
from social_accounts.settings import Settings
from workers.runtime import platform_client


class Recorder(httpx.BaseTransport):
    """A transport that records every request (with the timeout it was given) and answers 200."""

    def __init__(self, answer: httpx.Response | Exception | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.answer = answer

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        if isinstance(self.answer, Exception):
            raise self.answer
        if self.answer is not None:
            return self.answer
        return httpx.Response(200, json={"ok": True}, headers={"x-seen": "1"})


def test_the_request_reaches_the_transport_as_the_adapter_built_it() -> None:
    transport = Recorder()
    with httpx.Client(transport=transport, headers={"User-Agent": "social-accounts-test"}) as client:
        got = send(
            client,
            "POST",
            "https://api.example.test/oauth/token",
            platform="twitter",
            data={"grant_type": "refresh_token", "refresh_token": "rt"},
            auth=("id", "s3cret"),
            headers={"Accept": "application/json"},
            params={"x": "1"},
        )
    [request] = transport.requests
    assert (request.method, str(request.url)) == ("POST", "https://api.example.test/oauth/token?x=1")
    assert request.headers["authorization"] == "Basic aWQ6czNjcmV0"  # base64("id:s3cret")
    assert request.headers["accept"] == "application/json"
    assert request.headers["user-agent"] == "social-accounts-test"
    assert request.content == b"grant_type=refresh_token&refresh_token=rt"
    assert got.json() == {"ok": True} and got.headers["x-seen"] == "1"


def test_client_timeout_reaches_the_transport() -> None:
    transport = Recorder()
    with httpx.Client(transport=transport, timeout=httpx.Timeout(9.0, connect=2.0)) as client:
        send(client, "GET", "https://api.example.test/me", platform="x")
    assert transport.requests[0].extensions["timeout"] == {"connect": 2.0, "read": 9.0, "write": 9.0, "pool": 9.0}


def test_mounted_transport_is_used_for_its_url() -> None:
    default, mounted = Recorder(), Recorder()
    with httpx.Client(transport=default, mounts={"https://mastodon.example": mounted}) as client:
        send(client, "GET", "https://mastodon.example/api/v1/instance", platform="mastodon")
    assert len(mounted.requests) == 1 and default.requests == []


@pytest.mark.parametrize(
    ("failure", "meaning"),
    [
        (httpx.ConnectError, Transient),  # nothing was sent: safe to repeat
        (httpx.ConnectTimeout, Transient),
        (httpx.PoolTimeout, Transient),
        (httpx.WriteError, RequestMaybeSent),  # part of the request may have gone out
        (httpx.ReadTimeout, RequestMaybeSent),
        (httpx.RemoteProtocolError, RequestMaybeSent),
    ],
)
def test_transport_errors_keep_their_meaning(failure: type[httpx.TransportError], meaning: type[Exception]) -> None:
    request = httpx.Request("POST", "https://api.example.test/token")
    with httpx.Client(transport=Recorder(failure("boom", request=request))) as client, pytest.raises(meaning) as caught:
        send(client, "POST", "https://api.example.test/token", platform="x")
    assert type(caught.value) is meaning


def test_the_client_s_cookies_and_hooks_apply() -> None:
    seen: list[str] = []
    transport = Recorder()
    with httpx.Client(
        transport=transport, cookies={"sid": "abc"}, event_hooks={"request": [lambda r: seen.append(str(r.url))]}
    ) as client:
        send(client, "GET", "https://api.example.test/me", platform="x")
    assert seen == ["https://api.example.test/me"]
    assert transport.requests[0].headers["cookie"] == "sid=abc"


def test_a_closed_client_still_refuses() -> None:
    client = httpx.Client(transport=Recorder())
    client.close()
    with pytest.raises(RuntimeError):
        send(client, "GET", "https://api.example.test/me", platform="x")


def _second_call_cookie(client: httpx.Client, transport: Recorder) -> str | None:
    with client:
        send(client, "GET", "https://api.example.test/me", platform="x")
        send(client, "GET", "https://api.example.test/me", platform="x")
    return transport.requests[1].headers.get("cookie")


SETS_A_COOKIE = httpx.Response(200, json={}, headers={"Set-Cookie": "session=user-a; Path=/"})


def test_cookies_a_platform_sets_are_not_kept_for_the_next_account() -> None:
    """The workers' client serves every account: a cookie one answer sets must not ride along on
    another account's call (a plain client would keep it in its jar)."""
    transport = Recorder(SETS_A_COOKIE)
    client = platform_client(Settings(_env_file=None), transport)
    assert _second_call_cookie(client, transport) is None
    assert not client.cookies


def test_a_plain_client_would_have_kept_the_cookie() -> None:
    transport = Recorder(SETS_A_COOKIE)
    assert _second_call_cookie(httpx.Client(transport=transport), transport) == "session=user-a"
