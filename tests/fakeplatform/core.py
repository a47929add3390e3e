"""The fake server's machinery: routing, a request log, injected faults and an OAuth grant store.

Deliberately plain (``http.server`` in a thread): it has to behave like a remote platform, not
like our code, so it shares nothing with the service but HTTP. The same router also answers
in-process, as an ``httpx.MockTransport`` handler (:meth:`FakePlatformServer.handle`): the unit
tier runs the very adapter tests of the full tier without a socket.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import io
import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import httpx


@dataclass
class FakeRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    match: dict[str, str] = field(default_factory=dict)

    @property
    def form(self) -> dict[str, str]:
        ctype = self.headers.get("content-type", "")
        if "application/x-www-form-urlencoded" in ctype:
            return {k: v[-1] for k, v in parse_qs(self.body.decode(), keep_blank_values=True).items()}
        return {}

    @property
    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            return None

    @property
    def params(self) -> dict[str, str]:
        """Query and form fields together (Meta accepts either)."""
        return {**self.query, **self.form}

    def bearer(self) -> str | None:
        auth = self.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return self.query.get("access_token") or self.form.get("access_token")

    def basic(self) -> tuple[str, str] | None:
        auth = self.headers.get("authorization", "")
        if not auth.lower().startswith("basic "):
            return None
        try:
            user, _, password = base64.b64decode(auth[6:].strip()).decode().partition(":")
        except ValueError:
            return None
        return user, password


@dataclass
class FakeResponse:
    status: int = 200
    body: Any = None  # dict/list -> JSON; str -> text; bytes as is
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self) -> tuple[bytes, str]:
        if isinstance(self.body, bytes):
            return self.body, "application/octet-stream"
        if isinstance(self.body, str):
            return self.body.encode(), "text/plain; charset=utf-8"
        if self.body is None:
            return b"", "text/plain"
        return json.dumps(self.body).encode(), "application/json"


Handler = Callable[[FakeRequest], FakeResponse]

#: a route's first path segment taken literally when it is made of these (no ``{name}``, no regex
#: metacharacter: a ``.`` in a pattern matches any character, so ``/.well-known/...`` is no literal)
_LITERAL_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class _Route:
    method: str
    regex: re.Pattern[str]
    handler: Handler
    first: str | None  # the pattern's literal first path segment; None: it may match any


def _first_segment(path: str) -> str | None:
    """``"twitter"`` for ``/twitter/2/...``; None for a path that does not start with ``/``."""
    if not path.startswith("/"):
        return None
    return path.split("/", 2)[1]


@dataclass
class Fault:
    prefix: str
    response: FakeResponse
    times: int
    delay: float = 0.0


class FakePlatformServer:
    """One loopback server for every fake platform (or, with ``listen=False``, the same router
    answering in-process through :meth:`handle` and :meth:`client`, no socket at all).

    ``route(method, pattern)`` registers a handler; ``{name}`` in the pattern matches a path
    segment. ``fail(prefix, response, times)`` makes the next ``times`` requests whose path starts
    with ``prefix`` answer ``response`` instead (429s, 5xx, Meta 190...). ``delay`` makes every
    answer leave that long after its request line arrived, the fake's own work included
    (benchmarks: a platform that answers after 20 ms). ``requests`` records everything seen,
    for counting calls.
    """

    #: where an in-process fake "lives": an address literal (no DNS), answered by :meth:`handle` only
    IN_PROCESS_URL = "http://127.0.0.1:9"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, listen: bool = True) -> None:
        self._routes: list[_Route] = []
        # (method, first path segment) -> the routes that may match such a request, in registration
        # order: a request tries a handful of regexes instead of all ~40 (see ``_candidates``)
        self._route_index: dict[tuple[str, str | None], list[_Route]] = {}
        self._literals: set[str] = set()  # the literal first segments of the routes
        self._faults: list[Fault] = []
        self._extra_headers: list[tuple[str, dict[str, str]]] = []
        self._lock = threading.Lock()
        self.requests: list[FakeRequest] = []
        self.delay = 0.0
        self.grants = GrantStore()
        self._httpd: ThreadingHTTPServer | None = None
        if listen:
            self._httpd = ThreadingHTTPServer((host, port), self._handler_class())
            self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # ---- lifecycle --------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            return self.IN_PROCESS_URL
        host, port = self._httpd.server_address[:2]
        assert isinstance(host, str)  # an AF_INET server's address (typeshed also allows bytes)
        return f"http://{host}:{port}"

    def start(self) -> FakePlatformServer:
        if self._httpd is not None:
            self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-platform", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def client(self, **kwargs: Any) -> httpx.Client:
        """An ``httpx.Client`` that reaches this fake: over loopback when it listens, else through
        :meth:`handle` (``kwargs`` go to the client: ``event_hooks``...)."""
        if self._httpd is None:
            kwargs.setdefault("transport", httpx.MockTransport(self.handle))
        return httpx.Client(**kwargs)

    def handle(self, request: httpx.Request) -> httpx.Response:
        """The in-process fake, as an ``httpx.MockTransport`` handler: what the loopback server would
        answer, without a socket.

        A request to any other address fails as a refused connection would (``ConnectError``:
        nothing was sent). An answer held back (``delay``, a fault's delay) as long as the client's
        read timeout or longer is a ``ReadTimeout`` at once: the fake has handled the request (a
        code is spent) and the answer is lost, as over the network, without the wait.
        """
        if request.url.netloc.decode("ascii") != urlsplit(self.base_url).netloc:
            raise httpx.ConnectError("connection refused: no fake listens there", request=request)
        parts = urlsplit(request.url.raw_path.decode("ascii"))
        fake_request = FakeRequest(
            method=request.method,
            path=parts.path,
            query=_last_values(parts.query),
            headers=dict(request.headers.items()),  # httpx gives lower-cased names
            body=request.read(),
        )
        try:
            response, held = self._answer(fake_request)
        except Exception as exc:  # a bug in the fake must show, as the server's 500 does
            response, held = FakeResponse(500, {"error": "fake_crashed", "detail": repr(exc)}), 0.0
        held = max(held, self.delay)
        read_timeout = (request.extensions.get("timeout") or {}).get("read")
        if held and read_timeout is not None and held >= read_timeout:
            raise httpx.ReadTimeout("the fake's answer came after the read timeout", request=request)
        payload, ctype = response.encode()
        headers = {"content-type": ctype, **{k.lower(): v for k, v in response.headers.items()}}
        headers["date"] = email.utils.formatdate(usegmt=True)
        return httpx.Response(response.status, headers=headers, content=payload)

    # ---- configuration ----------------------------------------------------------------------

    def route(self, method: str, pattern: str) -> Callable[[Handler], Handler]:
        regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$")

        first = _first_segment(pattern)
        literal = first if first is not None and _LITERAL_SEGMENT.fullmatch(first) else None

        def register(handler: Handler) -> Handler:
            self._routes.append(_Route(method.upper(), regex, handler, literal))
            if literal is not None:
                self._literals.add(literal)
            self._route_index = {}  # rebuilt lazily
            return handler

        return register

    def fail(self, prefix: str, response: FakeResponse, times: int = 1, delay: float = 0.0) -> None:
        with self._lock:
            self._faults.append(Fault(prefix, response, times, delay))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._extra_headers.clear()

    def add_headers(self, prefix: str, headers: dict[str, str]) -> None:
        """Answers to paths starting with ``prefix`` carry ``headers`` too (rate-limit signals on a
        success: ``x-rate-limit-remaining: 0``, Meta usage...). Cleared with the faults."""
        with self._lock:
            self._extra_headers.append((prefix, dict(headers)))

    def count(self, path: str, method: str | None = None) -> int:
        """How many requests reached ``path`` (exact path, or a prefix ending in ``*``)."""
        with self._lock:
            seen = list(self.requests)
        if path.endswith("*"):
            hits = [r for r in seen if r.path.startswith(path[:-1])]
        else:
            hits = [r for r in seen if r.path == path]
        return len([r for r in hits if method is None or r.method == method.upper()])

    def reset_log(self) -> None:
        with self._lock:
            self.requests.clear()

    # ---- dispatch ---------------------------------------------------------------------------

    def dispatch(self, request: FakeRequest) -> FakeResponse:
        """The answer to ``request``, after its fault's delay (the loopback server's path)."""
        response, held = self._answer(request)
        if held:
            time.sleep(held)
        return response

    def _answer(self, request: FakeRequest) -> tuple[FakeResponse, float]:
        """Log ``request`` and answer it: ``(response, seconds a fault holds it back)``."""
        with self._lock:
            self.requests.append(request)
            fault = next((f for f in self._faults if request.path.startswith(f.prefix)), None)
            if fault is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
        if fault is not None:
            return fault.response, fault.delay
        for route in self._candidates(request.method, request.path):
            m = route.regex.match(request.path)
            if m:
                request.match = m.groupdict()
                return self._with_extra_headers(request.path, route.handler(request)), 0.0
        return FakeResponse(404, {"error": "not_found", "path": request.path}), 0.0

    def _candidates(self, method: str, path: str) -> list[_Route]:
        """The routes of ``method`` that can match ``path``, first registered first: those whose
        literal first segment is the path's, and those without one. The first of them whose regex
        matches wins, exactly as when every route was tried in turn."""
        index = self._route_index
        first = _first_segment(path)
        if first not in self._literals:
            first = None  # only the routes without a literal first segment can match it
        candidates = index.get((method, first))
        if candidates is None:  # the lists are rebuilt as requests come; racing threads agree
            candidates = [r for r in self._routes if r.method == method and r.first in (None, first)]
            index[(method, first)] = candidates
        return candidates

    def _with_extra_headers(self, path: str, response: FakeResponse) -> FakeResponse:
        with self._lock:
            extra = [headers for prefix, headers in self._extra_headers if path.startswith(prefix)]
        if not extra:
            return response
        merged = dict(response.headers)
        for headers in extra:
            merged.update(headers)
        return FakeResponse(response.status, response.body, merged)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(_QuickHandler):
            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.content_length or 0)
                body = self.rfile.read(length) if length else b""
                request = FakeRequest(
                    method=self.command,
                    path=parts.path,
                    query=_last_values(parts.query),
                    headers=self.fields,
                    body=body,
                )
                try:
                    response = server.dispatch(request)
                except Exception as exc:  # a bug in the fake must show, not hang the test
                    response = FakeResponse(500, {"error": "fake_crashed", "detail": repr(exc)})
                payload, ctype = response.encode()
                # ``delay`` is when the answer leaves, counted from the request's arrival: the
                # fake's own work (and its threads queueing for one GIL) is part of it, not added
                wait = server.delay - (time.monotonic() - self.received)
                if wait > 0:
                    time.sleep(wait)
                headers = {"content-type": ctype, **{k.lower(): v for k, v in response.headers.items()}}
                head = self._head(response.status, headers, len(payload))
                try:
                    self.wfile.write(head + payload)  # one write, one segment
                except (BrokenPipeError, ConnectionResetError):  # the client timed out first (timeout tests)
                    self.close_connection = True

            do_GET = do_POST = do_DELETE = do_PUT = _serve

        return Handler


# ---- the HTTP side --------------------------------------------------------------------------
#
# ``BaseHTTPRequestHandler`` does the socket plumbing, but its per-request path is costly for a
# server the benchmarks call ~500 times a second next to the system under test on 2 cores: it
# parses headers with the ``email`` package (the larger part of the fake's CPU per request),
# formats a Date for every answer and sends headers and body in two writes. ``_QuickHandler``
# reads the ordinary request -- ``METHOD target HTTP/1.x`` and plain ``Name: value`` header lines,
# all already received -- with one regex instead, and writes each answer at once, with the very
# bytes and keep-alive decisions the stdlib's code would produce. Any other request (HTTP/0.9, a
# malformed line, folded or repeated headers, headers still arriving...) goes the stdlib's way.

#: http.client's limits on request header lines (its private ``_MAXLINE`` and ``_MAXHEADERS``)
_MAX_LINE = 65536
_MAX_HEADERS = 100
#: one plain header line, ``Name: value``, as the ``email`` parser behind
#: ``http.client.parse_headers`` reads it: a name of printable ASCII but ":" (its header-line
#: pattern), and a value kept from its first character past the spaces and tabs after the colon
#: (its compat32 policy) -- a value of printable characters only: ``str.splitlines``, which that
#: parser uses, also breaks lines at ``\r``, ``\x0b``, ``\x1c``, ``\x85``...
_FIELD = r"([!-9;-~]+):[ \t]*([ -~\xa1-\xac\xae-\xff]*)\r?\n"
_FIELD_LINE = re.compile(_FIELD)
#: a header block of such lines only, up to the blank line that ends it. Each line is one
#: ``readline()`` (no ``\n`` but at its end) and none is blank, so the match stops exactly where
#: http.client's line reading would, and fails if any line before that is not a plain one.
#: (On bytes: the read buffer may hold a body too, only the headers are worth decoding.)
_SIMPLE_HEADERS = re.compile(rf"(?:{_FIELD})*\r?\n".encode("latin-1"))


def _last_values(query: str) -> dict[str, str]:
    """``a=1&a=2&b=`` -> ``{"a": "2", "b": ""}``."""
    if not query:  # most requests: skip parse_qs's own overhead
        return {}
    return {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}


_date_cache: tuple[int, bytes] = (-1, b"")


def _date_line() -> bytes:
    """The ``Date`` line ``send_response`` writes, formatted once a second rather than per answer."""
    global _date_cache
    cached = _date_cache  # one read: another thread may replace it meanwhile
    second = int(time.time())
    if cached[0] != second:
        cached = (second, f"Date: {email.utils.formatdate(second, usegmt=True)}\r\n".encode("latin-1"))
        _date_cache = cached
    return cached[1]


class _QuickHandler(BaseHTTPRequestHandler):
    """``BaseHTTPRequestHandler`` with a cheap path for ordinary requests (see above).

    After ``parse_request``, ``fields`` holds the headers (lower-cased names), ``content_length``
    the first Content-Length and ``received`` when the request line arrived.
    """

    protocol_version = "HTTP/1.1"
    # answers leave in one write; the stdlib's error pages and "100 Continue" still take two,
    # and with Nagle on the second would wait ~40 ms for the client's delayed ACK
    disable_nagle_algorithm = True

    raw_requestline: bytes  # set by handle_one_request (not in typeshed)
    fields: dict[str, str]
    content_length: str | None
    received: float
    #: status code -> status line and Server line, as send_response writes them
    _status_lines: dict[int, bytes] = {}

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def parse_request(self) -> bool:
        """``BaseHTTPRequestHandler.parse_request``, done the short way for ``METHOD target
        HTTP/1.1`` (or 1.0) with plain header lines, to the same result."""
        self.received = time.monotonic()  # the request line is in; headers come next
        requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = requestline.split()
        if len(words) != 3 or words[2] not in ("HTTP/1.1", "HTTP/1.0"):
            return self._parse_request_stdlib()
        fields = self._buffered_simple_headers()
        if fields is None:  # unusual, or not all in yet: the stdlib's code reads them
            return self._parse_request_stdlib()
        self.requestline = requestline
        self.command, path, self.request_version = words
        self.close_connection = self.request_version == "HTTP/1.0"  # 1.1: keep-alive unless told
        self.path = "/" + path.lstrip("/") if path.startswith("//") else path  # as the stdlib (gh-87389)
        self.fields = fields
        self.content_length = fields.get("content-length")
        return self._connection_and_expect(fields.get("connection", ""), fields.get("expect", ""))

    def _buffered_simple_headers(self) -> dict[str, str] | None:
        """The request's headers as ``{lower-cased name: value}`` -- exactly what
        ``http.client.parse_headers`` would make of them -- if they are all in the read buffer
        already and plain (see ``_SIMPLE_HEADERS``); then they are consumed. Otherwise None,
        and nothing is: a folded, malformed or non-printable line, a repeated name (``.get()``
        then returns the first), too many lines for http.client's limits...
        """
        if not isinstance(self.rfile, io.BufferedReader):
            return None
        buffered = self.rfile.peek()
        block = _SIMPLE_HEADERS.match(buffered)
        if block is None or block.end() > _MAX_LINE:
            return None
        pairs = _FIELD_LINE.findall(block[0].decode("iso-8859-1"))  # http.client's decoding
        fields = {name.lower(): value for name, value in pairs}
        if len(fields) != len(pairs) or len(pairs) >= _MAX_HEADERS:
            return None
        self.rfile.read(block.end())
        return fields

    def _parse_request_stdlib(self) -> bool:
        if not super().parse_request():
            return False
        self._take_headers(self.headers)
        return True

    def _take_headers(self, message: Any) -> None:
        self.headers = message
        self.fields = {k.lower(): v for k, v in message.items()}  # a repeated name: the last one
        self.content_length = message.get("content-length")  # ... but here the first, as .get()

    def _connection_and_expect(self, connection: str, expect: str) -> bool:
        """The end of the stdlib's ``parse_request`` (our protocol_version is HTTP/1.1)."""
        if connection.lower() == "close":
            self.close_connection = True
        elif connection.lower() == "keep-alive":
            self.close_connection = False
        if expect.lower() == "100-continue" and self.request_version >= "HTTP/1.1":
            return self.handle_expect_100()
        return True

    def _head(self, status: int, headers: dict[str, str], length: int) -> bytes:
        """What ``send_response(status)``, ``send_header`` for each of ``headers`` and
        ``content-length``, then ``end_headers`` would write -- and do to keep-alive."""
        for name, value in headers.items():
            if name.lower() == "connection":  # send_header's side effect
                if value.lower() == "close":
                    self.close_connection = True
                elif value.lower() == "keep-alive":
                    self.close_connection = False
        if self.request_version == "HTTP/0.9":  # no status line, no headers
            return b""
        status_line = self._status_lines.get(status)
        if status_line is None:
            message = self.responses[status][0] if status in self.responses else ""
            status_line = self._status_lines[status] = (
                f"{self.protocol_version} {int(status)} {message}\r\nServer: {self.version_string()}\r\n"
            ).encode("latin-1", "strict")
        lines = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
        return b"".join(
            (status_line, _date_line(), lines.encode("latin-1", "strict"), b"content-length: %d\r\n\r\n" % length)
        )


