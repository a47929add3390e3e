"""The Bluesky OAuth client checked against the atproto OAuth spec, offline (no services).

What is checked (https://atproto.com/specs/oauth): the client metadata document's fields, the
``private_key_jwt`` client assertion's claims, key rotation (the JWKS lists every key, the first
signs), the DPoP proofs' claims (RFC 9449), the nonce retry, discovery's issuer check through the
SSRF guard, the token answer's ``sub`` check, and the callback's ``iss`` check.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from joserfc import jwt
from joserfc.errors import BadSignatureError
from joserfc.jwk import ECKey, KeySet

from platforms import dpop
from platforms.bluesky import BlueskyAdapter
from platforms.bluesky_oauth import ASSERTION_TYPE, ClientIdentity, parse_signing_keys
from social_accounts.errors import ConfigError, InputError, NeedsReconnect, Permanent, UnsafeAddress
from social_accounts.settings import Settings, new_signing_key
from social_accounts.signing import b64url_encode
from web_callback.callback import check_issuer
from web_callback.state import SignedState, sign_state, verify_state

pytestmark = pytest.mark.unit

PUBLIC = "https://accounts.example.com"
METADATA_URL = PUBLIC + "/oauth/bluesky/client-metadata.json"
ISSUER = "https://auth.example"
PDS = "https://pds.example"
DID = "did:plc:abcdefghijklmnopqrstuvwx"
KEY_1 = new_signing_key("k-new")
KEY_2 = new_signing_key("k-old")


def settings(**values: Any) -> Settings:
    base: dict[str, Any] = {"public_url": PUBLIC, "bluesky_oauth_keys": f"{KEY_1},{KEY_2}"}
    return Settings(_env_file=None, **{**base, **values})  # type: ignore[call-arg]


def claims_of(token: str, key: Any) -> dict[str, Any]:
    return dict(jwt.decode(token, key, algorithms=["ES256"]).claims)


def header_of(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, _header_key(token), algorithms=["ES256"]).header)


def _header_key(token: str) -> ECKey:
    import base64

    head = token.split(".")[0]
    return ECKey.import_key(json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))["jwk"])


# ---- the client ---------------------------------------------------------------------------------


def test_client_metadata_has_the_fields_the_spec_requires() -> None:
    meta = ClientIdentity(settings()).metadata()

    assert meta["client_id"] == METADATA_URL  # the client_id is the URL the document is served at
    assert meta["application_type"] == "web"
    assert meta["grant_types"] == ["authorization_code", "refresh_token"]
    assert meta["response_types"] == ["code"]
    assert meta["redirect_uris"] == [PUBLIC + "/oauth/callback"]
    assert meta["scope"] == "atproto transition:generic"
    assert meta["dpop_bound_access_tokens"] is True
    assert meta["token_endpoint_auth_method"] == "private_key_jwt"
    assert meta["token_endpoint_auth_signing_alg"] == "ES256"
    assert meta["jwks_uri"] == PUBLIC + "/oauth/bluesky/jwks.json"
    assert meta["client_uri"] == PUBLIC


def test_scopes_are_configurable_and_must_name_atproto_in_the_metadata() -> None:
    meta = ClientIdentity(settings(bluesky_oauth_scope="atproto  transition:chat.bsky")).metadata()
    assert meta["scope"] == "atproto transition:chat.bsky"


def test_a_loopback_public_url_is_the_development_client_without_client_authentication() -> None:
    client = ClientIdentity(settings(public_url="http://127.0.0.1:8000", bluesky_oauth_keys=None))

    assert client.loopback and client.missing() == []
    assert client.client_id.startswith("http://localhost?")
    query = parse_qs(client.client_id.split("?", 1)[1])
    assert query == {"redirect_uri": ["http://127.0.0.1:8000/oauth/callback"], "scope": ["atproto transition:generic"]}
    assert client.auth_fields(ISSUER) == {"client_id": client.client_id}
    # the redirect URI of a loopback client names 127.0.0.1, never localhost
    named = ClientIdentity(settings(public_url="http://localhost:8000", bluesky_oauth_keys=None))
    assert named.loopback and named.redirect_uri == "http://127.0.0.1:8000/oauth/callback"


def test_a_confidential_client_names_what_it_still_needs() -> None:
    assert ClientIdentity(settings(bluesky_oauth_keys=None)).missing() == ["BLUESKY_OAUTH_KEYS"]
    assert ClientIdentity(settings(public_url="http://accounts.example.com")).missing() == ["PUBLIC_URL (https)"]
    assert ClientIdentity(settings()).missing() == []


def test_the_client_assertion_carries_the_claims_the_spec_asks_for() -> None:
    client = ClientIdentity(settings())
    public = KeySet.import_key_set(client.jwks())

    fields = client.auth_fields(ISSUER)
    again = client.auth_fields(ISSUER)

    assert fields["client_id"] == METADATA_URL and fields["client_assertion_type"] == ASSERTION_TYPE
    token = jwt.decode(fields["client_assertion"], public, algorithms=["ES256"])
    claims = token.claims
    assert claims["iss"] == claims["sub"] == METADATA_URL
    assert claims["aud"] == ISSUER
    assert isinstance(claims["jti"], str) and len(claims["jti"]) >= 16
    assert claims["jti"] != jwt.decode(again["client_assertion"], public, algorithms=["ES256"]).claims["jti"]
    assert 0 < claims["exp"] - claims["iat"] <= 300
    assert abs(claims["iat"] - datetime.now(UTC).timestamp()) < 120
    assert token.header["alg"] == "ES256" and token.header["kid"] == "k-new"


def test_key_rotation_lists_every_key_and_the_first_one_signs() -> None:
    client = ClientIdentity(settings())
    new, old = parse_signing_keys(f"{KEY_1},{KEY_2}")

    jwks = client.jwks()
    assert [key["kid"] for key in jwks["keys"]] == ["k-new", "k-old"]
    assert all("d" not in key and key["kty"] == "EC" and key["crv"] == "P-256" for key in jwks["keys"])

    assertion = client.assertion(ISSUER)
    assert claims_of(assertion, new)["aud"] == ISSUER
    with pytest.raises(BadSignatureError):
        claims_of(assertion, old)


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ("nocolon", "malformed"),
        ("k1:!!!", "k1"),
        ("k1:" + b64url_encode(b"short"), "k1"),
        (f"{KEY_1},{KEY_1}", "twice"),
    ],
)
def test_malformed_signing_keys_are_refused_naming_the_key_id_only(raw: str, named: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_signing_keys(raw)
    assert named in str(refused.value)
    assert raw.partition(":")[2] not in str(refused.value) or len(raw.partition(":")[2]) < 8


def test_the_client_documents_are_served_at_their_urls() -> None:
    from types import SimpleNamespace

    from starlette.applications import Starlette
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from web_callback import bluesky_client

    app = Starlette(
        routes=[
            Route("/oauth/bluesky/client-metadata.json", bluesky_client.client_metadata),
            Route("/oauth/bluesky/jwks.json", bluesky_client.jwks),
        ]
    )
    app.state.services = SimpleNamespace(settings=settings())
    with TestClient(app) as client:
        assert client.get("/oauth/bluesky/client-metadata.json").json()["client_id"] == METADATA_URL
        assert [k["kid"] for k in client.get("/oauth/bluesky/jwks.json").json()["keys"]] == ["k-new", "k-old"]
        app.state.services = SimpleNamespace(settings=settings(bluesky_oauth_keys="broken"))
        refused = client.get("/oauth/bluesky/jwks.json")
        assert refused.status_code == 503 and "BLUESKY_OAUTH_KEYS" in refused.text


# ---- DPoP ---------------------------------------------------------------------------------------


def test_a_dpop_proof_carries_htm_htu_iat_jti_nonce_and_ath() -> None:
    key = dpop.new_key()
    proof = dpop.make_proof(
        key, "post", "https://pds.example/xrpc/a.b.c?actor=x#frag", nonce="n-1", access_token="tok", now=1_700_000_000
    )

    header = header_of(proof)
    assert header["typ"] == "dpop+jwt" and header["alg"] == "ES256"
    assert "d" not in header["jwk"] and header["jwk"]["x"] == key.as_dict(private=False)["x"]
    claims = claims_of(proof, key)
    assert claims["htm"] == "POST"
    assert claims["htu"] == "https://pds.example/xrpc/a.b.c"  # no query, no fragment
    assert claims["iat"] == 1_700_000_000 and claims["nonce"] == "n-1"
    assert claims["ath"] == b64url_encode(hashlib.sha256(b"tok").digest())
    other = dpop.make_proof(key, "POST", "https://pds.example/x")
    assert claims_of(other, key)["jti"] != claims["jti"]
    assert "nonce" not in claims_of(other, key) and "ath" not in claims_of(other, key)


def test_a_session_key_survives_export_and_import() -> None:
    key = dpop.new_key()
    again = dpop.import_key(dpop.export_key(key))
    assert claims_of(dpop.make_proof(again, "GET", "https://x.example/"), key)["htm"] == "GET"


def guard() -> Any:
    from platforms.netguard import NetGuard

    return NetGuard(allow_private=False, resolver=lambda host, port: ["93.184.216.34"], platform="bluesky")


def test_use_dpop_nonce_is_retried_once_with_the_new_nonce_and_kept_per_server() -> None:
    seen: list[dict[str, Any]] = []
    key = dpop.new_key()

    def handler(request: httpx.Request) -> httpx.Response:
        claims = claims_of(request.headers["dpop"], key)
        seen.append(claims)
        if claims.get("nonce") != "fresh":
            return httpx.Response(400, json={"error": "use_dpop_nonce"}, headers={"DPoP-Nonce": "fresh"})
        return httpx.Response(200, json={"ok": True}, headers={"DPoP-Nonce": "fresh"})

    nonces = dpop.NonceStore()
    with httpx.Client(transport=httpx.MockTransport(handler)) as http:
        answer = dpop.dpop_send(
            http, "POST", ISSUER + "/oauth/par", key, guard=guard(), platform="bluesky", nonces=nonces
        )
        assert answer.status_code == 200
        assert [c.get("nonce") for c in seen] == [None, "fresh"]
        assert nonces.get(ISSUER + "/anything") == "fresh" and nonces.get(PDS) is None

        # the server rotates its nonce: one refusal, one retry with the new one, never more
        nonces.put(ISSUER, "stale")
        dpop.dpop_send(http, "POST", ISSUER + "/oauth/token", key, guard=guard(), platform="bluesky", nonces=nonces)
        assert [c.get("nonce") for c in seen[2:]] == ["stale", "fresh"]


def test_a_resource_server_nonce_demand_is_retried_and_a_second_refusal_is_final() -> None:
    key = dpop.new_key()
    calls: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append({"auth": request.headers["authorization"], **claims_of(request.headers["dpop"], key)})
        return httpx.Response(
            401,
            headers={"WWW-Authenticate": 'DPoP error="use_dpop_nonce"', "DPoP-Nonce": f"n{len(calls)}"},
            json={"error": "use_dpop_nonce"},
        )

    with httpx.Client(transport=httpx.MockTransport(handler)) as http, pytest.raises(Permanent):
        dpop.dpop_send(
            http, "GET", PDS + "/xrpc/x.y?z=1", key, guard=guard(), platform="bluesky", access_token="AT",
            nonces=dpop.NonceStore(),
        )  # fmt: skip
    assert len(calls) == 2 and calls[1]["nonce"] == "n1"
    assert all(c["auth"] == "DPoP AT" and c["ath"] == dpop.access_token_hash("AT") for c in calls)


# ---- requests made for other modules (the adapter's hooks for workers.proxy) ---------------------


def oauth_session(key: ECKey) -> Any:
    from social_accounts.values import TokenSet

    metadata = {"auth": "oauth", "did": DID, "pds_url": PDS, "issuer": ISSUER}
    return TokenSet("AT", "RT", scopes=("atproto",), metadata=metadata, dpop_key=dpop.export_key(key))


def test_a_proxied_request_of_an_oauth_session_carries_dpop_with_ath_and_the_pds_nonce() -> None:
    key = dpop.new_key()
    adapter, _ = offline({})
    adapter.oauth.nonces.put(PDS, "n0")
    request = adapter.http.build_request("POST", PDS + "/xrpc/com.atproto.repo.createRecord?x=1", json={"a": 1})

    signed = adapter.authorize_request(request, oauth_session(key))

    assert signed.headers["authorization"] == "DPoP AT"
    claims = claims_of(signed.headers["dpop"], key)  # signed by the session's own key
    assert (claims["htm"], claims["htu"]) == ("POST", PDS + "/xrpc/com.atproto.repo.createRecord")
    assert claims["ath"] == dpop.access_token_hash("AT") and claims["nonce"] == "n0"


def test_a_nonce_demand_costs_one_re_signed_retry_and_every_answer_s_nonce_is_kept() -> None:
    key = dpop.new_key()
    adapter, _ = offline({})
    tokens = oauth_session(key)
    request = adapter.authorize_request(
        adapter.http.build_request("POST", PDS + "/xrpc/com.atproto.repo.createRecord", json={"a": 1}), tokens
    )
    demand = httpx.Response(
        401,
        headers={"WWW-Authenticate": 'DPoP error="use_dpop_nonce"', "DPoP-Nonce": "n1"},
        json={"error": "use_dpop_nonce"},
        request=request,
    )

    again = adapter.retry_authorization(request, demand, tokens)

    assert again is not None and again is not request
    assert (again.method, again.url, again.content) == (request.method, request.url, request.content)
    retried = claims_of(again.headers["dpop"], key)
    assert retried["nonce"] == "n1" and retried["jti"] != claims_of(request.headers["dpop"], key)["jti"]
    assert again.headers["authorization"] == "DPoP AT" and retried["ath"] == dpop.access_token_hash("AT")
    assert not adapter.token_rejected(demand)  # a new token would not help: no refresh for it

    # a success needs no second try, but its nonce is the next request's
    ok = httpx.Response(200, headers={"DPoP-Nonce": "n2"}, json={}, request=again)
    assert adapter.retry_authorization(again, ok, tokens) is None
    assert adapter.oauth.nonces.get(PDS) == "n2"
    # an expired token is another matter: the proxy refreshes once for it
    expired = httpx.Response(
        401, headers={"WWW-Authenticate": 'DPoP error="invalid_token"'}, json={"error": "invalid_token"}
    )
    assert adapter.retry_authorization(again, expired, tokens) is None and adapter.token_rejected(expired)


def test_an_app_password_session_stays_bearer_and_a_session_without_its_key_is_refused() -> None:
    from social_accounts.values import TokenSet

    adapter, _ = offline({})
    app_password = TokenSet("jwt", "rt", scopes=("com.atproto.appPass",), metadata={"did": DID, "pds_url": PDS})
    request = adapter.authorize_request(adapter.http.build_request("GET", PDS + "/xrpc/x"), app_password)
    assert request.headers["authorization"] == "Bearer jwt" and "dpop" not in request.headers
    demand = httpx.Response(401, headers={"WWW-Authenticate": 'DPoP error="use_dpop_nonce"'})
    assert adapter.retry_authorization(request, demand, app_password) is None

    keyless = oauth_session(dpop.new_key()).replace(dpop_key=None)
    with pytest.raises(NeedsReconnect):
        adapter.authorize_request(adapter.http.build_request("GET", PDS + "/xrpc/x"), keyless)


# ---- discovery, exchange, refresh (offline) -----------------------------------------------------

Route = Callable[[httpx.Request], httpx.Response]


def as_metadata(issuer: str = ISSUER) -> dict[str, Any]:
    return {
        "issuer": issuer,
        "authorization_endpoint": ISSUER + "/oauth/authorize",
        "token_endpoint": ISSUER + "/oauth/token",
        "pushed_authorization_request_endpoint": ISSUER + "/oauth/par",
        "revocation_endpoint": ISSUER + "/oauth/revoke",
    }


def offline(routes: dict[str, Route], *, resolver: Any = None, **values: Any) -> tuple[BlueskyAdapter, list[str]]:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.host}{request.url.path}")
        route = routes.get(request.url.host + request.url.path)
        return route(request) if route else httpx.Response(404, json={"error": "not_found"})

    client = httpx.Client(transport=httpx.MockTransport(handler))
    resolve = resolver or (lambda host, port: ["93.184.216.34"])
    adapter = BlueskyAdapter(settings(allow_private_network=False, **values), client, resolver=resolve)
    adapter.oauth.nonces = dpop.NonceStore()
    return adapter, seen


def test_discovery_checks_the_issuer_of_the_authorization_server_metadata() -> None:
    adapter, _ = offline(
        {
            "pds.example/.well-known/oauth-protected-resource": lambda r: httpx.Response(
                200, json={"authorization_servers": [ISSUER]}
            ),
            "auth.example/.well-known/oauth-authorization-server": lambda r: httpx.Response(
                200, json=as_metadata("https://evil.example")
            ),
        }
    )
    assert adapter.oauth.issuer_of(PDS) == ISSUER
    with pytest.raises(Permanent, match="another issuer"):
        adapter.oauth.server(ISSUER)


def test_discovery_goes_through_the_ssrf_guard() -> None:
    adapter, seen = offline(
        {
            "pds.example/.well-known/oauth-protected-resource": lambda r: httpx.Response(
                200, json={"authorization_servers": ["https://internal.example"]}
            ),
        },
        resolver=lambda host, port: ["10.0.0.5"] if host == "internal.example" else ["93.184.216.34"],
    )
    issuer = adapter.oauth.issuer_of(PDS)
    with pytest.raises(UnsafeAddress):
        adapter.oauth.server(issuer)
    assert seen == ["GET pds.example/.well-known/oauth-protected-resource"]  # nothing sent inside


def session(did: str = DID) -> str:
    key = dpop.new_key()
    return json.dumps(
        {"jwk": key.as_dict(private=True), "did": did, "handle": "alice.example", "pds_url": PDS, "issuer": ISSUER}
    )


def token_routes(answer: dict[str, Any], record: list[httpx.Request] | None = None) -> dict[str, Route]:
    def token(request: httpx.Request) -> httpx.Response:
        if record is not None:
            record.append(request)
        return httpx.Response(200, json=answer)

    return {
        "auth.example/.well-known/oauth-authorization-server": lambda r: httpx.Response(200, json=as_metadata()),
        "auth.example/oauth/token": token,
    }


GOOD = {
    "access_token": "AT",
    "refresh_token": "RT",
    "token_type": "DPoP",
    "sub": DID,
    "scope": "atproto transition:generic",
    "expires_in": 3600,
}


def test_the_exchange_sends_pkce_dpop_and_the_client_assertion_and_checks_sub() -> None:
    sent: list[httpx.Request] = []
    adapter, _ = offline(token_routes(GOOD, sent))
    made = session()

    tokens = adapter.exchange_oauth_code(code="C", code_verifier="V", session=made)

    form = parse_qs(sent[0].content.decode())
    assert form["grant_type"] == ["authorization_code"] and form["code"] == ["C"] and form["code_verifier"] == ["V"]
    assert form["client_assertion_type"] == [ASSERTION_TYPE] and form["client_id"] == [METADATA_URL]
    key = ECKey.import_key(json.loads(made)["jwk"])
    assert claims_of(sent[0].headers["dpop"], key)["htu"] == ISSUER + "/oauth/token"
    assert (tokens.access_token, tokens.refresh_token, tokens.metadata["did"]) == ("AT", "RT", DID)
    assert tokens.metadata["auth"] == "oauth" and tokens.metadata["issuer"] == ISSUER
    assert tokens.dpop_key and json.loads(tokens.dpop_key)["d"] == json.loads(made)["jwk"]["d"]
    assert "dpop_key" not in json.dumps(tokens.metadata) and "<redacted>" in repr(tokens)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"sub": "did:plc:zzzzzzzzzzzzzzzzzzzzzzzz"}, "another account"),
        ({"token_type": "Bearer"}, "DPoP"),
        ({"scope": "transition:generic"}, "atproto"),
    ],
)
def test_a_token_answer_for_another_account_or_unbound_is_refused(change: dict[str, Any], why: str) -> None:
    adapter, _ = offline(token_routes({**GOOD, **change}))
    with pytest.raises(Permanent, match=why):
        adapter.exchange_oauth_code(code="C", code_verifier="V", session=session())


def test_a_refused_refresh_needs_reconnect_and_a_good_one_rotates() -> None:
    adapter, _ = offline(token_routes({**GOOD, "access_token": "AT2", "refresh_token": "RT2"}))
    first = adapter.exchange_oauth_code(code="C", code_verifier="V", session=session())
    assert first.refresh_token == "RT2"
    fresh = adapter.refresh(first.replace(refresh_token="RT-old"))
    assert (fresh.refresh_token, fresh.dpop_key) == ("RT2", first.dpop_key)

    refused, _ = offline(
        {
            **token_routes(GOOD),
            "auth.example/oauth/token": lambda r: httpx.Response(400, json={"error": "invalid_grant"}),
        }
    )
    with pytest.raises(NeedsReconnect):
        refused.refresh(first)


# ---- the callback's iss check -------------------------------------------------------------------


def test_the_state_carries_the_issuer_and_the_callback_checks_iss() -> None:
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=5)
    token = sign_state(SignedState("a" * 36, "bluesky", expires, None, issuer=ISSUER), "secret")
    state = verify_state(token, "secret")
    assert state.issuer == ISSUER

    check_issuer(state, {"iss": ISSUER, "code": "c"})
    for params in ({"code": "c"}, {"iss": "https://evil.example", "code": "c"}):
        with pytest.raises(InputError) as refused:
            check_issuer(state, params)
        assert refused.value.code == "state_invalid"
    plain = verify_state(sign_state(SignedState("b" * 36, "twitter", expires), "secret"), "secret")
    check_issuer(plain, {"code": "c"})  # other platforms send no iss


# ---- doctor -------------------------------------------------------------------------------------


def test_doctor_names_what_the_bluesky_oauth_path_still_needs() -> None:
    from service.doctor import Check, check_bluesky_oauth

    def checked(**values: Any) -> Check:
        out: list[Check] = []
        check_bluesky_oauth(settings(**values), out)
        [check] = out
        return check

    assert checked().status == "ok" and "k-new" in checked().detail and METADATA_URL in checked().items
    missing = checked(bluesky_oauth_keys=None)
    assert (missing.status, missing.items) == ("info", ["BLUESKY_OAUTH_KEYS"])
    assert checked(public_url="http://127.0.0.1:8000").detail.startswith("loopback development client")
    broken = checked(bluesky_oauth_keys="k1:" + b64url_encode(b"short"))
    assert broken.status == "fail" and "k1" in broken.detail


def test_the_pushed_request_carries_pkce_state_login_hint_and_the_browser_gets_only_two_parameters() -> None:
    from platforms.bluesky_oauth import AuthServer

    pushed: list[httpx.Request] = []

    def par(request: httpx.Request) -> httpx.Response:
        pushed.append(request)
        if len(pushed) == 1:
            return httpx.Response(400, json={"error": "use_dpop_nonce"}, headers={"DPoP-Nonce": "n"})
        return httpx.Response(201, json={"request_uri": "urn:ietf:params:oauth:request_uri:abc", "expires_in": 299})

    adapter, _ = offline({"auth.example/oauth/par": par})
    server = AuthServer(ISSUER, ISSUER + "/oauth/authorize", ISSUER + "/oauth/token", ISSUER + "/oauth/par")

    started = adapter.oauth.start(
        did=DID, handle="alice.example", pds_url=PDS, server=server, state="signed-state", code_challenge="CH"
    )

    form = parse_qs(pushed[1].content.decode())
    assert form["code_challenge"] == ["CH"] and form["code_challenge_method"] == ["S256"]
    assert form["state"] == ["signed-state"] and form["login_hint"] == ["alice.example"]
    assert form["response_type"] == ["code"] and form["scope"] == ["atproto transition:generic"]
    assert form["client_assertion_type"] == [ASSERTION_TYPE]
    url, query = started.authorization_url.split("?", 1)
    assert url == ISSUER + "/oauth/authorize"
    assert parse_qs(query) == {"client_id": [METADATA_URL], "request_uri": ["urn:ietf:params:oauth:request_uri:abc"]}
    facts = json.loads(started.session)
    assert (facts["did"], facts["issuer"], facts["pds_url"]) == (DID, ISSUER, PDS) and "d" in facts["jwk"]
    # both pushes were signed by the session's key, the second with the server's nonce
    key = ECKey.import_key(facts["jwk"])
    assert [claims_of(r.headers["dpop"], key).get("nonce") for r in pushed] == [None, "n"]
