"""A real webhook receiver on loopback: an HTTP server in a thread that records every request and
answers from a plan (status and delay per request, then 200), and checks signatures with the
reference Standard Webhooks implementation (``standardwebhooks``)."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

#: the secret every test signs with (``WEBHOOK_SECRETS``)
KEY = b"k" * 32
SECRET = "whsec_" + base64.b64encode(KEY).decode()


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


@dataclass
class Receiver:
    url: str
    requests: list[Received] = field(default_factory=list)
    #: ``(status, delay seconds)`` for the next requests, in order; then 200 at once
    plan: list[tuple[int, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: requests that have arrived, answered or not yet (a delayed answer is still on its way)
    arrived: int = 0

    def answer_next(self, *answers: tuple[int, float]) -> None:
        with self.lock:
            self.plan.extend(answers)

    def delivered(self) -> list[Received]:
        """Requests answered 2xx, each verified with ``standardwebhooks`` (raises when one is not)."""
        with self.lock:
            ok = [r for r in self.requests if 200 <= r.status < 300]
        for request in ok:
            Webhook(SECRET).verify(request.body, request.headers)
        return ok

    def all(self) -> list[Received]:
        with self.lock:
            return list(self.requests)


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            with receiver.lock:
                receiver.arrived += 1
                status, delay = receiver.plan.pop(0) if receiver.plan else (200, 0.0)
            if delay:
                time.sleep(delay)
            with receiver.lock:
                receiver.requests.append(Received({k.lower(): v for k, v in self.headers.items()}, body, status))
            try:
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()
            except OSError:  # the sender is gone (a worker killed while it waited)
                self.close_connection = True

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
            return

    return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(Receiver("")))
    server.daemon_threads = True
    receiver = Receiver(f"http://127.0.0.1:{server.server_address[1]}/hooks")
    server.RequestHandlerClass = _handler(receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield receiver
    server.shutdown()
    server.server_close()