# ---- OAuth grants ---------------------------------------------------------------------------


@dataclass
class Grant:
    """One user's authorization of one client: the unit a platform revokes as a whole."""

    grant_id: str
    client_id: str
    user: str
    scopes: list[str]
    revoked: bool = False
    refresh_tokens: list[str] = field(default_factory=list)  # newest last; older ones are spent


@dataclass
class IssuedCode:
    code: str
    client_id: str
    redirect_uri: str
    user: str
    scopes: list[str]
    code_challenge: str | None
    used: bool = False
    grant_id: str | None = None


class GrantStore:
    """Single-use codes bound to PKCE, access tokens with expiry, rotating refresh tokens.

    Reusing an authorization code, or a refresh token that was already rotated, revokes the whole
    grant, as RFC 6749 §4.1.2 / RFC 9700 allow and as X is reported to do.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.codes: dict[str, IssuedCode] = {}
        self.grants: dict[str, Grant] = {}
        self.access: dict[str, tuple[str, float]] = {}  # token -> (grant_id, expires at epoch)
        self.refresh_owner: dict[str, str] = {}  # refresh token -> grant_id
        self.refresh_calls = 0

    def issue_code(
        self, *, client_id: str, redirect_uri: str, user: str, scopes: list[str], code_challenge: str | None
    ) -> str:
        code = "code_" + secrets.token_urlsafe(16)
        with self.lock:
            self.codes[code] = IssuedCode(code, client_id, redirect_uri, user, scopes, code_challenge)
        return code

    def redeem_code(
        self, code: str, *, client_id: str, redirect_uri: str | None, code_verifier: str | None
    ) -> tuple[Grant | None, str | None]:
        """``(grant, None)`` on success, ``(None, error)`` with an OAuth error code otherwise."""
        with self.lock:
            issued = self.codes.get(code)
            if issued is None or issued.client_id != client_id:
                return None, "invalid_grant"
            if issued.used:
                if issued.grant_id:  # code replay: revoke what it produced
                    self.grants[issued.grant_id].revoked = True
                return None, "invalid_grant"
            if redirect_uri is not None and redirect_uri != issued.redirect_uri:
                return None, "invalid_grant"
            if issued.code_challenge is not None:
                if not code_verifier:
                    return None, "invalid_request"
                digest = hashlib.sha256(code_verifier.encode()).digest()
                if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != issued.code_challenge:
                    return None, "invalid_grant"
            issued.used = True
            grant = Grant("g_" + secrets.token_hex(6), client_id, issued.user, issued.scopes)
            issued.grant_id = grant.grant_id
            self.grants[grant.grant_id] = grant
            return grant, None

    def new_access(self, grant: Grant, lifetime: float | None, prefix: str = "at_") -> str:
        token = prefix + secrets.token_urlsafe(24)
        with self.lock:
            self.access[token] = (grant.grant_id, time.time() + lifetime if lifetime else float("inf"))
        return token

    def new_refresh(self, grant: Grant, prefix: str = "rt_") -> str:
        token = prefix + secrets.token_urlsafe(24)
        with self.lock:
            grant.refresh_tokens.append(token)
            self.refresh_owner[token] = grant.grant_id
        return token

    def check_access(self, token: str | None) -> tuple[Grant | None, str | None]:
        """``(grant, None)``, or ``(None, "invalid" | "expired" | "revoked")``."""
        if not token:
            return None, "invalid"
        with self.lock:
            entry = self.access.get(token)
            if entry is None:
                return None, "invalid"
            grant = self.grants[entry[0]]
            if grant.revoked:
                return None, "revoked"
            if entry[1] < time.time():
                return None, "expired"
            return grant, None

    def use_refresh(self, token: str | None, *, rotate: bool) -> tuple[Grant | None, str | None]:
        """Validate a refresh token. With ``rotate``, only the newest is valid and reuse of an older
        one revokes the grant. Returns ``(grant, None)`` or ``(None, "invalid_grant")``."""
        with self.lock:
            self.refresh_calls += 1
            grant_id = self.refresh_owner.get(token or "")
            if grant_id is None:
                return None, "invalid_grant"
            grant = self.grants[grant_id]
            if grant.revoked:
                return None, "invalid_grant"
            if rotate and grant.refresh_tokens and grant.refresh_tokens[-1] != token:
                grant.revoked = True
                return None, "invalid_grant"
            return grant, None

    def revoke_token(self, token: str) -> bool:
        with self.lock:
            grant_id = self.refresh_owner.get(token) or (self.access.get(token) or (None,))[0]
            if grant_id is None:
                return False
            self.grants[grant_id].revoked = True
            return True

    def expire_access(self, token: str) -> None:
        with self.lock:
            grant_id, _ = self.access[token]
            self.access[token] = (grant_id, time.time() - 1)


# ---- helpers for adapter tests (additive) ---------------------------------------------------


def follow_authorization(url: str, *, browser: httpx.Client | None = None, **fake_params: str) -> dict[str, str]:
    """Play the user's browser: open an authorization URL on the fake and return the query of
    the redirect back to ``redirect_uri`` (``code``/``state`` or ``error``...).

    ``fake_params`` are appended to the URL; fake platforms read ``fake_user`` (which of their
    users consents) and ``fake_deny=1`` (the user clicks "cancel"). Real platforms never see them.
    ``browser`` is the client to use (an in-process fake's :meth:`FakePlatformServer.client`);
    by default a new one over the network.
    """
    sep = "&" if "?" in url else "?"
    extra = "&".join(f"{k}={v}" for k, v in fake_params.items())
    target = url + (sep + extra if extra else "")
    if browser is not None:  # the caller's client stays open
        response = browser.get(target, follow_redirects=False)
    else:
        with httpx.Client() as client:
            response = client.get(target, follow_redirects=False)
    if response.status_code != 302:
        raise AssertionError(f"authorization answered {response.status_code}: {response.text[:200]}")
    query = urlsplit(response.headers["location"]).query
    return {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}


def closed_port() -> int:
    """A loopback port where nothing listens (connection refused)."""
    import socket  # binds, never connects: the unit tier's guard allows it

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unused_port_url() -> str:
    """``http://127.0.0.1:<port>`` where nothing listens (connection refused)."""
    return f"http://127.0.0.1:{closed_port()}"


# ---- pieces of the fake OAuth platforms (additive) ------------------------------------------


def oauth_error(error: str, description: str, status: int = 400, **extra: str) -> FakeResponse:
    """An RFC 6749 error answer ``{"error", "error_description", ...}`` (``extra``: TikTok's log_id)."""
    return FakeResponse(status, {"error": error, "error_description": description, **extra})


@dataclass(frozen=True)
class OAuthClient:
    """A fake platform's registered client, and the one way it must authenticate: HTTP Basic
    only (X, Pinterest: body fields alone are refused) or form fields only (``id_param`` names
    the id field: TikTok's ``client_key``)."""

    client_id: str
    client_secret: str
    auth: Literal["basic", "body"]
    id_param: str = "client_id"

    def authenticates(self, request: FakeRequest) -> bool:
        if self.auth == "basic":
            return request.basic() == (self.client_id, self.client_secret)
        form = request.form
        return form.get(self.id_param) == self.client_id and form.get("client_secret") == self.client_secret


def bearer_grant(request: FakeRequest, grants: GrantStore, client_id: str) -> tuple[Grant | None, str | None]:
    """The grant behind the request's bearer token, if it belongs to ``client_id``.

    ``(grant, None)``, or ``(None, reason)`` with :meth:`GrantStore.check_access`'s reason (None
    when the token is fine but was issued to another client).
    """
    grant, reason = grants.check_access(request.bearer())
    if grant is None or grant.client_id != client_id:
        return None, reason
    return grant, None


def token_endpoint(
    request: FakeRequest,
    grants: GrantStore,
    client: OAuthClient,
    *,
    pkce: bool = True,
    rotate: bool,
    issue: Callable[[Grant], FakeResponse],
    reissue: Callable[[Grant, str], FakeResponse] | None = None,
    bad_client: FakeResponse,
    bad_code: Callable[[str | None], FakeResponse],
    bad_refresh: FakeResponse,
    bad_grant_type: FakeResponse,
) -> FakeResponse:
    """The standard OAuth token endpoint of the fake platforms: the two grants, their refusals.

    Checks the client (:meth:`OAuthClient.authenticates`), then ``authorization_code`` (single-use,
    bound to the redirect URI and, with ``pkce``, to the challenge) or ``refresh_token``
    (``rotate``: only the newest is valid and replaying a spent one revokes the grant). A redeemed
    code is answered by ``issue``; a refresh by ``reissue(grant, refresh_token)``, or ``issue`` when
    the platform answers both alike. The refusals are the platform's own error shapes
    (``bad_code`` gets the grant store's reason).
    """
    if not client.authenticates(request):
        return bad_client
    form = request.form
    if form.get("grant_type") == "authorization_code":
        grant, error = grants.redeem_code(
            form.get("code", ""),
            client_id=client.client_id,
            redirect_uri=form.get("redirect_uri", ""),
            code_verifier=form.get("code_verifier") if pkce else None,
        )
        return issue(grant) if grant is not None else bad_code(error)
    if form.get("grant_type") == "refresh_token":
        refresh = form.get("refresh_token", "")
        grant, _ = grants.use_refresh(refresh, rotate=rotate)
        if grant is None:
            return bad_refresh
        return reissue(grant, refresh) if reissue is not None else issue(grant)
    return bad_grant_type


def revoke_endpoint(
    request: FakeRequest, grants: GrantStore, client: OAuthClient, *, bad_client: FakeResponse, revoked: FakeResponse
) -> FakeResponse:
    """An RFC 7009 revocation endpoint: the authenticated client's ``token`` (refresh or access)
    ends its whole grant; an unknown token is answered ``revoked`` all the same, as RFC 7009 says."""
    if not client.authenticates(request):
        return bad_client
    grants.revoke_token(request.form.get("token", ""))
    return revoked


def authorize_redirect(
    request: FakeRequest,
    grants: GrantStore,
    *,
    client_id: str,
    client_id_param: str = "client_id",
    scope_separator: str = " ",
    known_scopes: frozenset[str] | None = None,
    require_pkce: bool = False,
    users: frozenset[str] | None = None,
) -> FakeResponse:
    """An auto-consenting authorization endpoint shared by the fake OAuth platforms.

    Checks the client id (under the platform's parameter name), the redirect URI (any absolute
    ``.../oauth/callback``), the scope list split on the platform's separator, and PKCE where the
    platform requires it; then redirects 302 with a single-use code bound to the challenge.
    Fake-only: ``fake_user`` picks the consenting user, ``fake_deny=1`` answers ``access_denied``.
    """
    from urllib.parse import urlencode

    q = request.query
    redirect_uri = q.get("redirect_uri", "")
    if q.get(client_id_param) != client_id:
        return FakeResponse(400, f"unknown {client_id_param}")
    if not redirect_uri.startswith(("http://", "https://")) or not redirect_uri.endswith("/oauth/callback"):
        return FakeResponse(400, "redirect_uri is not registered for this client")
    if q.get("response_type") != "code":
        return FakeResponse(400, "response_type must be code")

    def back(**params: str) -> FakeResponse:
        params = {k: v for k, v in params.items() if v}
        return FakeResponse(302, "", {"location": redirect_uri + "?" + urlencode(params)})

    state = q.get("state", "")
    if q.get("fake_deny") == "1":
        return back(error="access_denied", error_description="The user denied the request", state=state)
    scopes = [s for s in q.get("scope", "").split(scope_separator) if s]
    if known_scopes is not None and (not scopes or any(s not in known_scopes for s in scopes)):
        return back(error="invalid_scope", state=state)
    challenge = q.get("code_challenge")
    if challenge and q.get("code_challenge_method") != "S256":
        return back(error="invalid_request", error_description="S256 expected", state=state)
    if require_pkce and not challenge:
        return back(error="invalid_request", error_description="code_challenge required", state=state)
    user = q.get("fake_user", "alice")
    if users is not None and user not in users:
        return FakeResponse(400, "no such fake user")
    code = grants.issue_code(
        client_id=client_id, redirect_uri=redirect_uri, user=user, scopes=scopes, code_challenge=challenge
    )
    return back(code=code, state=state)
