"""Bluesky adapter: against the real reference PDS (``@pytest.mark.pds``) and, for what a local
PDS cannot be made to do (an AppView, 429s, 5xx, did:web), against httpx.MockTransport."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import dns.resolver
import httpx
import pytest

from platforms.bluesky import BlueskyAdapter, jwt_expiry, parse_handle
from social_accounts.errors import (
    AccessTokenExpired,
    AppPasswordRequired,
    LoginFailed,
    NeedsReconnect,
    Permanent,
    RateLimited,
    RequestMaybeSent,
    Transient,
    UnsafeAddress,
)
from social_accounts.settings import Settings
from social_accounts.values import TokenSet
from tests.peers.pds import PdsPeer
from tests.platform_support import assert_no_secret, assert_transient

# ---- helpers ---------------------------------------------------------------------------------


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def fake_jwt(exp: float, scope: str = "com.atproto.appPass") -> str:
    def enc(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return enc({"alg": "HS256", "typ": "at+jwt"}) + "." + enc({"exp": int(exp), "scope": scope}) + ".c2ln"


def no_txt(name: str) -> list[str]:
    """A DNS with no ``_atproto`` records (tests never ask the real DNS)."""
    raise dns.resolver.NXDOMAIN


def txt_table(records: dict[str, list[str]]) -> Any:
    def lookup(name: str) -> list[str]:
        if name not in records:
            raise dns.resolver.NXDOMAIN
        return records[name]

    return lookup


class Recording(httpx.BaseTransport):
    """The real transport, keeping the JSON answers of one XRPC method (to see tokens we refuse)."""

    def __init__(self, nsid: str) -> None:
        self.inner, self.nsid, self.answers = httpx.HTTPTransport(), nsid, []  # type: list[Any]

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.url.path.endswith(self.nsid):
            response.read()
            self.answers.append(response.json())
        return response

    def close(self) -> None:
        self.inner.close()


# ---- against the real PDS --------------------------------------------------------------------


@pytest.fixture
def bsky(pds: PdsPeer, http: httpx.Client) -> BlueskyAdapter:
    return BlueskyAdapter(
        settings(bluesky_service_url=pds.service_url, bluesky_plc_url=pds.plc_url, allow_private_network=True),
        http,
        txt=no_txt,
    )


def get_session(pds_url: str, access_token: str) -> httpx.Response:
    """An authenticated call that needs no AppView: proves an access token works."""
    return httpx.get(
        pds_url + "/xrpc/com.atproto.server.getSession", headers={"Authorization": f"Bearer {access_token}"}
    )


@pytest.mark.pds
def test_login_resolves_the_pds_and_opens_an_app_password_session(pds: PdsPeer, bsky: BlueskyAdapter) -> None:
    account = pds.create_account()
    before = datetime.now(UTC)
    tokens = bsky.login("@" + account.handle.upper(), account.app_password)

    resolved_at = datetime.fromisoformat(tokens.metadata.pop("pds_resolved_at"))
    assert tokens.metadata == {"did": account.did, "handle": account.handle, "pds_url": pds.service_url}
    assert before <= resolved_at <= datetime.now(UTC)
    assert tokens.scopes == ("com.atproto.appPass",)
    assert tokens.expires_at is not None and tokens.refresh_expires_at is not None
    assert timedelta(minutes=115) < tokens.expires_at - before < timedelta(minutes=125)
    assert timedelta(days=89) < tokens.refresh_expires_at - before < timedelta(days=91)
    assert get_session(pds.service_url, tokens.access_token).json()["did"] == account.did
    assert account.app_password not in repr(tokens) and tokens.access_token not in repr(tokens)


@pytest.mark.pds
def test_login_accepts_a_did(pds: PdsPeer, bsky: BlueskyAdapter) -> None:
    account = pds.create_account()
    tokens = bsky.login(account.did, account.app_password)
    assert tokens.metadata["did"] == account.did


@pytest.mark.pds
def test_the_main_password_is_refused_and_its_session_deleted(pds: PdsPeer) -> None:
    account = pds.create_account()
    recording = Recording("com.atproto.server.createSession")
    config = settings(bluesky_service_url=pds.service_url, bluesky_plc_url=pds.plc_url, allow_private_network=True)
    with httpx.Client(transport=recording) as client:
        adapter = BlueskyAdapter(config, client, txt=no_txt)
        with pytest.raises(AppPasswordRequired) as caught:
            adapter.login(account.handle, account.password)

    assert caught.value.kind == "app_password_required" and isinstance(caught.value, LoginFailed)
    assert caught.value.code == "com.atproto.access"
    assert "app password" in caught.value.message
    assert_no_secret(caught.value, account.password)
    # the PDS did open a full-scope session; it must be gone already
    [opened] = recording.answers
    refreshed = httpx.post(
        pds.service_url + "/xrpc/com.atproto.server.refreshSession",
        headers={"Authorization": f"Bearer {opened['refreshJwt']}"},
    )
    assert (refreshed.status_code, refreshed.json()["error"]) == (400, "ExpiredToken")


@pytest.mark.pds
def test_a_privileged_app_password_is_accepted(pds: PdsPeer, bsky: BlueskyAdapter) -> None:
    account = pds.create_account()
    with httpx.Client(base_url=pds.service_url + "/xrpc") as client:
        main = client.post(
            "/com.atproto.server.createSession", json={"identifier": account.did, "password": account.password}
        ).json()
        privileged = client.post(
            "/com.atproto.server.createAppPassword",
            json={"name": "privileged", "privileged": True},
            headers={"Authorization": f"Bearer {main['accessJwt']}"},
        ).json()["password"]
    assert bsky.login(account.handle, privileged).scopes == ("com.atproto.appPassPrivileged",)


@pytest.mark.pds
def test_a_deactivated_account_needs_a_reconnect_with_its_status(pds: PdsPeer, bsky: BlueskyAdapter) -> None:
    account = pds.create_account()
    tokens = bsky.login(account.handle, account.app_password)
    with httpx.Client(base_url=pds.service_url + "/xrpc") as client:
        main = client.post(
            "/com.atproto.server.createSession", json={"identifier": account.did, "password": account.password}
        ).json()
        client.post(
            "/com.atproto.server.deactivateAccount", json={}, headers={"Authorization": f"Bearer {main['accessJwt']}"}
        ).raise_for_status()

    with pytest.raises(NeedsReconnect) as caught:
        bsky.refresh(tokens)
    assert caught.value.code == "deactivated"
    assert "deactivated" in caught.value.message


@pytest.mark.pds
def test_a_handle_published_in_dns_is_verified_against_the_plc_document(pds: PdsPeer, http: httpx.Client) -> None:
    account = pds.create_account()
    # the configured service cannot resolve handles: only the DNS record (and the PLC document) can
    config = settings(bluesky_service_url=unused_service(), bluesky_plc_url=pds.plc_url, allow_private_network=True)
    found = BlueskyAdapter(config, http, txt=txt_table({f"_atproto.{account.handle}": [f"did={account.did}"]}))
    assert found.login(account.handle, account.app_password).metadata["did"] == account.did

    other = pds.create_account()  # a DNS record pointing the handle at someone else's DID
    lying = BlueskyAdapter(config, http, txt=txt_table({f"_atproto.{account.handle}": [f"did={other.did}"]}))
    with pytest.raises(LoginFailed) as caught:
        lying.login(account.handle, other.app_password)
    assert "alsoKnownAs" in caught.value.message


def unused_service() -> str:
    from tests.fakeplatform.core import unused_port_url

    return unused_port_url()


@pytest.mark.pds
def test_a_wrong_app_password_is_login_failed(pds: PdsPeer, bsky: BlueskyAdapter) -> None:
    account = pds.create_account()
    with pytest.raises(LoginFailed) as caught:
        bsky.login(account.handle, "wrong-pass-word-1234")
    assert caught.value.status == 401
    assert caught.value.code == "AuthenticationRequired"
    assert_no_secret(caught.value, "wrong-pass-word-1234")


@pytest.mark.pds
def test_an_unknown_handle_is_login_failed(bsky: BlueskyAdapter) -> None:
    with pytest.raises(LoginFailed):
        bsky.login("nobody-here.test", "abcd-efgh-ijkl-mnop")


@pytest.mark.pds
def test_profile_without_an_appview_comes_from_the_profile_record(pds: PdsPeer, bsky: BlueskyAdapter) -> None:
    account = pds.create_account(display_name="Róisín Example", avatar=True)
    tokens = bsky.login(account.handle, account.app_password)

    [profile] = bsky.fetch_accounts(tokens)
    assert profile.platform_account_id == account.did
    assert profile.name == "Róisín Example"
    assert profile.handle == account.handle
    assert profile.refresh_model == "rotate"
    assert (profile.stats.followers, profile.stats.following, profile.stats.posts) == (None, None, None)
    assert profile.avatar_url is not None and profile.avatar_url.startswith(pds.service_url + "/xrpc/")
    assert httpx.get(profile.avatar_url).status_code == 200  # the blob really is there

    assert bsky.fetch_stats(account.did, tokens).followers is None
    with pytest.raises(Permanent):
        bsky.fetch_stats("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", tokens)


@pytest.mark.pds
def test_an_account_without_a_profile_record_still_connects(pds: PdsPeer, bsky: BlueskyAdapter) -> None:
    account = pds.create_account(display_name=None)
    [profile] = bsky.fetch_accounts(bsky.login(account.handle, account.app_password))
    assert profile.platform_account_id == account.did
    assert profile.name is None and profile.avatar_url is None


@pytest.mark.pds
def test_refresh_rotates_and_the_old_refresh_token_has_a_grace_period(pds: PdsPeer, bsky: BlueskyAdapter) -> None:
    account = pds.create_account()
    first = bsky.login(account.handle, account.app_password)

    second = bsky.refresh(first)
    assert second.refresh_token != first.refresh_token
    # (the access JWT carries no jti: within the same second it can come out byte-identical)
    assert second.metadata == first.metadata
    assert get_session(pds.service_url, second.access_token).status_code == 200

    # Observed on @atproto/pds 0.5.x: reusing the spent refresh token within the 2-hour grace
    # period succeeds and yields the same next refresh token (same jti), so a retry after a lost
    # answer is harmless.
    again = bsky.refresh(first)
    assert again.refresh_token is not None
    assert json.loads(base64.urlsafe_b64decode(again.refresh_token.split(".")[1] + "==")).get("jti") == json.loads(
        base64.urlsafe_b64decode(second.refresh_token.split(".")[1] + "==")  # type: ignore[union-attr]
    ).get("jti")

    third = bsky.refresh(second)
    assert third.refresh_token not in (first.refresh_token, second.refresh_token)


@pytest.mark.pds
def test_an_expired_access_token_asks_for_a_refresh(pds: PdsPeer, bsky: BlueskyAdapter) -> None:
    account = pds.create_account()
    tokens = bsky.login(account.handle, account.app_password)
    expired = tokens.replace(access_token=pds.mint_access_token(account.did, expires_in=-60))
    with pytest.raises(AccessTokenExpired) as caught:
        bsky.fetch_accounts(expired)
    assert (caught.value.status, caught.value.code) == (400, "ExpiredToken")

    # and the refresh it asks for works
    fresh = bsky.refresh(expired)
    assert bsky.fetch_accounts(fresh)[0].platform_account_id == account.did


@pytest.mark.pds
def test_a_minted_valid_token_is_accepted(pds: PdsPeer, bsky: BlueskyAdapter) -> None:
    """Guards the test above: the minted token fails for its expiry, not for its shape."""
    account = pds.create_account()
    assert get_session(pds.service_url, pds.mint_access_token(account.did, expires_in=600)).status_code == 200


@pytest.mark.pds
def test_a_revoked_session_needs_a_reconnect(pds: PdsPeer, bsky: BlueskyAdapter) -> None:
    account = pds.create_account()
    tokens = bsky.login(account.handle, account.app_password)
    assert bsky.revoke(tokens) == "revoked"
    with pytest.raises(NeedsReconnect) as caught:
        bsky.refresh(tokens)
    assert caught.value.code == "ExpiredToken"
    assert bsky.revoke(tokens) == "revoked"  # revoking again is harmless


@pytest.mark.pds
def test_the_pds_is_refused_without_private_network(pds: PdsPeer, http: httpx.Client) -> None:
    adapter = BlueskyAdapter(settings(bluesky_service_url=pds.service_url, bluesky_plc_url=pds.plc_url), http)
    with pytest.raises(UnsafeAddress):
        adapter.login("someone.test", "abcd-efgh-ijkl-mnop")


# ---- offline (MockTransport) ------------------------------------------------------------------

DID = "did:plc:abcdefghijklmnopqrstuvwx"
PDS_URL = "https://pds.example"
SERVICE = "https://entry.example"
PLC = "https://plc.example"


def did_doc(did: str = DID, endpoint: str = PDS_URL) -> dict[str, Any]:
    return {
        "@context": ["https://www.w3.org/ns/did/v1"],
        "id": did,
        "alsoKnownAs": ["at://alice.example"],
        "verificationMethod": [],
        "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": endpoint}],
    }


Route = Callable[[httpx.Request], httpx.Response]


def offline(
    routes: dict[str, Route | httpx.Response], *, txt: Any = no_txt, resolver: Any = None, **values: Any
) -> tuple[BlueskyAdapter, list[str]]:
    """An adapter whose HTTP goes to ``routes`` keyed by ``host + path``; the log of calls."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        key = request.url.host + request.url.path
        seen.append(key)
        route = routes.get(key)
        if route is None:
            return httpx.Response(404, json={"error": "XRPCNotSupported", "message": "not here"})
        return route(request) if callable(route) else route

    config = {"bluesky_service_url": SERVICE, "bluesky_plc_url": PLC, "allow_private_network": False, **values}
    client = httpx.Client(transport=httpx.MockTransport(handler))
    resolve = resolver or (lambda host, port: ["93.184.216.34"])
    return BlueskyAdapter(settings(**config), client, resolver=resolve, txt=txt), seen


