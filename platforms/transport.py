"""An HTTP/1.1 keep-alive transport for httpx, on plain sockets.

Why: workers are CPU-bound on small machines, and a platform call through httpx's default
transport (httpcore + h11, pure Python state machines) cost a token refresh about a third of
its CPU. Platform calls are small request/answer exchanges over HTTP/1.1: written in one
``sendall``, and the answer read with a buffered reader (status line, headers, a body by length,
by chunks or until close), this costs about half (``bench/refresh_cpu.py``; ``http.client``
was in between: its header parsing goes through the ``email`` package). Only the transport
changes: requests are still built, and responses read, by httpx, and the injected
``httpx.Client`` stays the test seam.

What it keeps from httpcore, because callers depend on it:

* the meaning of failures: nothing was sent (``ConnectError``/``ConnectTimeout``, the only
  ones retried, ``retries`` times) versus the request may have reached the platform
  (``WriteError``, ``ReadTimeout``, ``RemoteProtocolError``...): ``platforms.http.send`` turns
  the second kind into ``RequestMaybeSent``, which must never be retried for a code exchange;
* separate connect, write and read timeouts from the request's ``timeout`` extension; the read
  timeout bounds the whole answer, not each read (httpcore's is per read), so a platform that
  trickles its answer a byte at a time cannot hold a worker, or the refresh lock it holds, past
  the time the lock's TTL allows for the call (``workers.coordination.lock_ttl_seconds``);
* keep-alive with an idle expiry, and a connection the server closed while idle is never
  reused: before reuse the socket must not be readable (EOF or stray bytes), as httpcore checks;
* TLS verification against certifi's bundle (what httpx uses), SNI and hostname checks;
* refusing a header value with CR or LF (a token a platform sent must never inject a header),
  and bounds on an answer's line length and header count.

What it does not do itself: proxies (``HTTP(S)_PROXY`` gives the client a proxy mount of
httpx's own transport), HTTP/2, and request bodies that are not plain bytes (multipart,
streams), which go through an ``httpx.HTTPTransport`` kept for them.
"""

from __future__ import annotations

import io
import select
import socket
import ssl
import threading
import time
from collections import defaultdict
from typing import Any, BinaryIO, NamedTuple

import certifi
import httpx

__all__ = ["KeepAliveTransport"]

Origin = tuple[str, str, int]

#: limits on what an answer may send before its body (http.client's own limits)
MAX_LINE = 65536
MAX_HEADERS = 100


def _default_ssl_context() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=certifi.where())


