"""``platforms.transport.KeepAliveTransport`` against real sockets on loopback.

What callers rely on: the same request on the wire as httpx's own transport, keep-alive that
never reuses a connection the server closed, and failures that keep their meaning (nothing
sent: retried and ``Transient``; maybe sent: ``RequestMaybeSent``, never retried).
"""

from __future__ import annotations

import gzip
import socket
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

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.requests: list[bytes] = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

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
def server(handler: Handler) -> Iterator[RawServer]:
    srv = RawServer(handler)
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