def login_routes(**overrides: Route | httpx.Response) -> dict[str, Route | httpx.Response]:
    now = datetime.now(UTC).timestamp()
    routes: dict[str, Route | httpx.Response] = {
        "entry.example/xrpc/com.atproto.identity.resolveHandle": httpx.Response(200, json={"did": DID}),
        f"plc.example/{DID}": httpx.Response(200, json=did_doc()),
        "pds.example/xrpc/com.atproto.server.createSession": httpx.Response(
            200,
            json={
                "did": DID,
                "handle": "alice.example",
                "accessJwt": fake_jwt(now + 7200),
                "refreshJwt": fake_jwt(now + 90 * 86400, scope="com.atproto.refresh"),
                "active": True,
            },
        ),
    }
    routes.update(overrides)
    return routes


def session(**metadata: Any) -> TokenSet:
    now = datetime.now(UTC).timestamp()
    return TokenSet(
        access_token=fake_jwt(now + 3600),
        refresh_token=fake_jwt(now + 86400, scope="com.atproto.refresh"),
        metadata={
            "did": DID,
            "handle": "alice.example",
            "pds_url": PDS_URL,
            "pds_resolved_at": datetime.now(UTC).isoformat(),
            **metadata,
        },
    )


@pytest.mark.unit
def test_login_goes_to_the_pds_named_in_the_did_document() -> None:
    adapter, seen = offline(login_routes())
    tokens = adapter.login("Alice.Example", "app-pass-word")
    assert sorted(seen[:2]) == [
        "alice.example/.well-known/atproto-did",  # asked at the same time as DNS: no answer
        "entry.example/xrpc/com.atproto.identity.resolveHandle",  # so the fallback
    ]
    assert seen[2:] == [f"plc.example/{DID}", "pds.example/xrpc/com.atproto.server.createSession"]
    assert tokens.metadata["pds_url"] == PDS_URL and tokens.metadata["did"] == DID


