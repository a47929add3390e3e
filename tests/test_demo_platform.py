"""The demo platform end to end at the HTTP level: ``DemoAdapter`` against ``web_callback.demo``.

The adapter's real ``httpx.Client`` reaches the provider through a transport that hands each
request to Starlette's TestClient, so the code under test is exactly what ``run --demo`` runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from platforms.demo import DemoAdapter
from platforms.oauth2 import pkce_pair
from social_accounts.errors import AccessTokenExpired, NeedsReconnect
from social_accounts.settings import Settings
from web_callback.demo import DemoProvider, routes

pytestmark = pytest.mark.unit


class _ToTestClient(httpx.BaseTransport):
    def __init__(self, client: TestClient) -> None:
        self.client = client

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        answer = self.client.request(
            request.method, request.url.raw_path.decode(), content=request.read(), headers=dict(request.headers)
        )
        return httpx.Response(answer.status_code, headers=list(answer.headers.multi_items()), content=answer.content)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def demo(settings_factory: Any) -> Iterator[tuple[DemoAdapter, TestClient, Clock, Settings]]:
    settings = settings_factory(demo_enabled=True, public_url="http://testserver")
    clock = Clock()
    app = Starlette(routes=[Mount("/demo", routes=routes())])
    app.state.demo_provider = DemoProvider(settings, clock=clock)
    with TestClient(app, follow_redirects=False) as client, httpx.Client(transport=_ToTestClient(client)) as http:
        yield DemoAdapter(settings, http), client, clock, settings


def _consent(client: TestClient, url: str, decision: str) -> dict[str, list[str]]:
    page = client.get(url.removeprefix("http://testserver"))
    assert page.status_code == 200 and "Allow" in page.text and "Deny" in page.text
    ticket = re.search(r'name="ticket" value="([^"]+)"', page.text)
    assert ticket
    answer = client.post("/demo/authorize", data={"ticket": ticket.group(1), "decision": decision, "persona": "cafe"})
    assert answer.status_code == 303
    location = answer.headers["location"]
    assert location.startswith("http://testserver/oauth/callback?")
    return parse_qs(urlsplit(location).query)


def _authorize(demo: Any, challenge: str | None, decision: str = "allow") -> dict[str, list[str]]:
    adapter, client, _, settings = demo
    return _consent(
        client,
        adapter.authorization_url(state="s", redirect_uri=settings.redirect_uri, code_challenge=challenge),
        decision,
    )


def test_connect_refresh_rotation_and_revocation(demo: Any) -> None:
    adapter, client, clock, settings = demo
    verifier, challenge = pkce_pair()
    url = adapter.authorization_url(state="st", redirect_uri=settings.redirect_uri, code_challenge=challenge)
    query = _consent(client, url, "allow")
    assert query["state"] == ["st"]
    code = query["code"][0]

    # the code is single use
    tokens = adapter.exchange_code(code=code, redirect_uri=settings.redirect_uri, code_verifier=verifier)
    with pytest.raises(NeedsReconnect):
        adapter.exchange_code(code=code, redirect_uri=settings.redirect_uri, code_verifier=verifier)
    assert tokens.refresh_token and tokens.expires_at is not None

    [profile] = adapter.fetch_accounts(tokens)
    assert (profile.platform_account_id, profile.name, profile.handle) == ("demo-cafe", "Corner Café", "corner_cafe")
    assert profile.stats.followers is not None and profile.stats.followers >= 1234

    clock.now += 301  # the 5-minute access token expired: the API says so, and a refresh fixes it
    with pytest.raises(AccessTokenExpired):
        adapter.fetch_stats("demo-cafe", tokens)
    fresh = adapter.refresh(tokens)
    assert fresh.refresh_token != tokens.refresh_token  # rotated
    assert adapter.fetch_stats("demo-cafe", fresh).posts is not None

    # presenting the spent refresh token again revokes the whole grant, as rotating platforms do
    with pytest.raises(NeedsReconnect):
        adapter.refresh(tokens)
    with pytest.raises(NeedsReconnect):
        adapter.refresh(fresh)
    with pytest.raises(AccessTokenExpired):
        adapter.fetch_stats("demo-cafe", fresh)


def test_revoke_ends_the_grant(demo: Any) -> None:
    adapter, client, _, settings = demo
    verifier, challenge = pkce_pair()
    code = _authorize(demo, challenge)["code"][0]
    tokens = adapter.exchange_code(code=code, redirect_uri=settings.redirect_uri, code_verifier=verifier)
    assert adapter.revoke(tokens) == "revoked"
    with pytest.raises(NeedsReconnect):
        adapter.refresh(tokens)


def test_wrong_pkce_verifier_and_deny(demo: Any) -> None:
    adapter, client, _, settings = demo
    _, challenge = pkce_pair()
    code = _authorize(demo, challenge)["code"][0]
    with pytest.raises(NeedsReconnect):
        adapter.exchange_code(code=code, redirect_uri=settings.redirect_uri, code_verifier=pkce_pair()[0])
    denied = _authorize(demo, challenge, "deny")
    assert denied["error"] == ["access_denied"] and denied["state"] == ["s"] and "code" not in denied


def test_the_provider_refuses_foreign_clients_and_redirects(demo: Any) -> None:
    adapter, client, _, settings = demo
    url = adapter.authorization_url(state="s", redirect_uri="http://evil.example/cb", code_challenge=None)
    answer = client.get(url.removeprefix("http://testserver"))
    assert answer.status_code == 400 and "evil.example" not in answer.headers.get("location", "")
    wrong_secret = client.post("/demo/token", data={"client_id": "social-accounts-demo", "client_secret": "x"})
    assert wrong_secret.status_code == 401 and wrong_secret.json()["error"] == "invalid_client"
    assert client.get("/demo/api/me", headers={"Authorization": "Bearer demo.forged.token"}).status_code == 401
