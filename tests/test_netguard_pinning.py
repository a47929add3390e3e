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
import ssl
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

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


# ---- TLS: the pinned connection still verifies the name's certificate ------------------------------


def _self_signed(name: str, directory: Path) -> tuple[Path, Path]:
    """A certificate for ``name`` (and only ``name``) with its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """An https server on loopback whose certificate names ``pinned.test`` only."""
    cert_path, key_path = _self_signed("pinned.test", tmp_path)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], cert_path
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_pinned_https_request_verifies_the_certificate_for_the_name(tls_server: tuple[int, Path]) -> None:
    port, cert_path = tls_server
    verify = ssl.create_default_context(cafile=str(cert_path))
    with httpx.Client(transport=DeadlineTransport(retries=0, verify=verify), timeout=5) as client:
        ok = client.get(f"https://pinned.test:{port}/", extensions={PINNED_ADDRESS: "127.0.0.1"})
        assert (ok.status_code, ok.text) == (200, f"pinned.test:{port}")
        # the same address under a name the certificate does not carry, on a new connection
        # (http.server closes each one after its answer): refused by TLS, so pinning never
        # turns the certificate check into a check of the IP address
        with pytest.raises(httpx.ConnectError):
            client.get(f"https://other.test:{port}/", extensions={PINNED_ADDRESS: "127.0.0.1"})