@pytest.mark.unit
def test_login_uses_did_web_documents() -> None:
    web_did = "did:web:alice.example"
    routes = login_routes()
    routes["entry.example/xrpc/com.atproto.identity.resolveHandle"] = httpx.Response(200, json={"did": web_did})
    routes["alice.example/.well-known/did.json"] = httpx.Response(200, json=did_doc(web_did))
    created = routes["pds.example/xrpc/com.atproto.server.createSession"]
    assert isinstance(created, httpx.Response)
    routes["pds.example/xrpc/com.atproto.server.createSession"] = httpx.Response(
        200, json={**json.loads(created.content), "did": web_did}
    )
    adapter, seen = offline(routes)
    assert adapter.login("alice.example", "app-pass-word").metadata["did"] == web_did
    assert "alice.example/.well-known/did.json" in seen


@pytest.mark.unit
def test_a_did_document_for_another_did_is_refused() -> None:
    adapter, seen = offline(
        login_routes(**{f"plc.example/{DID}": httpx.Response(200, json=did_doc("did:plc:" + "z" * 24))})
    )
    with pytest.raises(LoginFailed):
        adapter.login("alice.example", "app-pass-word")
    assert not any("createSession" in s for s in seen)


@pytest.mark.unit
def test_a_did_document_without_a_pds_is_refused() -> None:
    doc = {**did_doc(), "service": []}
    adapter, _ = offline(login_routes(**{f"plc.example/{DID}": httpx.Response(200, json=doc)}))
    with pytest.raises(LoginFailed):
        adapter.login("alice.example", "app-pass-word")


