"""An HTTP/1.1 keep-alive transport for httpx on the standard library's ``http.client``.

Why: workers are CPU-bound on small machines, and a platform call through httpx's default
transport (httpcore + h11, pure Python state machines) costs a token refresh about a third of
its CPU. ``http.client`` sends the same bytes for about a third of that (``bench/refresh_cpu.py``).
Only the transport changes: requests are still built, and responses read, by httpx, and the
injected ``httpx.Client`` stays the test seam.

What it keeps from httpcore, because callers depend on it:

* the meaning of failures: nothing was sent (``ConnectError``/``ConnectTimeout``, the only
  ones retried, ``retries`` times) versus the request may have reached the platform
  (``WriteError``, ``ReadTimeout``, ``RemoteProtocolError``...): ``platforms.http.send`` turns
  the second kind into ``RequestMaybeSent``, which must never be retried for a code exchange;
* separate connect, write and read timeouts from the request's ``timeout`` extension;
* keep-alive with an idle expiry, and a connection the server closed while idle is never
  reused: before reuse the socket must not be readable (EOF or stray bytes), as httpcore checks;
* TLS verification against certifi's bundle (what httpx uses), SNI and hostname checks.

What it does not do itself: proxies (``HTTP(S)_PROXY`` gives the client a proxy mount of
httpx's own transport), HTTP/2, and request bodies that are not plain bytes (multipart,
streams), which go through an ``httpx.HTTPTransport`` kept for them.
"""

from __future__ import annotations

import http.client
import select
import ssl
import threading
import time
from collections import defaultdict
from typing import Any

import certifi
import httpx

__all__ = ["KeepAliveTransport"]

Origin = tuple[str, str, int]


def _default_ssl_context() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=certifi.where())


class _Idle:
    __slots__ = ("conn", "since")

    def __init__(self, conn: http.client.HTTPConnection, since: float) -> None:
        self.conn = conn
        self.since = since


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
        self._idle: defaultdict[Origin, list[_Idle]] = defaultdict(list)
        self._lock = threading.Lock()
        self._closed = False
        self._fallback: httpx.HTTPTransport | None = None

    # ---- connections -------------------------------------------------------------------------

    def _ssl(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = _default_ssl_context()
        return self._ssl_context

    def _checkout(self, origin: Origin) -> http.client.HTTPConnection | None:
        """A live idle connection to ``origin``, most recently used first; None when there is none."""
        now = time.monotonic()
        while True:
            with self._lock:
                idle = self._idle.get(origin)
                if not idle:
                    return None
                entry = idle.pop()
            if now - entry.since < self.keepalive_expiry and _still_open(entry.conn):
                return entry.conn
            entry.conn.close()

    def _checkin(self, origin: Origin, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle[origin]
            if not self._closed and len(idle) < self.max_idle_per_origin:
                idle.append(_Idle(conn, time.monotonic()))
                return
        conn.close()

    def _connect(self, origin: Origin, timeout: float | None) -> http.client.HTTPConnection:
        scheme, host, port = origin
        conn: http.client.HTTPConnection
        if scheme == "https":
            conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=self._ssl())
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        attempt = 0
        while True:
            try:
                conn.connect()
                return conn
            except TimeoutError as exc:
                conn.close()
                failure: httpx.TransportError = httpx.ConnectTimeout(str(exc) or "connect timed out")
            except OSError as exc:  # refused, unreachable, DNS, TLS handshake or certificate
                conn.close()
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
        origin: Origin = (scheme, url.host, url.port or (443 if scheme == "https" else 80))
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        conn = self._checkout(origin) or self._connect(origin, timeouts.get("connect"))
        body = request.read()
        sock = conn.sock
        try:
            sock.settimeout(timeouts.get("write"))
            conn.putrequest(request.method, url.raw_path.decode("ascii"), skip_host=True, skip_accept_encoding=True)
            for name, value in request.headers.raw:
                conn.putheader(name, value)
            conn.endheaders(body or None)
        except TimeoutError as exc:
            conn.close()
            raise httpx.WriteTimeout(str(exc) or "write timed out", request=request) from None
        except OSError as exc:
            conn.close()
            raise httpx.WriteError(str(exc) or type(exc).__name__, request=request) from None
        try:
            sock.settimeout(timeouts.get("read"))
            answer = conn.getresponse()
            content = answer.read()
        except TimeoutError as exc:
            conn.close()
            raise httpx.ReadTimeout(str(exc) or "read timed out", request=request) from None
        except http.client.HTTPException as exc:  # no or a broken answer: it may have been sent
            conn.close()
            raise httpx.RemoteProtocolError(str(exc) or type(exc).__name__, request=request) from None
        except OSError as exc:
            conn.close()
            raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from None
        if answer.will_close:
            conn.close()
        else:
            self._checkin(origin, conn)
        version = b"HTTP/1.0" if answer.version == 10 else b"HTTP/1.1"
        return httpx.Response(
            answer.status,
            headers=answer.getheaders(),
            content=content,
            request=request,
            extensions={"http_version": version, "reason_phrase": answer.reason.encode("ascii", "replace")},
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
            entries = [entry for idle in self._idle.values() for entry in idle]
            self._idle.clear()
            fallback, self._fallback = self._fallback, None
        for entry in entries:
            entry.conn.close()
        if fallback is not None:
            fallback.close()

    def __enter__(self) -> KeepAliveTransport:
        return self

    def __exit__(self, *args: Any) -> None:
        self.close()


def _still_open(conn: http.client.HTTPConnection) -> bool:
    """An idle HTTP/1.1 connection must have nothing to read: readable means the server closed it
    (EOF) or sent something unasked for; either way it cannot carry another request."""
    sock = conn.sock
    if sock is None:
        return False
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return False
    poller = select.poll()  # not select(): a busy process may hold descriptors above 1024
    try:
        poller.register(sock, select.POLLIN)
        return not poller.poll(0)
    except (OSError, ValueError):
        return False
