"""``platforms.transport.KeepAliveTransport`` against real sockets on loopback.

What callers rely on: the same request on the wire as httpx's own transport, keep-alive that
never reuses a connection the server closed, and failures that keep their meaning (nothing
sent: retried and ``Transient``; maybe sent: ``RequestMaybeSent``, never retried).
"""

from __future__ import annotations

import datetime
import gzip
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest

from platforms.http import send
from platforms.transport import KeepAliveTransport
from social_accounts.errors import RequestMaybeSent, Transient

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
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://localhost:{self.port}"

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError):  # the client refused our certificate
                conn.close()
                return
        with conn:
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
        self._stop = True
        self.sock.close()


@contextmanager
def server(handler: Handler, tls: ssl.SSLContext | None = None) -> Iterator[RawServer]:
    srv = RawServer(handler, tls)
    try:
        yield srv
    finally:
        srv.close()


def ok(body: bytes = b'{"ok":true}', *, extra: bytes = b"") -> Handler:
    def answer(conn: socket.socket, _request: bytes) -> bool:
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s"
            % (len(body), extra, body)
        )
        return b"Connection: close" not in extra

    return answer


def client(**kwargs: object) -> httpx.Client:
    return httpx.Client(transport=KeepAliveTransport(**kwargs), timeout=httpx.Timeout(2.0, connect=1.0))  # type: ignore[arg-type]


def test_the_request_on_the_wire_is_httpx_s_own() -> None:
    kwargs = {"data": {"grant_type": "refresh_token", "refresh_token": "rt"}, "auth": ("id", "secret")}
    with server(ok()) as srv:
        with client() as ours:
            send(ours, "POST", srv.url + "/oauth2/token?x=1", platform="t", **kwargs)  # type: ignore[arg-type]
        with httpx.Client() as theirs:
            send(theirs, "POST", srv.url + "/oauth2/token?x=1", platform="t", **kwargs)  # type: ignore[arg-type]
    ours_sent, theirs_sent = srv.requests
    assert ours_sent == theirs_sent
    assert ours_sent.startswith(b"POST /oauth2/token?x=1 HTTP/1.1\r\n")


def test_keep_alive_reuses_one_connection() -> None:
    with server(ok()) as srv, client() as c:
        for _ in range(5):
            assert send(c, "GET", srv.url + "/me", platform="t").json() == {"ok": True}
    assert srv.connections == 1 and len(srv.requests) == 5


def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    def answer_then_hang_up(conn: socket.socket, request: bytes) -> bool:
        ok()(conn, request)
        time.sleep(0.05)
        conn.shutdown(socket.SHUT_RDWR)  # the server's idle timeout, right after answering
        return False

    with server(answer_then_hang_up) as srv, client() as c:
        first = send(c, "POST", srv.url + "/token", platform="t", data={"code": "single-use"})
        time.sleep(0.2)
        second = send(c, "POST", srv.url + "/token", platform="t", data={"code": "another"})
    assert first.status_code == second.status_code == 200
    assert srv.connections == 2 and len(srv.requests) == 2  # nothing sent into the dead connection


def test_connection_close_is_honoured() -> None:
    with server(ok(extra=b"Connection: close\r\n")) as srv, client() as c:
        send(c, "GET", srv.url + "/a", platform="t")
        send(c, "GET", srv.url + "/b", platform="t")
    assert srv.connections == 2


def test_chunked_and_gzip_answers_are_decoded() -> None:
    packed = gzip.compress(b'{"id":"42"}')

    def chunked(conn: socket.socket, _request: bytes) -> bool:
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n%s\r\n" % (5, packed[:5])
            + b"%x\r\n%s\r\n" % (len(packed) - 5, packed[5:])
            + b"0\r\n\r\n"
        )
        return True

    with server(chunked) as srv, client() as c:
        assert send(c, "GET", srv.url + "/me", platform="t").json() == {"id": "42"}


def test_refused_connection_is_transient_after_the_retries() -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]  # nothing listens on it
        with client(retries=1) as c, pytest.raises(Transient):
            send(c, "POST", f"http://127.0.0.1:{port}/token", platform="t", data={"code": "c"})


def test_no_answer_is_request_maybe_sent() -> None:
    def silent(_conn: socket.socket, _request: bytes) -> bool:
        time.sleep(3)
        return False

    with server(silent) as srv:
        c = httpx.Client(transport=KeepAliveTransport(), timeout=httpx.Timeout(0.3, connect=1.0))
        with c, pytest.raises(RequestMaybeSent):
            send(c, "POST", srv.url + "/token", platform="t", data={"code": "c"})
    assert len(srv.requests) == 1  # it did reach the server: never to be repeated