@pytest.mark.unit
def test_a_pds_on_a_private_address_is_refused_before_the_password_is_sent() -> None:
    doc = did_doc(endpoint="https://10.0.0.5")
    adapter, seen = offline(login_routes(**{f"plc.example/{DID}": httpx.Response(200, json=doc)}))
    with pytest.raises(UnsafeAddress):
        adapter.login("alice.example", "app-pass-word")
    assert not any("createSession" in s for s in seen)


def created(scope: str = "com.atproto.appPass", **extra: Any) -> httpx.Response:
    now = datetime.now(UTC).timestamp()
    body = {
        "did": DID,
        "handle": "alice.example",
        "accessJwt": fake_jwt(now + 7200, scope=scope),
        "refreshJwt": fake_jwt(now + 90 * 86400, scope="com.atproto.refresh"),
        "active": True,
        **extra,
    }
    return httpx.Response(200, json=body)


def test_a_full_scope_session_is_deleted_and_refused() -> None:
    deleted: list[str] = []

    def delete(request: httpx.Request) -> httpx.Response:
        deleted.append(request.headers["authorization"])
        return httpx.Response(200)

    adapter, seen = offline(
        login_routes(
            **{
                "pds.example/xrpc/com.atproto.server.createSession": created(scope="com.atproto.access"),
                "pds.example/xrpc/com.atproto.server.deleteSession": delete,
            }
        )
    )
    with pytest.raises(AppPasswordRequired) as caught:
        adapter.login("alice.example", "main-password")
    assert seen[-1] == "pds.example/xrpc/com.atproto.server.deleteSession"
    assert len(deleted) == 1 and "com.atproto.refresh" in str(jwt_claims_of(deleted[0][len("Bearer ") :]))
    assert caught.value.kind == "app_password_required"


