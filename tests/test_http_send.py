"""``platforms.http.send``: the direct path to the transport sends what ``Client.request`` would.

The direct path skips the client's cookie, auth-flow and redirect machinery for speed
(``platforms.http._request``); these tests pin that the request on the wire is the same, that
the client's transport and timeout are used, that transport errors keep their meaning, and that
clients the direct path cannot serve faithfully still go through ``Client.request``.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from platforms.http import send
from social_accounts.errors import RequestMaybeSent, Transient


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


def _wire(request: httpx.Request) -> tuple[Any, ...]:
    return (request.method, str(request.url), sorted(request.headers.multi_items()), request.content)


CALLS: list[dict[str, Any]] = [
    {
        "data": {"grant_type": "refresh_token", "refresh_token": "rt"},
        "auth": ("id", "s3cret"),
        "headers": {"Accept": "application/json"},
    },
    {"headers": {"Authorization": "Bearer at"}, "params": {"fields": "id,name"}},
    {"json": {"identifier": "alice", "password": "pw"}},
    {"content": b"raw", "headers": {"Content-Type": "application/octet-stream"}, "timeout": 3.0},
]


@pytest.mark.parametrize("kwargs", CALLS)
def test_direct_path_sends_what_client_request_sends(kwargs: dict[str, Any]) -> None:
    direct, reference = Recorder(), Recorder()
    with (
        httpx.Client(transport=direct, headers={"User-Agent": "social-accounts-test"}, timeout=7.0) as a,
        httpx.Client(transport=reference, headers={"User-Agent": "social-accounts-test"}, timeout=7.0) as b,
    ):
        got = send(a, "POST", "https://api.example.test/oauth/token", platform="twitter", **kwargs)
        b.request("POST", "https://api.example.test/oauth/token", **kwargs)
    assert _wire(direct.requests[0]) == _wire(reference.requests[0])
    assert direct.requests[0].extensions["timeout"] == reference.requests[0].extensions["timeout"]
    assert got.json() == {"ok": True} and got.headers["x-seen"] == "1"
    assert got.request is direct.requests[0]


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


def test_transport_errors_keep_their_meaning() -> None:
    request = httpx.Request("POST", "https://api.example.test/token")
    with (
        httpx.Client(transport=Recorder(httpx.ConnectError("refused", request=request))) as client,
        pytest.raises(Transient),
    ):
        send(client, "POST", "https://api.example.test/token", platform="x")
    with (
        httpx.Client(transport=Recorder(httpx.ReadTimeout("slow", request=request))) as client,
        pytest.raises(RequestMaybeSent),
    ):
        send(client, "POST", "https://api.example.test/token", platform="x")


def test_clients_with_cookies_or_hooks_go_through_client_request() -> None:
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


def test_cookies_a_platform_sets_are_not_kept_for_the_next_account() -> None:
    """The shared client serves every account: a cookie one answer sets must not ride along on
    another account's call (``Client.request`` would store it in the client's jar)."""
    answer = httpx.Response(200, json={}, headers={"Set-Cookie": "session=user-a; Path=/"})
    transport = Recorder(answer)
    with httpx.Client(transport=transport) as client:
        send(client, "GET", "https://api.example.test/me", platform="x")
        send(client, "GET", "https://api.example.test/me", platform="x")
        assert not client.cookies
    assert "cookie" not in transport.requests[1].headers
