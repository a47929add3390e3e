"""Bluesky by AT Protocol OAuth against the reference PDS, with a real browser on its pages.

The service is the real pipeline (in-process worker on Redis, PostgreSQL) and the real web app
(``POST /v1/connect/bluesky`` without an app password, ``GET /oauth/callback``). ``PUBLIC_URL``
is loopback, so the service is the atproto loopback development client, which the PDS accepts
in dev mode. Headless Chromium (Playwright on the Debian chromium, as ``tests/test_browser.py``)
signs in on the PDS's page and authorizes; the redirect back to our callback is caught in the
browser and replayed against the app, so no port has to be served.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from platforms import dpop
from tests.lifecycle_support import api_client, bluesky_settings, events, load, make_due, raw_row
from tests.pipeline_support import Pipeline
from tests.pipeline_support import events as attempt_events
from tests.support import unavailable
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS
from tests.waiting import wait_until
from workers import runtime
from workers.publish import request_disconnect
from workers.refresh import refresh_now
from workers.sync import sync_now

pytestmark = pytest.mark.pds

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


@pytest.fixture
def chromium() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        unavailable("chromium (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright (pip install playwright)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def bsky(pipeline_factory: Any, pds: Any) -> Pipeline:
    return pipeline_factory(**bluesky_settings(pds), http_timeout_seconds=10)


def sign_in(browser: Any, authorization_url: str, redirect_uri: str, handle: str, password: str) -> str:
    """Sign in and authorize on the PDS's pages; returns the query our callback would get."""
    page = browser.new_page()
    page.set_default_timeout(30_000)
    page.route(redirect_uri + "**", lambda route: route.fulfill(status=200, content_type="text/plain", body="ok"))
    try:
        page.goto(authorization_url)
        page.wait_for_selector("input[name=password]")
        assert page.input_value("input[name=username]") == handle  # login_hint went by PAR
        page.fill("input[name=password]", password)
        page.click("button:has-text('Sign in')")
        with page.expect_request(lambda request: request.url.startswith(redirect_uri)) as back:
            page.click("button:has-text('Authorize')")
        url: str = back.value.url
    except Exception:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "bluesky-oauth-failure.png"), full_page=True)
        raise
    finally:
        page.close()
    return urlsplit(url).query