def test_a_session_without_a_scope_is_refused_too() -> None:
    adapter, seen = offline(login_routes(**{"pds.example/xrpc/com.atproto.server.createSession": created(scope="")}))
    with pytest.raises(AppPasswordRequired):
        adapter.login("alice.example", "main-password")
    assert seen[-1] == "pds.example/xrpc/com.atproto.server.deleteSession"  # tried even though it answers 404


def jwt_claims_of(token: str) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))


@pytest.mark.parametrize("status", ["takendown", "suspended", "deactivated"])
def test_an_inactive_account_on_refresh_needs_a_reconnect(status: str) -> None:
    now = datetime.now(UTC).timestamp()
    answer = httpx.Response(
        200,
        json={
            "did": DID,
            "handle": "alice.example",
            "accessJwt": fake_jwt(now + 7200),
            "refreshJwt": fake_jwt(now + 86400, scope="com.atproto.refresh"),
            "active": False,
            "status": status,
        },
    )
    adapter, seen = offline(
        {
            "pds.example/xrpc/com.atproto.server.refreshSession": answer,
            f"plc.example/{DID}": httpx.Response(200, json=did_doc()),  # still at the same PDS: not moved
        }
    )
    with pytest.raises(NeedsReconnect) as caught:
        adapter.refresh(session())
    assert (caught.value.code, caught.value.message) == (status, f"the Bluesky account is {status}")
    assert f"plc.example/{DID}" in seen


def test_account_takedown_on_refresh_names_the_status() -> None:
    answer = httpx.Response(400, json={"error": "AccountTakedown", "message": "Account has been taken down"})
    adapter, _ = offline({"pds.example/xrpc/com.atproto.server.refreshSession": answer})
    with pytest.raises(NeedsReconnect) as caught:
        adapter.refresh(session())
    assert caught.value.code == "AccountTakedown" and "takendown" in caught.value.message


# ---- handle resolution -------------------------------------------------------------------------


def test_a_handle_resolves_by_dns_txt_without_the_service() -> None:
    adapter, seen = offline(login_routes(), txt=txt_table({"_atproto.alice.example": [f"did={DID}"]}))
    assert adapter.login("alice.example", "app-pass-word").metadata["did"] == DID
    assert not any("resolveHandle" in s for s in seen)


def test_a_handle_resolves_by_https_well_known_without_the_service() -> None:
    routes = login_routes(**{"alice.example/.well-known/atproto-did": httpx.Response(200, text=DID + "\n")})
    adapter, seen = offline(routes)
    assert adapter.login("alice.example", "app-pass-word").metadata["did"] == DID
    assert not any("resolveHandle" in s for s in seen)


def test_dns_and_https_naming_different_dids_is_refused() -> None:
    other = "did:plc:" + "b" * 24
    routes = login_routes(**{"alice.example/.well-known/atproto-did": httpx.Response(200, text=other)})
    adapter, seen = offline(routes, txt=txt_table({"_atproto.alice.example": [f"did={DID}"]}))
    with pytest.raises(LoginFailed):
        adapter.login("alice.example", "app-pass-word")
    assert not any("createSession" in s for s in seen)


