"""The SSRF guard: which addresses are public, which URLs pass, and redirects hop by hop."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from platforms.netguard import MAX_REDIRECTS, NetGuard, Redirected, guarded_send, is_public_address
from social_accounts.errors import Transient, UnsafeAddress

pytestmark = pytest.mark.unit

PUBLIC_V4 = "93.184.216.34"


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", PUBLIC_V4, "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"],
)
def test_public_addresses_pass(address: str) -> None:
    assert is_public_address(address)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # carrier-grade NAT
        "0.0.0.0",
        "224.0.0.1",  # multicast
        "239.255.255.250",
        "255.255.255.255",
        "240.0.0.1",  # reserved
        "192.0.2.10",  # documentation
        "198.18.0.1",  # benchmarking
        "::1",
        "::",
        "fe80::1",
        "fe80::1%eth0",
        "fc00::1",
        "fd12:3456::1",
        "fec0::1",  # site-local (deprecated)
        "ff02::1",
        "2001:db8::1",
        "::ffff:127.0.0.1",  # IPv4-mapped loopback
        "::ffff:169.254.169.254",
        "::ffff:10.0.0.1",
        "::10.0.0.1",  # IPv4-compatible
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "2002:a00:1::1",  # 6to4 of 10.0.0.1
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "not-an-address",
        "",
    ],
)
def test_private_reserved_and_disguised_addresses_are_refused(address: str) -> None:
    assert not is_public_address(address)


def resolver_for(table: dict[str, list[str]]) -> Callable[[str, int], list[str]]:
    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError("Name or service not known")
        return table[host]

    return resolve


def test_an_https_url_to_a_public_host_passes() -> None:
    calls: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> list[str]:
        calls.append((host, port))
        return [PUBLIC_V4, "2606:4700:4700::1111"]

    guard = NetGuard(resolver=resolve)
    assert guard.check_url("https://Example.org:8443/path?q=1") == "https://Example.org:8443/path?q=1"
    assert guard.check_url("https://example.org/") == "https://example.org/"
    assert calls == [("example.org", 8443), ("example.org", 443)]


@pytest.mark.parametrize(
    "url",
    [
        "http://example.org/",
        "ftp://example.org/",
        "file:///etc/passwd",
        "gopher://example.org/",
        "https://user:pw@example.org/",
        "https://example.org@10.0.0.1/",
        "https:///nohost",
        "https://example.org:99999/",
        "https://example.org/" + "a" * 3000,
        "https://127.0.0.1/",
        "https://[::1]/",
        "https://[::ffff:7f00:1]/",
        "https://2130706433/",  # 127.0.0.1 as one integer: not an IP literal here, and not resolvable
    ],
)
def test_unsafe_urls_are_refused(url: str) -> None:
    guard = NetGuard(resolver=resolver_for({"example.org": [PUBLIC_V4]}))
    with pytest.raises((UnsafeAddress, Transient)):
        guard.check_url(url)


def test_every_resolved_address_must_be_public() -> None:
    guard = NetGuard(resolver=resolver_for({"mixed.example": [PUBLIC_V4, "10.1.2.3"]}))
    with pytest.raises(UnsafeAddress):
        guard.check_url("https://mixed.example/")


def test_a_name_resolving_to_a_mapped_ipv6_loopback_is_refused() -> None:
    guard = NetGuard(resolver=resolver_for({"sneaky.example": ["::ffff:127.0.0.1"]}))
    with pytest.raises(UnsafeAddress):
        guard.check_url("https://sneaky.example/")


def test_a_name_that_does_not_resolve_is_transient() -> None:
    guard = NetGuard(resolver=resolver_for({}), platform="mastodon")
    with pytest.raises(Transient) as caught:
        guard.check_url("https://nowhere.example/")
    assert caught.value.platform == "mastodon"
    with pytest.raises(Transient):
        NetGuard(resolver=lambda host, port: []).check_url("https://empty.example/")


@pytest.mark.parametrize("url", ["https://localhost/", "https://2130706433/", "https://0x7f.1/", "https://127.1/"])
def test_the_real_resolver_refuses_loopback_in_any_spelling(url: str) -> None:
    with pytest.raises(UnsafeAddress):
        NetGuard().check_url(url)


def test_private_network_allows_http_and_loopback_but_still_refuses_other_schemes() -> None:
    guard = NetGuard(allow_private=True, resolver=resolver_for({}))
    assert guard.check_url("http://127.0.0.1:8080/x") == "http://127.0.0.1:8080/x"
    assert guard.check_url("http://localhost:1/") == "http://localhost:1/"
    with pytest.raises(UnsafeAddress):
        guard.check_url("file:///etc/passwd")
    with pytest.raises(UnsafeAddress):
        guard.check_url("http://user@127.0.0.1/")


# ---- guarded_send ----------------------------------------------------------------------------

TABLE = {"public.example": [PUBLIC_V4], "next.example": ["8.8.8.8"], "internal.example": ["192.168.0.10"]}


def client_with(routes: dict[str, httpx.Response], seen: list[str]) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return routes.get(str(request.url), httpx.Response(404))

    return httpx.Client(transport=httpx.MockTransport(handler))


def test_a_checked_redirect_to_a_public_host_is_followed() -> None:
    seen: list[str] = []
    client = client_with(
        {
            "https://public.example/a": httpx.Response(301, headers={"location": "https://next.example/b"}),
            "https://next.example/b": httpx.Response(302, headers={"location": "/c"}),
            "https://next.example/c": httpx.Response(200, json={"ok": True}),
        },
        seen,
    )
    guard = NetGuard(resolver=resolver_for(TABLE))
    response = guarded_send(client, "GET", "https://public.example/a", guard=guard, platform="t")
    assert response.json() == {"ok": True}
    assert seen == ["https://public.example/a", "https://next.example/b", "https://next.example/c"]


def test_a_redirect_into_the_private_network_is_refused_before_it_is_requested() -> None:
    seen: list[str] = []
    client = client_with(
        {"https://public.example/a": httpx.Response(302, headers={"location": "https://internal.example/admin"})},
        seen,
    )
    with pytest.raises(UnsafeAddress):
        guarded_send(
            client, "GET", "https://public.example/a", guard=NetGuard(resolver=resolver_for(TABLE)), platform="t"
        )
    assert seen == ["https://public.example/a"]


def test_a_redirect_to_plain_http_or_a_metadata_ip_is_refused() -> None:
    for target in ("http://next.example/", "https://169.254.169.254/latest/meta-data/"):
        seen: list[str] = []
        client = client_with({"https://public.example/a": httpx.Response(307, headers={"location": target})}, seen)
        with pytest.raises(UnsafeAddress):
            guarded_send(
                client, "GET", "https://public.example/a", guard=NetGuard(resolver=resolver_for(TABLE)), platform="t"
            )
        assert seen == ["https://public.example/a"]


def test_redirects_of_a_post_are_not_followed() -> None:
    seen: list[str] = []
    client = client_with(
        {"https://public.example/a": httpx.Response(307, headers={"location": "https://next.example/b"})}, seen
    )
    with pytest.raises(Redirected) as caught:
        guarded_send(
            client, "POST", "https://public.example/a", guard=NetGuard(resolver=resolver_for(TABLE)), platform="t"
        )
    assert caught.value.location == "https://next.example/b"
    assert seen == ["https://public.example/a"]


def test_a_redirect_loop_stops_after_the_limit() -> None:
    seen: list[str] = []
    client = client_with(
        {"https://public.example/a": httpx.Response(302, headers={"location": "https://public.example/a"})}, seen
    )
    with pytest.raises(Redirected):
        guarded_send(
            client, "GET", "https://public.example/a", guard=NetGuard(resolver=resolver_for(TABLE)), platform="t"
        )
    assert len(seen) == MAX_REDIRECTS + 1


def test_nothing_is_sent_to_a_refused_first_url() -> None:
    seen: list[str] = []
    client = client_with({}, seen)
    with pytest.raises(UnsafeAddress):
        guarded_send(
            client, "GET", "https://internal.example/", guard=NetGuard(resolver=resolver_for(TABLE)), platform="t"
        )
    assert seen == []
