"""The platform client's transport (``platforms.deadline``) against real sockets on loopback.

What callers rely on: keep-alive that never reuses a connection the server closed, failures that
keep their meaning (nothing sent: retried and ``Transient``; maybe sent: ``RequestMaybeSent``,
never retried), one deadline over the whole body however slowly it trickles in, TLS
verification, and the SSRF guard in front of the production client.
"""

from __future__ import annotations

import datetime
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest

from platforms.deadline import DeadlineTransport
from platforms.http import send
from platforms.netguard import NetGuard, guarded_send
from social_accounts.errors import RequestMaybeSent, Transient, UnsafeAddress
from social_accounts.settings import Settings
from workers.runtime import platform_client

Handler = Callable[[socket.socket, bytes], bool]  # answer one request; False closes the connection


class RawServer:
    """A loopback HTTP/1.1 server whose answers the test writes byte by byte."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.requests: list[bytes] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://localhost:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except OSError:  # the client refused our certificate
                conn.close()
                return
        with conn:
            try:
                self._requests(conn)
            except OSError:  # the client went away
                return

    def _requests(self, conn: socket.socket) -> None:
        buffer = b""
        while True:
            while b"\r\n\r\n" not in buffer:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buffer += chunk
            head, _, rest = buffer.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(rest) < length:
                rest += conn.recv(65536)
            request, buffer = head + b"\r\n\r\n" + rest[:length], rest[length:]
            self.requests.append(request)
            if not self.handler(conn, request):
                return

    def close(self) -> None:
        self.sock.close()


@contextmanager
def server(handler: Handler, tls: ssl.SSLContext | None = None) -> Iterator[RawServer]:
    srv = RawServer(handler, tls)
    try:
        yield srv
    finally:
        srv.close()


def answer(body: bytes = b'{"ok":true}', *, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
        len(body),
        extra,
        body,
    )


def ok(body: bytes = b'{"ok":true}', *, extra: bytes = b"") -> Handler:
    def respond(conn: socket.socket, _request: bytes) -> bool:
        conn.sendall(answer(body, extra=extra))
        return b"Connection: close" not in extra

    return respond


def trickle(at_once: bytes, slowly: bytes, *, sent: list[int]) -> Handler:
    """Send ``at_once``, then ``slowly`` one byte every 10 ms, counting the bytes in ``sent``."""

    def respond(conn: socket.socket, _request: bytes) -> bool:
        conn.sendall(at_once)
        for i in range(len(slowly)):
            conn.sendall(slowly[i : i + 1])
            sent[0] += 1
            time.sleep(0.01)
        return False

    return respond


class SteppingClock:
    """A monotonic clock that moves ``step`` seconds every time it is read (0: it stands still)."""

    def __init__(self, step: float) -> None:
        self.step = step
        self.now = 0.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        self.now += self.step
        return self.now


#: per phase: connect 1 s, write and read 5 s; with ``retries=0`` an exchange may last 11 s
PHASES = httpx.Timeout(5.0, connect=1.0)


def client(**kwargs: object) -> httpx.Client:
    return httpx.Client(transport=DeadlineTransport(**kwargs), timeout=httpx.Timeout(2.0, connect=1.0))  # type: ignore[arg-type]


# ---- keep-alive ------------------------------------------------------------------------------


def test_keep_alive_reuses_one_connection() -> None:
    with server(ok()) as srv, client() as c:
        for _ in range(5):
            assert send(c, "GET", srv.url + "/me", platform="t").json() == {"ok": True}
    assert srv.connections == 1 and len(srv.requests) == 5


def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    hung_up = threading.Event()

    def answer_then_hang_up(conn: socket.socket, request: bytes) -> bool:
        ok()(conn, request)
        conn.shutdown(socket.SHUT_RDWR)  # the server's idle timeout, right after answering
        hung_up.set()
        return False

    with server(answer_then_hang_up) as srv, client() as c:
        first = send(c, "POST", srv.url + "/token", platform="t", data={"code": "single-use"})
        assert hung_up.wait(5)
        hung_up.clear()
        second = send(c, "POST", srv.url + "/token", platform="t", data={"code": "another"})
    assert first.status_code == second.status_code == 200
    assert srv.connections == 2 and len(srv.requests) == 2  # nothing sent into the dead connection


def test_connection_close_is_honoured() -> None:
    with server(ok(extra=b"Connection: close\r\n")) as srv, client() as c:
        send(c, "GET", srv.url + "/a", platform="t")
        send(c, "GET", srv.url + "/b", platform="t")
    assert srv.connections == 2


# ---- what a failure means ---------------------------------------------------------------------


def test_refused_connection_is_transient_after_the_retries() -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]  # nothing listens on it
        with client(retries=1) as c, pytest.raises(Transient):
            send(c, "POST", f"http://127.0.0.1:{port}/token", platform="t", data={"code": "c"})


def test_no_answer_is_request_maybe_sent() -> None:
    answered = threading.Event()

    def silent(_conn: socket.socket, _request: bytes) -> bool:
        answered.wait(10)
        return False

    with server(silent) as srv:
        c = httpx.Client(transport=DeadlineTransport(), timeout=httpx.Timeout(0.3, connect=1.0))
        with c, pytest.raises(RequestMaybeSent):
            send(c, "POST", srv.url + "/token", platform="t", data={"code": "c"})
        answered.set()
    assert len(srv.requests) == 1  # it did reach the server: never to be repeated


def test_hang_up_without_an_answer_is_request_maybe_sent_and_not_retried() -> None:
    with server(lambda _conn, _request: False) as srv, client(retries=2) as c, pytest.raises(RequestMaybeSent):
        send(c, "POST", srv.url + "/token", platform="t", data={"code": "c"})
    assert len(srv.requests) == 1  # retries are for failures to connect only


@pytest.mark.parametrize(
    "payload",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",  # the body stops early
        b"SMTP ready\r\n\r\n",  # not HTTP
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_a_broken_answer_is_request_maybe_sent(payload: bytes) -> None:
    def broken(conn: socket.socket, _request: bytes) -> bool:
        conn.sendall(payload)
        return False

    with server(broken) as srv, client() as c, pytest.raises(RequestMaybeSent):
        send(c, "POST", srv.url + "/token", platform="t", data={"code": "c"})


def test_a_header_with_a_line_break_is_refused_before_anything_is_sent() -> None:
    with server(ok()) as srv, client() as c, pytest.raises(httpx.LocalProtocolError):
        c.get(srv.url + "/me", headers={"Authorization": "Bearer abc\r\nX-Injected: 1"})
    assert srv.requests == []


# ---- one deadline over the whole answer -------------------------------------------------------


def _trickled_body_call(clock: SteppingClock, sent: list[int]) -> httpx.Response:
    body = b'{"access_token":"' + b"x" * 60 + b'"}'
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    with server(trickle(head, body, sent=sent)) as srv:
        transport = DeadlineTransport(retries=0, clock=clock)
        with httpx.Client(transport=transport, timeout=PHASES) as c:
            return send(c, "POST", srv.url + "/token", platform="t", data={"code": "c"})


def test_a_body_trickled_past_the_deadline_is_cut_off() -> None:
    """Every byte comes well inside the read timeout; the clock moves 1 s per look, so the 11 s
    the exchange may last are spent after a few bytes, and the call ends there."""
    sent = [0]
    with pytest.raises(RequestMaybeSent):
        _trickled_body_call(SteppingClock(1.0), sent)
    assert sent[0] < 60  # ended before the body was through


def test_a_body_trickled_within_the_deadline_is_read_whole() -> None:
    sent = [0]
    response = _trickled_body_call(SteppingClock(0.0), sent)
    assert response.json()["access_token"] == "x" * 60


def _trickled_tls_call(certificate: tuple[str, str], clock: SteppingClock, sent: list[int]) -> httpx.Response:
    """The whole answer, status line and headers included, one TLS record per byte (the headers
    are bounded per read only: ``platforms/deadline.py``)."""
    trusting = ssl.create_default_context(cafile=certificate[0])
    with server(trickle(b"", answer(), sent=sent), tls=_tls_server_context(certificate)) as srv:
        transport = DeadlineTransport(retries=0, verify=trusting, clock=clock)
        with httpx.Client(transport=transport, timeout=PHASES) as c:
            return send(c, "POST", srv.url + "/token", platform="t", data={"code": "c"})


def test_tls_headers_trickled_within_the_deadline_are_read_whole(certificate: tuple[str, str]) -> None:
    sent = [0]
    assert _trickled_tls_call(certificate, SteppingClock(0.0), sent).json() == {"ok": True}


def test_the_deadline_starts_again_for_each_exchange_on_a_kept_connection() -> None:
    clock = SteppingClock(1.0)  # a few looks per exchange: each one far inside its own 11 s
    transport = DeadlineTransport(retries=0, clock=clock)
    with server(ok()) as srv, httpx.Client(transport=transport, timeout=PHASES) as c:
        for _ in range(10):
            assert send(c, "GET", srv.url + "/a", platform="t").status_code == 200
    assert srv.connections == 1 and clock.now > 11


def test_the_production_client_cuts_a_trickled_answer_off() -> None:
    """``platform_client``: HTTP_TIMEOUT_SECONDS=0.1 lets an exchange last 0.9 s (three connect
    attempts, the pauses between them, the write and the read); the answer would take 6 s."""
    sent = [0]
    body = b"x" * 600
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    settings = Settings(_env_file=None, http_timeout_seconds=0.1)
    with server(trickle(head, body, sent=sent)) as srv, platform_client(settings) as c, pytest.raises(RequestMaybeSent):
        send(c, "POST", srv.url + "/token", platform="t", data={"code": "c"})
    assert sent[0] < len(body)


# ---- TLS and the SSRF guard -------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for ``localhost``: (cert file, key file)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_file), str(key_file)


def _tls_server_context(certificate: tuple[str, str]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    return context


def test_https_with_a_trusted_certificate(certificate: tuple[str, str]) -> None:
    trusting = ssl.create_default_context(cafile=certificate[0])
    with server(ok(), tls=_tls_server_context(certificate)) as srv, client(verify=trusting) as c:
        for _ in range(2):
            assert send(c, "GET", srv.url + "/me", platform="t").json() == {"ok": True}
    assert srv.connections == 1


def test_https_with_an_untrusted_certificate_is_refused_before_sending(certificate: tuple[str, str]) -> None:
    with server(ok(), tls=_tls_server_context(certificate)) as srv, client() as c, pytest.raises(Transient):
        send(c, "POST", srv.url + "/token", platform="t", data={"code": "single-use"})
    assert srv.requests == []


def test_the_guard_stops_a_private_address_before_the_production_client_connects() -> None:
    with server(ok()) as srv, platform_client(Settings(_env_file=None)) as c:
        with pytest.raises(UnsafeAddress):
            guarded_send(c, "GET", f"https://127.0.0.1:{srv.port}/api/v1/instance", guard=NetGuard(), platform="t")
        allowed = guarded_send(
            c, "GET", f"http://127.0.0.1:{srv.port}/api/v1/instance", guard=NetGuard(allow_private=True), platform="t"
        )
    assert allowed.json() == {"ok": True}
    assert srv.connections == 1 and len(srv.requests) == 1  # only the allowed call reached it