def test_a_did_document_that_does_not_name_the_handle_is_refused() -> None:
    doc = {**did_doc(), "alsoKnownAs": ["at://mallory.example"]}
    adapter, seen = offline(
        login_routes(**{f"plc.example/{DID}": httpx.Response(200, json=doc)}),
        txt=txt_table({"_atproto.alice.example": [f"did={DID}"]}),
    )
    with pytest.raises(LoginFailed) as caught:
        adapter.login("alice.example", "app-pass-word")
    assert "alsoKnownAs" in caught.value.message
    assert not any("createSession" in s for s in seen)


def test_the_well_known_of_a_handle_on_a_private_address_is_never_fetched() -> None:
    def resolve(host: str, port: int) -> list[str]:
        return ["10.0.0.7"] if host == "alice.example" else ["93.184.216.34"]

    routes = login_routes(**{"alice.example/.well-known/atproto-did": httpx.Response(200, text=DID)})
    adapter, seen = offline(routes, resolver=resolve)
    assert adapter.login("alice.example", "app-pass-word").metadata["did"] == DID  # by the fallback
    assert "alice.example/.well-known/atproto-did" not in seen
    assert "entry.example/xrpc/com.atproto.identity.resolveHandle" in seen


# ---- a moved account ---------------------------------------------------------------------------

NEW_PDS = "https://pds2.example"


def refreshed_at(new_access: str) -> httpx.Response:
    now = datetime.now(UTC).timestamp()
    body = {"did": DID, "accessJwt": new_access, "refreshJwt": fake_jwt(now + 86400, scope="com.atproto.refresh")}
    return httpx.Response(200, json=body)


def test_an_account_that_moved_is_refreshed_at_its_new_pds() -> None:
    now = datetime.now(UTC).timestamp()
    inactive = httpx.Response(
        200,
        json={
            "did": DID,
            "accessJwt": fake_jwt(now + 7200),
            "refreshJwt": fake_jwt(now + 86400, scope="com.atproto.refresh"),
            "active": False,
            "status": "deactivated",
        },
    )
    new_access = fake_jwt(now + 7200, scope="com.atproto.appPass")
    adapter, seen = offline(
        {
            "pds.example/xrpc/com.atproto.server.refreshSession": inactive,
            f"plc.example/{DID}": httpx.Response(200, json=did_doc(endpoint=NEW_PDS)),
            "pds2.example/xrpc/com.atproto.server.refreshSession": refreshed_at(new_access),
        }
    )
    fresh = adapter.refresh(session())
    assert fresh.access_token == new_access
    assert fresh.metadata["pds_url"] == NEW_PDS
    assert seen == [
        "pds.example/xrpc/com.atproto.server.refreshSession",
        f"plc.example/{DID}",
        "pds2.example/xrpc/com.atproto.server.refreshSession",
    ]


@pytest.mark.parametrize("moved", [True, False])
def test_account_not_found_on_refresh_looks_the_pds_up_again(moved: bool) -> None:
    new_access = fake_jwt(datetime.now(UTC).timestamp() + 7200)
    gone = httpx.Response(400, json={"error": "AccountNotFound", "message": "Account not found"})
    adapter, seen = offline(
        {
            "pds.example/xrpc/com.atproto.server.refreshSession": gone,
            f"plc.example/{DID}": httpx.Response(200, json=did_doc(endpoint=NEW_PDS if moved else PDS_URL)),
            "pds2.example/xrpc/com.atproto.server.refreshSession": refreshed_at(new_access),
        }
    )
    if moved:
        assert adapter.refresh(session()).metadata["pds_url"] == NEW_PDS
    else:
        with pytest.raises(NeedsReconnect) as caught:
            adapter.refresh(session())
        assert caught.value.code == "AccountNotFound"
    assert f"plc.example/{DID}" in seen


def test_the_pds_is_looked_up_again_once_a_day() -> None:
    new_access = fake_jwt(datetime.now(UTC).timestamp() + 7200)
    routes: dict[str, Route | httpx.Response] = {
        f"plc.example/{DID}": httpx.Response(200, json=did_doc(endpoint=NEW_PDS)),
        "pds2.example/xrpc/com.atproto.server.refreshSession": refreshed_at(new_access),
        "pds.example/xrpc/com.atproto.server.refreshSession": refreshed_at(new_access),
    }
    adapter, seen = offline(routes)
    stale = session(pds_resolved_at=(datetime.now(UTC) - timedelta(days=1, minutes=1)).isoformat())
    fresh = adapter.refresh(stale)
    assert seen == [f"plc.example/{DID}", "pds2.example/xrpc/com.atproto.server.refreshSession"]
    assert fresh.metadata["pds_url"] == NEW_PDS
    assert datetime.fromisoformat(fresh.metadata["pds_resolved_at"]) > datetime.now(UTC) - timedelta(minutes=1)

    seen.clear()
    adapter.refresh(fresh)  # looked up a moment ago: not again
    assert seen == ["pds2.example/xrpc/com.atproto.server.refreshSession"]