class _AnswerSocket(io.RawIOBase):
    """The socket's reading side, where every read ends by one deadline: the answer's."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.deadline: float | None = None

    def start(self, timeout: float | None) -> None:
        """The answer about to be read must be complete within ``timeout`` seconds (None: no limit)."""
        self.deadline = None if timeout is None else time.monotonic() + timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.deadline is not None:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the answer did not arrive within the read timeout")
            self.sock.settimeout(remaining)
        return self.sock.recv_into(buffer)


class _Connection:
    """One socket and the buffered reader over it (a connection is used by one thread at a time)."""

    __slots__ = ("answer", "reader", "since", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.answer = _AnswerSocket(sock)
        self.reader: BinaryIO = io.BufferedReader(self.answer)
        self.since = 0.0

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class KeepAliveTransport(httpx.BaseTransport):
    """``httpx.HTTPTransport`` for plain HTTP/1.1 calls, cheaper per request.

    Parameters:
      retries(int): connection attempts repeated after a failure to connect (nothing sent).
      keepalive_expiry(float): an idle connection older than this is closed, not reused.
      max_idle_per_origin(int): idle connections kept per scheme/host/port.
      ssl_context: for ``https://`` (default: certifi's bundle, hostname checked).
    """

    def __init__(
        self,
        *,
        retries: int = 0,
        keepalive_expiry: float = 5.0,
        max_idle_per_origin: int = 20,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.retries = retries
        self.keepalive_expiry = keepalive_expiry
        self.max_idle_per_origin = max_idle_per_origin
        self._ssl_context = ssl_context
        self._idle: defaultdict[Origin, list[_Connection]] = defaultdict(list)
        self._lock = threading.Lock()
        self._closed = False
        self._fallback: httpx.HTTPTransport | None = None

    # ---- connections -------------------------------------------------------------------------

    def _ssl(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = _default_ssl_context()
        return self._ssl_context

    def _checkout(self, origin: Origin) -> _Connection | None:
        """A live idle connection to ``origin``, most recently used first; None when there is none."""
        now = time.monotonic()
        while True:
            with self._lock:
                idle = self._idle.get(origin)
                if not idle:
                    return None
                conn = idle.pop()
            if now - conn.since < self.keepalive_expiry and _still_open(conn.sock):
                return conn
            conn.close()

    def _checkin(self, origin: Origin, conn: _Connection) -> None:
        conn.since = time.monotonic()
        with self._lock:
            idle = self._idle[origin]
            if not self._closed and len(idle) < self.max_idle_per_origin:
                idle.append(conn)
                return
        conn.close()

    def _connect(self, origin: Origin, timeout: float | None) -> _Connection:
        scheme, host, port = origin
        attempt = 0
        while True:
            try:
                sock = socket.create_connection((host, port), timeout=timeout)
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    if scheme == "https":
                        sock = self._ssl().wrap_socket(sock, server_hostname=host)
                except BaseException:
                    sock.close()
                    raise
                return _Connection(sock)
            except TimeoutError as exc:
                failure: httpx.TransportError = httpx.ConnectTimeout(str(exc) or "connect timed out")
            except OSError as exc:  # refused, unreachable, DNS, TLS handshake or certificate
                failure = httpx.ConnectError(str(exc) or type(exc).__name__)
            if attempt >= self.retries:
                raise failure
            time.sleep(min(0.5 * 2**attempt, 2.0))  # httpcore's retry backoff, capped
            attempt += 1

    # ---- one exchange ------------------------------------------------------------------------

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError("the transport is closed")
        url = request.url
        scheme = url.scheme
        if not isinstance(request.stream, httpx.ByteStream) or scheme not in ("http", "https"):
            return self._other(request)
        head = _request_head(request)  # before connecting: a refused header must not cost a connection
        origin: Origin = (scheme, url.host, url.port or (443 if scheme == "https" else 80))
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        conn = self._checkout(origin) or self._connect(origin, timeouts.get("connect"))
        try:
            conn.sock.settimeout(timeouts.get("write"))
            conn.sock.sendall(head + request.read())
        except TimeoutError as exc:
            conn.close()
            raise httpx.WriteTimeout(str(exc) or "write timed out", request=request) from None
        except OSError as exc:
            conn.close()
            raise httpx.WriteError(str(exc) or type(exc).__name__, request=request) from None
        try:
            conn.answer.start(timeouts.get("read"))
            answer = _read_response(conn.reader, request.method)
        except TimeoutError as exc:
            conn.close()
            raise httpx.ReadTimeout(str(exc) or "read timed out", request=request) from None
        except httpx.RemoteProtocolError as exc:  # no or a broken answer: the request may have been sent
            conn.close()
            raise httpx.RemoteProtocolError(str(exc), request=request) from None
        except OSError as exc:
            conn.close()
            raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from None
        if answer.will_close:
            conn.close()
        else:
            self._checkin(origin, conn)
        return httpx.Response(
            answer.status,
            headers=answer.headers,
            content=answer.body,
            request=request,
            extensions={"http_version": answer.version, "reason_phrase": answer.reason},
        )

    def _other(self, request: httpx.Request) -> httpx.Response:
        """What this transport does not send itself, through httpx's own transport."""
        with self._lock:
            if self._fallback is None:
                self._fallback = httpx.HTTPTransport(retries=self.retries, verify=self._ssl())
            fallback = self._fallback
        return fallback.handle_request(request)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            entries = [conn for idle in self._idle.values() for conn in idle]
            self._idle.clear()
            fallback, self._fallback = self._fallback, None
        for conn in entries:
            conn.close()
        if fallback is not None:
            fallback.close()

    def __enter__(self) -> KeepAliveTransport:
        return self

    def __exit__(self, *args: Any) -> None:
        self.close()