def test_connect_refresh_nonce_change_replay_and_revoke(bsky: Pipeline, pds: Any, chromium: Any) -> None:
    person = pds.create_account(display_name="OAuth Person")
    rt = runtime.current()
    with api_client(bsky) as api:
        started = api.post(
            "/v1/connect/bluesky", json={"site_id": "site-1", "user_id": "user-1", "handle": "@" + person.handle}
        )
        assert started.status_code == 201, started.text
        attempt_id, url = started.json()["attempt_id"], started.json()["authorization_url"]
        # the browser gets only client_id and request_uri: everything else went by PAR
        assert set(parse_qs(urlsplit(url).query)) == {"client_id", "request_uri"}
        stored = bsky.attempt(attempt_id)
        assert stored.dpop_key and person.did not in stored.dpop_key  # the session is encrypted

        query = sign_in(chromium, url, bsky.settings.redirect_uri, person.handle, person.password)
        params = parse_qs(query)
        assert params["iss"] == [pds.service_url]

        # a callback whose iss is not the server the request went to is refused, nothing enqueued
        forged = query.replace("iss=", "iss=x")
        assert api.get(f"/oauth/callback?{forged}", follow_redirects=False).status_code == 400
        answer = api.get(f"/oauth/callback?{query}", follow_redirects=False)
        assert answer.status_code == 200, answer.text
        row = bsky.wait_for(attempt_id)
        assert row.status == "connected", row.history
        assert row.dpop_key is None and row.code_verifier is None and row.token_bundle is None

        # the same callback again: never exchanged twice, the attempt unchanged but for the note
        assert api.get(f"/oauth/callback?{query}", follow_redirects=False).status_code == 200
        wait_until(lambda: attempt_events(bsky.attempt(attempt_id), "state_reused"), what="the replay noted")
        assert bsky.attempt(attempt_id).status == "connected"
        assert len(attempt_events(bsky.attempt(attempt_id), "exchanged")) == 1

    [account_id] = row.account_ids
    account = load(bsky, account_id)
    assert (account.platform_account_id, account.status) == (person.did, "active")
    assert account.row.account_name == "OAuth Person" and account.row.account_handle == person.handle
    assert account.tokens.metadata["auth"] == "oauth" and account.tokens.metadata["issuer"] == pds.service_url
    assert account.tokens.dpop_key and account.tokens.refresh_token
    raw = raw_row(bsky, account_id)
    assert raw.dpop_key and raw.dpop_key.startswith("v1:") and '"d"' not in raw.dpop_key  # encrypted

    # refresh: a rotated refresh token, bound to the same key
    before = account.tokens
    make_due(bsky, account_id)
    result = refresh_now(rt, account_id)
    assert (result.outcome, result.status) == ("refreshed", "active")
    after = load(bsky, account_id).tokens
    assert after.refresh_token != before.refresh_token and after.access_token != before.access_token
    assert after.dpop_key == before.dpop_key

    adapter = _adapter(rt)

    # a DPoP nonce change: the server refuses the stale nonce once, the next proof carries the new one
    # (the PDS is its own authorization server: one origin, one nonce)
    def sent(path: str) -> int:
        return sum(1 for _at, _method, where in bsky.sent if where == path)

    dpop.NONCES.put(pds.service_url, "a-nonce-the-server-no-longer-accepts")
    profiles = sent("/xrpc/app.bsky.actor.getProfile")
    assert sync_now(rt, account_id) == "synced"
    assert sent("/xrpc/app.bsky.actor.getProfile") - profiles == 2  # refused once, then accepted
    assert dpop.NONCES.get(pds.service_url) not in (None, "a-nonce-the-server-no-longer-accepts")
    make_due(bsky, account_id)
    dpop.NONCES.put(pds.service_url, "another-stale-nonce")
    grants = sent("/oauth/token")
    assert refresh_now(rt, account_id).outcome == "refreshed"
    assert sent("/oauth/token") - grants == 2
    assert dpop.NONCES.get(pds.service_url) not in (None, "another-stale-nonce")

    # disconnect: revoked at the authorization server; the refresh token no longer works there
    live = load(bsky, account_id).tokens
    request_disconnect(account_id, broker=bsky.broker)
    wait_until(lambda: events(bsky, account_id, "disconnected"), what="bluesky disconnected")
    [done] = events(bsky, account_id, "disconnected")
    assert done.data == {"revocation": "revoked"}
    with pytest.raises(Exception) as revoked:
        adapter.refresh(live)
    assert getattr(revoked.value, "kind", None) == "needs_reconnect", revoked.value
    stored_row = raw_row(bsky, account_id)
    assert (stored_row.access_token, stored_row.refresh_token, stored_row.dpop_key) == (None, None, None)


def _adapter(rt: Any) -> Any:
    from workers.adapters import adapter_for

    return adapter_for(rt, "bluesky")


# ---- platform requests for other modules, signed with the session's DPoP key -------------------


def connect_by_oauth(bsky: Pipeline, pds: Any, browser: Any) -> tuple[str, Any]:
    """A Bluesky account connected by OAuth through the API, the PDS's pages and our callback."""
    person = pds.create_account(display_name="Proxied Person")
    with api_client(bsky) as api:
        started = api.post("/v1/connect/bluesky", json={"site_id": "site-1", "user_id": "u", "handle": person.handle})
        assert started.status_code == 201, started.text
        attempt_id, url = started.json()["attempt_id"], started.json()["authorization_url"]
        query = sign_in(browser, url, bsky.settings.redirect_uri, person.handle, person.password)
        assert api.get(f"/oauth/callback?{query}", follow_redirects=False).status_code == 200
    row = bsky.wait_for(attempt_id)
    assert row.status == "connected", row.history
    [account_id] = row.account_ids
    return account_id, person


def expired_copy(access_token: str, secret: str) -> str:
    """The same OAuth access token (same ``cnf.jkt``, audience, scope) with its ``exp`` passed,
    signed as the PDS signs them (HS256 with its JWT secret)."""
    import hashlib
    import hmac
    import json
    import time

    from social_accounts.signing import b64url_decode, b64url_encode

    head, body, _signature = access_token.split(".")
    claims = json.loads(b64url_decode(body))
    claims.update(iat=int(time.time()) - 3600, exp=int(time.time()) - 60)
    signing_input = head + "." + b64url_encode(json.dumps(claims).encode())
    return (
        signing_input + "." + b64url_encode(hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest())
    )


