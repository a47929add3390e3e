"""The SSRF guard checks the host the client will really connect to, and the connection goes there.

Two gaps closed here:

* IDNA: the system resolver encodes a non-ASCII name with IDNA 2003 (``ß`` -> ``ss``), httpx with
  IDNA 2008 (``ß`` -> ``xn--zca``); a guard handing the name to the resolver as typed checked
  another host than the one httpx connected to. It now resolves ``httpx.URL(url).raw_host``.
* Re-resolution: the guard resolved the name and httpx resolved it again to connect (DNS
  rebinding). ``guarded_send`` now hands the checked address to the transport, which connects
  to it while keeping the name for ``Host`` and TLS (SNI and certificate check: httpx's
  ``sni_hostname`` request extension).
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest

from platforms.deadline import PINNED_ADDRESS, DeadlineTransport, pinned_request
from platforms.netguard import NetGuard, guarded_send
from social_accounts.errors import UnsafeAddress

PUBLIC_V4 = "93.184.215.14"
PUBLIC_V6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"


def system_like_resolver(table: dict[str, list[str]], seen: list[str]) -> Callable[[str, int], list[str]]:
    """Resolves like ``socket.getaddrinfo``: a non-ASCII name is first encoded with IDNA 2003."""

    def resolve(host: str, port: int) -> list[str]:
        seen.append(host)
        ascii_name = host.encode("idna").decode("ascii")
        if ascii_name not in table:
            raise OSError("does not resolve")
        return table[ascii_name]

    return resolve


# ---- IDNA ------------------------------------------------------------------------------------------


def test_the_guard_resolves_the_name_httpx_will_connect_to() -> None:
    seen: list[str] = []
    guard = NetGuard(resolver=system_like_resolver({"xn--zca.example": [PUBLIC_V4]}, seen))
    guard.check_url("https://ß.example/.well-known/atproto-did")
    assert seen == ["xn--zca.example"] == [httpx.URL("https://ß.example/").raw_host.decode()]


def test_an_idna_2003_twin_cannot_vouch_for_a_private_idna_2008_host() -> None:
    """``ß.example`` is ``ss.example`` to IDNA 2003 (public here) but ``xn--zca.example`` to httpx
    (private here): the guard must judge the second."""
    table = {"ss.example": [PUBLIC_V4], "xn--zca.example": ["10.0.0.7"]}
    guard = NetGuard(resolver=system_like_resolver(table, []))
    with pytest.raises(UnsafeAddress):
        guard.check_url("https://ß.example/")


@pytest.mark.parametrize("url", ["https://exa\u200bmple.com/", "https://\u0000.example/"])
def test_a_host_httpx_cannot_encode_is_refused(url: str) -> None:
    guard = NetGuard(resolver=system_like_resolver({}, []))
    with pytest.raises(UnsafeAddress):
        guard.check_url(url)


# ---- pinning ---------------------------------------------------------------------------------------


def recording_client(seen: list[httpx.Request]) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/moved":
            return httpx.Response(302, headers={"location": "https://next.example/b"})
        return httpx.Response(200, json={"ok": True})

    return httpx.Client(transport=httpx.MockTransport(handler))


def test_guarded_send_hands_the_checked_address_to_the_transport() -> None:
    seen: list[httpx.Request] = []
    answers = iter([[PUBLIC_V4], ["10.0.0.1"]])  # a rebinding DNS: public once, private after
    guard = NetGuard(resolver=lambda host, port: next(answers))
    response = guarded_send(recording_client(seen), "GET", "https://api.example/x", guard=guard, platform="t")
    assert response.json() == {"ok": True}
    assert [r.extensions.get(PINNED_ADDRESS) for r in seen] == [PUBLIC_V4]


def test_every_redirect_hop_is_pinned_to_its_own_checked_address() -> None:
    seen: list[httpx.Request] = []
    table = {"api.example": [PUBLIC_V4], "next.example": [PUBLIC_V6, "8.8.8.8"]}
    guard = NetGuard(resolver=lambda host, port: table[host])
    guarded_send(recording_client(seen), "GET", "https://api.example/moved", guard=guard, platform="t")
    # IPv4 first when a name has both (reachable from more networks)
    assert [(str(r.url), r.extensions.get(PINNED_ADDRESS)) for r in seen] == [
        ("https://api.example/moved", PUBLIC_V4),
        ("https://next.example/b", "8.8.8.8"),
    ]


def test_without_the_guard_checking_nothing_is_pinned() -> None:
    seen: list[httpx.Request] = []
    guard = NetGuard(allow_private=True, resolver=lambda host, port: pytest.fail("no resolution expected"))
    guarded_send(recording_client(seen), "GET", "http://127.0.0.1:9/x", guard=guard, platform="t")
    assert PINNED_ADDRESS not in seen[0].extensions


@pytest.mark.parametrize(
    ("url", "address", "connect_url", "host_header"),
    [
        ("https://api.example/x?y=1", PUBLIC_V4, f"https://{PUBLIC_V4}/x?y=1", "api.example"),
        ("https://api.example:8443/x", PUBLIC_V6, f"https://[{PUBLIC_V6}]:8443/x", "api.example:8443"),
        ("https://ß.example/", PUBLIC_V4, f"https://{PUBLIC_V4}/", "xn--zca.example"),
    ],
)
def test_a_pinned_request_connects_to_the_address_with_the_name_for_host_and_tls(
    url: str, address: str, connect_url: str, host_header: str
) -> None:
    request = httpx.Request("POST", url, content=b"body", extensions={PINNED_ADDRESS: address, "timeout": {}})
    out = pinned_request(request)
    assert str(out.url) == connect_url
    assert out.headers["host"] == host_header
    assert out.extensions["sni_hostname"] == host_header.split(":")[0]
    assert PINNED_ADDRESS not in out.extensions and out.extensions["timeout"] == {}
    assert out.read() == b"body" and out.headers["content-length"] == "4"


def test_a_request_without_a_pin_is_left_alone() -> None:
    request = httpx.Request("GET", "https://api.example/x")
    assert pinned_request(request) is request


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = self.headers["Host"].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        pass


@pytest.fixture
def loopback_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_the_deadline_transport_connects_to_the_pinned_address_not_the_name(loopback_server: int) -> None:
    """A name that resolves nowhere (``.invalid``, RFC 6761) still reaches the pinned loopback
    address: the transport did not resolve the name again."""
    with httpx.Client(transport=DeadlineTransport(retries=0), timeout=5) as client:
        response = client.get(f"http://never.invalid:{loopback_server}/x", extensions={PINNED_ADDRESS: "127.0.0.1"})
    assert response.status_code == 200
    assert response.text == f"never.invalid:{loopback_server}"  # the Host header kept the name
    assert str(response.url) == f"http://never.invalid:{loopback_server}/x"