def test_an_unreadable_did_document_keeps_the_known_pds() -> None:
    new_access = fake_jwt(datetime.now(UTC).timestamp() + 7200)
    adapter, seen = offline({"pds.example/xrpc/com.atproto.server.refreshSession": refreshed_at(new_access)})
    stale = session(pds_resolved_at="2020-01-01T00:00:00+00:00")
    fresh = adapter.refresh(stale)
    assert fresh.metadata["pds_url"] == PDS_URL
    assert fresh.metadata["pds_resolved_at"] == "2020-01-01T00:00:00+00:00"  # still due: tried next time
    assert seen == [f"plc.example/{DID}", "pds.example/xrpc/com.atproto.server.refreshSession"]


def test_a_profile_record_of_a_moved_account_is_read_at_its_new_pds() -> None:
    record = {"value": {"$type": "app.bsky.actor.profile", "displayName": "Alice"}}
    adapter, seen = offline(
        {
            "pds.example/xrpc/app.bsky.actor.getProfile": httpx.Response(502, json={"error": "UpstreamFailure"}),
            "pds.example/xrpc/com.atproto.repo.getRecord": httpx.Response(
                400, json={"error": "RepoNotFound", "message": "Could not find repo"}
            ),
            f"plc.example/{DID}": httpx.Response(200, json=did_doc(endpoint=NEW_PDS)),
            "pds2.example/xrpc/com.atproto.repo.getRecord": httpx.Response(200, json=record),
        }
    )
    [profile] = adapter.fetch_accounts(session())
    assert profile.name == "Alice"
    assert "pds2.example/xrpc/com.atproto.repo.getRecord" in seen


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"RateLimit-Reset": "{reset}"}, 120.0),
        ({"Retry-After": "42"}, 42.0),
        ({}, 60.0),
    ],
)
def test_429_waits_as_long_as_the_pds_says(headers: dict[str, str], expected: float) -> None:
    reset = str(int(datetime.now(UTC).timestamp()) + 120)
    answer = httpx.Response(
        429,
        json={"error": "RateLimitExceeded", "message": "Rate Limit Exceeded"},
        headers={k: v.format(reset=reset) for k, v in headers.items()},
    )
    adapter, _ = offline(login_routes(**{"pds.example/xrpc/com.atproto.server.createSession": answer}))
    with pytest.raises(RateLimited) as caught:
        adapter.login("alice.example", "app-pass-word")
    assert caught.value.retry_after == pytest.approx(expected, abs=2)


@pytest.mark.unit
@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_on_refresh_is_transient(status: int) -> None:
    adapter, _ = offline(
        {"pds.example/xrpc/com.atproto.server.refreshSession": httpx.Response(status, json={"error": "InternalError"})}
    )
    error = assert_transient(lambda: adapter.refresh(session()), status=status)
    assert not isinstance(error, NeedsReconnect | AccessTokenExpired)


