"""httpx's own transport, with one deadline over each whole exchange.

Why: a worker holds the account's refresh lock while it calls the platform, and the lock's TTL is
derived from the HTTP timeout (``workers.coordination.lock_ttl_seconds``). httpx's read timeout
bounds each read, not the answer, so a platform (or a user's Mastodon instance) that trickles its
answer a byte at a time could hold the worker, and the lock, indefinitely. :class:`DeadlineTransport`
wraps ``httpx.HTTPTransport`` and ends every exchange within :func:`exchange_seconds` of its start,
the worst case of its phases (every connect attempt timing out, the write, the read):

* the body is read through a stream that checks the deadline before and after every chunk;
* the status line and headers are bounded per read only (httpx's read timeout): httpx offers no
  public hook into the reads before the response exists, and this module does not reach into
  the socket itself. A server trickling its *headers* can still outlast the deadline.

It also connects to the address ``platforms.netguard`` checked, when the request names one
(:func:`pinned_request`), so a name cannot resolve to one address for the check and another for
the connection.

What ``HTTPTransport`` keeps as it is: keep-alive pooling, TLS verification (certifi, as httpx),
``retries`` for failures to connect only (nothing was sent, so repeating is safe even for a
single-use code exchange), and the meaning of its exceptions: ``ConnectError``/``ConnectTimeout``
before anything was sent, ``WriteError``/``ReadTimeout``/``RemoteProtocolError`` once the request
may have reached the platform (``platforms.http.send`` turns those into ``RequestMaybeSent``).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Iterator, Mapping

import httpx

__all__ = ["PINNED_ADDRESS", "DeadlineTransport", "connect_backoff_seconds", "exchange_seconds", "pinned_request"]

#: request extension naming the IP address to connect to (set by ``platforms.netguard.guarded_send``
#: to the address it checked); the URL's name still goes into ``Host`` and TLS
PINNED_ADDRESS = "social_accounts.pinned_address"

Clock = Callable[[], float]

#: connection limits: no cap on open connections, so no call ever waits for the pool (a pool
#: timeout would add to the exchange's worst case); idle ones are kept as httpx does by default
LIMITS = httpx.Limits(max_connections=None, max_keepalive_connections=20, keepalive_expiry=5.0)


class _Deadline:
    """The moment an exchange must be over, on ``clock``."""

    __slots__ = ("at", "clock")

    def __init__(self, at: float, clock: Clock) -> None:
        self.at = at
        self.clock = clock

    def remaining(self) -> float:
        return self.at - self.clock()


def connect_backoff_seconds(retries: int) -> float:
    """The pauses between ``retries`` repeated connection attempts: httpcore waits 0 s, then 0.5 s
    doubling (``exponential_backoff`` with ``RETRIES_BACKOFF_FACTOR = 0.5`` in
    https://github.com/encode/httpcore/blob/master/httpcore/_sync/connection.py)."""
    return sum(0.5 * 2**n for n in range(retries - 1))


def exchange_seconds(timeout: Mapping[str, float | None], retries: int) -> float | None:
    """The longest one exchange may last with these per-phase timeouts (httpx's ``timeout``
    request extension): every connect attempt timing out, the pauses between them, the write and
    the read. None when a phase has no limit."""
    connect, write, read = timeout.get("connect"), timeout.get("write"), timeout.get("read")
    if connect is None or write is None or read is None:
        return None
    return (retries + 1) * connect + connect_backoff_seconds(retries) + write + read


class _DeadlineStream(httpx.SyncByteStream):
    """The answer's body, read chunk by chunk under the exchange's deadline."""

    def __init__(self, inner: httpx.SyncByteStream, deadline: _Deadline, request: httpx.Request) -> None:
        self._inner = inner
        self._deadline = deadline
        self._request = request

    def _check(self) -> None:
        if self._deadline.remaining() <= 0:
            raise httpx.ReadTimeout("the answer did not arrive within the exchange's deadline", request=self._request)

    def __iter__(self) -> Iterator[bytes]:
        chunks = iter(self._inner)
        while True:
            self._check()
            chunk = next(chunks, None)
            if chunk is None:
                return
            self._check()
            yield chunk

    def close(self) -> None:
        self._inner.close()


def pinned_request(request: httpx.Request) -> httpx.Request:
    """``request`` sent to its :data:`PINNED_ADDRESS` instead of wherever its name resolves now.

    The URL's host becomes the address, so httpcore connects there without resolving anything;
    the ``Host`` header (set by httpx from the URL when the request was built) keeps the name,
    and so does TLS through httpx's ``sni_hostname`` request extension, which httpcore uses as the
    server name for SNI and for the certificate check
    (https://www.python-httpx.org/advanced/extensions/#request-extensions). A request without
    the extension is returned as it is.

    httpcore pools connections by address and port, so a keep-alive connection verified for one
    name may carry a later request for another name pinned to the same address. That address was
    checked for both; what the pool does not repeat is the certificate check for the second name.
    """
    address = request.extensions.get(PINNED_ADDRESS)
    if not address:
        return request
    extensions = {key: value for key, value in request.extensions.items() if key != PINNED_ADDRESS}
    extensions["sni_hostname"] = request.url.raw_host.decode("ascii")
    return httpx.Request(
        request.method,
        request.url.copy_with(host=str(address)),
        headers=request.headers,
        stream=request.stream,
        extensions=extensions,
    )


class DeadlineTransport(httpx.BaseTransport):
    """``httpx.HTTPTransport`` whose exchanges end within :func:`exchange_seconds`.

    Parameters:
      retries(int): connection attempts repeated after a failure to connect (nothing sent).
      verify(ssl.SSLContext): for ``https`` (default: httpx's, on certifi's bundle).
      clock: monotonic seconds (tests drive the deadline with their own).
    """

    def __init__(
        self, *, retries: int = 2, verify: ssl.SSLContext | None = None, clock: Clock = time.monotonic
    ) -> None:
        context = verify if verify is not None else httpx.create_ssl_context()
        self.retries = retries
        self._clock = clock
        self._inner = httpx.HTTPTransport(verify=context, retries=retries, limits=LIMITS)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request = pinned_request(request)
        limit = exchange_seconds(request.extensions.get("timeout", {}), self.retries)
        if limit is None:
            return self._inner.handle_request(request)
        deadline = _Deadline(self._clock() + limit, self._clock)
        response = self._inner.handle_request(request)
        if isinstance(response.stream, httpx.SyncByteStream):  # always, from HTTPTransport
            response.stream = _DeadlineStream(response.stream, deadline, request)
        return response

    def close(self) -> None:
        self._inner.close()