def test_platform_requests_of_an_oauth_account_carry_dpop_and_survive_a_nonce_change_and_expiry(
    bsky: Pipeline, pds: Any, chromium: Any
) -> None:
    from sqlalchemy.orm import Session

    from models.tables import SocialAccount
    from workers.proxy import platform_request
    from workers.tokens import TokenBound, get_valid_token

    account_id, person = connect_by_oauth(bsky, pds, chromium)
    rt = runtime.current()
    record = {"$type": "app.bsky.feed.post", "text": "posted by a module", "createdAt": "2026-01-01T00:00:00Z"}
    create = {"repo": person.did, "collection": "app.bsky.feed.post", "record": record}
    with api_client(bsky) as api:
        # the token is useless without our key: never handed out, the caller is sent to /request
        refused = api.post(f"/v1/accounts/{account_id}/token")
        assert refused.status_code == 409 and refused.json()["error"] == "token_bound", refused.text
        answer = api.post(
            f"/v1/accounts/{account_id}/request",
            json={"method": "POST", "path": "/xrpc/com.atproto.repo.createRecord", "body": create},
        )
        assert answer.status_code == 200 and answer.json()["status"] == 200, answer.text
        uri = answer.json()["body"]["uri"]
    assert uri.startswith(f"at://{person.did}/app.bsky.feed.post/")
    with pytest.raises(TokenBound):
        get_valid_token(account_id, rt=rt)

    def sent(path: str) -> int:
        return sum(1 for _at, _method, where in bsky.sent if where == path)

    # the PDS rotated its nonce: one refusal, then the same POST (same body) with the new nonce
    dpop.NONCES.put(pds.service_url, "a-nonce-the-pds-no-longer-accepts")
    creates = sent("/xrpc/com.atproto.repo.createRecord")
    again = platform_request(account_id, "POST", "/xrpc/com.atproto.repo.createRecord", json=create, rt=rt)
    assert again.status == 200 and again.body["uri"] != uri, again.body
    assert sent("/xrpc/com.atproto.repo.createRecord") - creates == 2
    assert dpop.NONCES.get(pds.service_url) not in (None, "a-nonce-the-pds-no-longer-accepts")
    creates = sent("/xrpc/com.atproto.repo.createRecord")  # the kept nonce is accepted at once
    assert platform_request(account_id, "POST", "/xrpc/com.atproto.repo.createRecord", json=create, rt=rt).status == 200
    assert sent("/xrpc/com.atproto.repo.createRecord") - creates == 1

    # an expired access token (still bound to the key): one refresh at the token endpoint, one retry
    stale = expired_copy(load(bsky, account_id).tokens.access_token, pds.jwt_secret)
    with Session(bsky.engine) as session, session.begin():
        stored = session.get(SocialAccount, account_id)
        assert stored is not None
        stored.access_token = bsky.ring.encrypt(
            stale, table="social_accounts", column="access_token", row_id=account_id
        )
    grants, deletes = sent("/oauth/token"), sent("/xrpc/com.atproto.repo.deleteRecord")
    where = {"repo": person.did, "collection": "app.bsky.feed.post", "rkey": uri.rsplit("/", 1)[1]}
    deleted = platform_request(account_id, "POST", "/xrpc/com.atproto.repo.deleteRecord", json=where, rt=rt)
    assert deleted.status == 200, deleted.body
    assert (sent("/oauth/token") - grants, sent("/xrpc/com.atproto.repo.deleteRecord") - deletes) == (1, 2)
    renewed = load(bsky, account_id).tokens
    assert renewed.access_token != stale and renewed.dpop_key
    assert [e.reason for e in events(bsky, account_id, "refreshed")] == ["platform request got 401"]
    gone = platform_request(account_id, "GET", "/xrpc/com.atproto.repo.getRecord", params=where, rt=rt)
    assert gone.status == 400 and gone.body["error"] == "RecordNotFound", gone.body