def test_an_answer_trickled_past_the_read_timeout_is_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every byte comes well inside the read timeout, but the whole answer would take ~2 s: the
    read timeout bounds the answer, so the call ends at 0.5 s (a lock held for it would expire)."""
    body = b'{"access_token":"' + b"x" * 40 + b'"}'
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    done = threading.Event()

    def trickle(conn: socket.socket, _request: bytes) -> bool:
        for i in range(len(answer)):
            if done.is_set():
                return False
            try:
                conn.sendall(answer[i : i + 1])
            except OSError:
                return False
            time.sleep(0.03)
        return False

    with server(trickle) as srv:
        c = httpx.Client(transport=KeepAliveTransport(), timeout=httpx.Timeout(0.5, connect=1.0))
        started = time.monotonic()
        with c, pytest.raises(RequestMaybeSent):
            send(c, "POST", srv.url + "/token", platform="t", data={"code": "c"})
        took = time.monotonic() - started
        done.set()
    assert len(answer) * 0.03 > 2 * 0.5  # without the bound the answer would have been read whole
    assert took < 1.5, f"the trickled answer held the call for {took:.1f} s"


def test_the_read_timeout_starts_again_for_each_answer_on_a_kept_connection() -> None:
    with server(ok()) as srv:
        c = httpx.Client(transport=KeepAliveTransport(), timeout=httpx.Timeout(0.3, connect=1.0))
        with c:
            assert send(c, "GET", srv.url + "/a", platform="t").status_code == 200
            time.sleep(0.4)  # longer than the read timeout, idle between two answers
            assert send(c, "GET", srv.url + "/b", platform="t").status_code == 200
    assert srv.connections == 1


def test_hang_up_without_an_answer_is_request_maybe_sent() -> None:
    with server(lambda _conn, _request: False) as srv, client(retries=2) as c, pytest.raises(RequestMaybeSent):
        send(c, "POST", srv.url + "/token", platform="t", data={"code": "c"})
    assert len(srv.requests) == 1  # retries are for failures to connect only


def test_multipart_bodies_go_through_httpx_s_transport() -> None:
    with server(ok()) as srv, client() as c:
        send(c, "POST", srv.url + "/upload", platform="t", files={"f": ("a.txt", b"hello")})  # type: ignore[arg-type]
    assert b"multipart/form-data" in srv.requests[0] and b"hello" in srv.requests[0]


def test_a_closed_transport_refuses() -> None:
    transport = KeepAliveTransport()
    transport.close()
    with pytest.raises(RuntimeError):
        transport.handle_request(httpx.Request("GET", "http://127.0.0.1:9/"))


def test_a_header_with_a_line_break_is_refused_before_anything_is_sent() -> None:
    with server(ok()) as srv, client() as c, pytest.raises(httpx.LocalProtocolError):
        c.get(srv.url + "/me", headers={"Authorization": "Bearer abc\r\nX-Injected: 1"})
    assert srv.connections == 0 and srv.requests == []


def raw_answer(payload: bytes, *, keep: bool = True) -> Handler:
    def answer(conn: socket.socket, _request: bytes) -> bool:
        conn.sendall(payload)
        return keep

    return answer


@pytest.mark.parametrize(
    ("payload", "body", "connections_for_two"),
    [
        (b"HTTP/1.1 204 No Content\r\n\r\n", b"", 1),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", b"ok", 1),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", b"ok", 2),  # 1.0 closes unless keep-alive
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok", b"ok", 1),
    ],
)
def test_bodies_and_connection_reuse_follow_http_1_1(payload: bytes, body: bytes, connections_for_two: int) -> None:
    with server(raw_answer(payload)) as srv, client() as c:
        for _ in range(2):
            assert c.get(srv.url + "/x").content == body
    assert srv.connections == connections_for_two


def test_an_answer_delimited_by_close_is_read_to_the_end() -> None:
    with server(raw_answer(b'HTTP/1.1 200 OK\r\n\r\n{"a": 1}', keep=False)) as srv, client() as c:
        assert send(c, "GET", srv.url + "/x", platform="t").json() == {"a": 1}


@pytest.mark.parametrize(
    "payload",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",  # the body stops early
        b"SMTP ready\r\n\r\n",  # not HTTP
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X-Long: " + b"a" * 70000 + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_a_broken_answer_is_request_maybe_sent(payload: bytes) -> None:
    with server(raw_answer(payload, keep=False)) as srv, client() as c, pytest.raises(RequestMaybeSent):
        send(c, "POST", srv.url + "/token", platform="t", data={"code": "c"})


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
    with server(ok(), tls=_tls_server_context(certificate)) as srv, client(ssl_context=trusting) as c:
        for _ in range(2):
            assert send(c, "GET", srv.url + "/me", platform="t").json() == {"ok": True}
    assert srv.connections == 1


def test_https_with_an_untrusted_certificate_is_refused_before_sending(certificate: tuple[str, str]) -> None:
    with server(ok(), tls=_tls_server_context(certificate)) as srv, client() as c, pytest.raises(Transient):
        send(c, "POST", srv.url + "/token", platform="t", data={"code": "single-use"})
    assert srv.requests == []