@pytest.mark.unit
def test_a_connection_failure_is_transient_and_a_lost_answer_maybe_sent() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    def drop(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("no answer", request=request)

    adapter, _ = offline({"pds.example/xrpc/com.atproto.server.refreshSession": refuse})
    assert_transient(lambda: adapter.refresh(session()))
    adapter, _ = offline({"pds.example/xrpc/com.atproto.server.refreshSession": drop})
    with pytest.raises(RequestMaybeSent):
        adapter.refresh(session())


@pytest.mark.unit
def test_an_invalid_refresh_token_needs_a_reconnect() -> None:
    answer = httpx.Response(400, json={"error": "InvalidToken", "message": "Token could not be verified"})
    adapter, _ = offline({"pds.example/xrpc/com.atproto.server.refreshSession": answer})
    with pytest.raises(NeedsReconnect):
        adapter.refresh(session())


@pytest.mark.unit
def test_refresh_sends_the_refresh_token_and_keeps_metadata() -> None:
    now = datetime.now(UTC).timestamp()
    new_access, new_refresh = fake_jwt(now + 7200), fake_jwt(now + 90 * 86400)
    old = session()

    def refreshed(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == f"Bearer {old.refresh_token}"
        return httpx.Response(
            200, json={"did": DID, "handle": "alice2.example", "accessJwt": new_access, "refreshJwt": new_refresh}
        )

    adapter, _ = offline({"pds.example/xrpc/com.atproto.server.refreshSession": refreshed})
    fresh = adapter.refresh(old)
    assert (fresh.access_token, fresh.refresh_token) == (new_access, new_refresh)
    assert {k: fresh.metadata[k] for k in ("did", "handle", "pds_url")} == {
        "did": DID,
        "handle": "alice2.example",
        "pds_url": PDS_URL,
    }
    assert fresh.expires_at == jwt_expiry(new_access)


@pytest.mark.unit
def test_with_an_appview_the_profile_has_counts() -> None:
    view = {
        "did": DID,
        "handle": "alice.example",
        "displayName": "Alice",
        "avatar": "https://cdn.example/a.jpg",
        "followersCount": 12,
        "followsCount": 3,
        "postsCount": 0,
    }
    adapter, seen = offline({"pds.example/xrpc/app.bsky.actor.getProfile": httpx.Response(200, json=view)})
    [profile] = adapter.fetch_accounts(session())
    assert (profile.name, profile.avatar_url) == ("Alice", "https://cdn.example/a.jpg")
    assert (profile.stats.followers, profile.stats.following, profile.stats.posts) == (12, 3, 0)
    assert adapter.fetch_stats(DID, session()).followers == 12
    assert not any("getRecord" in s for s in seen)


@pytest.mark.unit
def test_an_appview_outage_does_not_fail_a_connect_but_does_fail_a_sync() -> None:
    record = {"value": {"$type": "app.bsky.actor.profile", "displayName": "Alice"}}
    adapter, _ = offline(
        {
            "pds.example/xrpc/app.bsky.actor.getProfile": httpx.Response(503, json={"error": "InternalServerError"}),
            "pds.example/xrpc/com.atproto.repo.getRecord": httpx.Response(200, json=record),
        }
    )
    [profile] = adapter.fetch_accounts(session())
    assert profile.name == "Alice" and profile.stats.followers is None
    with pytest.raises(Transient):
        adapter.fetch_stats(DID, session())


@pytest.mark.unit
def test_an_expired_access_token_is_not_mistaken_for_a_missing_appview() -> None:
    adapter, seen = offline(
        {
            "pds.example/xrpc/app.bsky.actor.getProfile": httpx.Response(
                400, json={"error": "ExpiredToken", "message": "Token has expired"}
            )
        }
    )
    with pytest.raises(AccessTokenExpired):
        adapter.fetch_accounts(session())
    assert not any("getRecord" in s for s in seen)


@pytest.mark.unit
def test_a_rate_limited_profile_is_not_mistaken_for_a_missing_appview() -> None:
    adapter, _ = offline(
        {"pds.example/xrpc/app.bsky.actor.getProfile": httpx.Response(429, json={"error": "RateLimitExceeded"})}
    )
    with pytest.raises(RateLimited):
        adapter.fetch_accounts(session())


@pytest.mark.unit
def test_the_redirect_flow_is_not_offered() -> None:
    adapter, seen = offline({})
    with pytest.raises(Permanent):
        adapter.authorization_url(state="s", redirect_uri="https://x.example/cb", code_challenge=None)
    with pytest.raises(Permanent):
        adapter.exchange_code(code="c", redirect_uri="https://x.example/cb", code_verifier=None)
    assert seen == []


@pytest.mark.unit
def test_an_empty_app_password_is_refused_without_a_request() -> None:
    adapter, seen = offline(login_routes())
    with pytest.raises(LoginFailed):
        adapter.login("alice.example", "")
    assert seen == []


@pytest.mark.unit
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("alice.bsky.social", "alice.bsky.social"),
        ("  @Alice.Bsky.Social ", "alice.bsky.social"),
        ("did:plc:abcdefghijklmnopqrstuvwx", "did:plc:abcdefghijklmnopqrstuvwx"),
        ("did:web:example.com", "did:web:example.com"),
    ],
)
def test_parse_handle_accepts(value: str, expected: str) -> None:
    assert parse_handle(value) == expected


@pytest.mark.unit
@pytest.mark.parametrize("value", ["", "alice", "alice..example", "-a.example", "a.1com", "did:plc:short", "x" * 260])
def test_parse_handle_refuses(value: str) -> None:
    with pytest.raises(LoginFailed):
        parse_handle(value)


@pytest.mark.unit
def test_jwt_expiry_reads_exp_and_survives_garbage() -> None:
    assert jwt_expiry(fake_jwt(2_000_000_000)) == datetime.fromtimestamp(2_000_000_000, UTC)
    assert jwt_expiry("not-a-jwt") is None
    assert jwt_expiry("a.!!!.c") is None