def _still_open(sock: socket.socket) -> bool:
    """An idle HTTP/1.1 connection must have nothing to read: readable means the server closed it
    (EOF) or sent something unasked for; either way it cannot carry another request."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return False
    poller = select.poll()  # not select(): a busy process may hold descriptors above 1024
    try:
        poller.register(sock, select.POLLIN)
        return not poller.poll(0)
    except (OSError, ValueError):
        return False


def _request_head(request: httpx.Request) -> bytes:
    """The request line and headers, as httpx's own transport writes them (``Host`` first, as
    httpx puts it). A CR or LF in a header would split it into two: refused, as http.client and
    h11 refuse it (a token a platform sent us must never become a header of its own)."""
    lines = [b"%s %s HTTP/1.1" % (request.method.encode("ascii"), request.url.raw_path)]
    for name, value in request.headers.raw:
        if b"\r" in value or b"\n" in value or b"\r" in name or b"\n" in name or b":" in name:
            raise httpx.LocalProtocolError("illegal header", request=request)
        lines.append(name + b": " + value)
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


class _Answer(NamedTuple):
    status: int
    reason: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    will_close: bool


def _line(reader: BinaryIO) -> bytes:
    line = reader.readline(MAX_LINE + 1)
    if len(line) > MAX_LINE:
        raise httpx.RemoteProtocolError("answer line too long")
    return line


def _read_response(reader: BinaryIO, method: str) -> _Answer:
    """One HTTP/1.1 answer: status line, headers, and the body (length, chunked, or until close)."""
    while True:
        line = _line(reader)
        if not line:
            raise httpx.RemoteProtocolError("server disconnected without sending a response")
        version, _, rest = line.rstrip(b"\r\n").partition(b" ")
        code, _, reason = rest.partition(b" ")
        if not version.startswith(b"HTTP/1.") or not code.isdigit() or len(code) != 3:
            raise httpx.RemoteProtocolError("malformed status line")
        status = int(code)
        headers = _read_headers(reader)
        if not 100 <= status < 200 or status == 101:
            break  # 1xx interim answers (100 Continue, 103 Early Hints) are followed by the real one
    fields = {name.lower(): value for name, value in headers}
    tokens = {t.strip() for t in fields.get(b"connection", b"").lower().split(b",")}
    will_close = b"close" in tokens or (version == b"HTTP/1.0" and b"keep-alive" not in tokens)
    if method == "HEAD" or status in (204, 304) or status < 200:
        body = b""
    elif b"chunked" in fields.get(b"transfer-encoding", b"").lower():
        body = _read_chunked(reader)
    elif b"content-length" in fields:
        try:
            length = int(fields[b"content-length"])
        except ValueError:
            raise httpx.RemoteProtocolError("malformed Content-Length") from None
        body = reader.read(length)
        if len(body) != length:
            raise httpx.RemoteProtocolError("server disconnected before the whole body arrived")
    else:  # delimited by the server closing the connection
        body, will_close = reader.read(), True
    return _Answer(status, reason, version, headers, body, will_close)


def _read_headers(reader: BinaryIO) -> list[tuple[bytes, bytes]]:
    headers: list[tuple[bytes, bytes]] = []
    while True:
        line = _line(reader)
        if line in (b"\r\n", b"\n"):
            return headers
        if not line:
            raise httpx.RemoteProtocolError("server disconnected in the middle of the headers")
        if len(headers) >= MAX_HEADERS:
            raise httpx.RemoteProtocolError("too many headers")
        name, colon, value = line.partition(b":")
        if not colon:
            raise httpx.RemoteProtocolError("malformed header line")
        headers.append((name.strip(), value.strip()))


def _read_chunked(reader: BinaryIO) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = _line(reader)
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise httpx.RemoteProtocolError("malformed chunk size") from None
        if size == 0:
            _read_headers(reader)  # trailers, if any, up to the blank line
            return b"".join(parts)
        chunk = reader.read(size)
        if len(chunk) != size or _line(reader) not in (b"\r\n", b"\n"):
            raise httpx.RemoteProtocolError("server disconnected in the middle of a chunk")
        parts.append(chunk)
