"""Plain helpers the tests share (fixtures are in ``conftest.py``): where the services are, the
contract's error codes, skipping or failing when a service does not answer, the fake platforms'
settings."""

from __future__ import annotations

import base64
import contextlib
import importlib
import json
import logging
import os
import pkgutil
import shutil
import signal
import subprocess
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from tests.fakeplatform import FakePlatformServer

PG_ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

#: every attempt error code the README documents (written out here, not read from the code under test)
CONTRACT_CODES = (
    "access_denied",
    "state_invalid",
    "state_expired",
    "state_reused",
    "token_exchange_failed",
    "exchange_uncertain",
    "profile_fetch_failed",
    "save_failed",
    "login_failed",
    "instance_unreachable",
    "timeout",
)


def unavailable(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} is required in CI but does not answer")
    pytest.skip(f"{what} does not answer")


def new_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def platform_modules() -> list[Any]:
    import tests.fakeplatform as pkg

    names = [m.name for m in pkgutil.iter_modules(pkg.__path__) if m.name != "core"]
    return [importlib.import_module(f"tests.fakeplatform.{name}") for name in sorted(names)]


def fake_env(server: FakePlatformServer) -> dict[str, str]:
    """Settings values that point every OAuth platform at the fake server, with test credentials."""
    env: dict[str, str] = {}
    for module in platform_modules():
        env.update(module.settings_env(server.base_url))
    return env


def delete_namespace(client: Any, namespace: str) -> int:
    """Delete every key of ``namespace`` (and of its sub-namespaces ``<namespace>-...``) from the
    Redis ``client``'s database, and no other; returns how many went."""
    keys = [k for k in client.scan_iter(match=f"{namespace}*", count=1000) if _in_namespace(k, namespace)]
    return int(client.delete(*keys)) if keys else 0


def _in_namespace(key: bytes | str, namespace: str) -> bool:
    text = key.decode() if isinstance(key, bytes) else key
    return text == namespace or text.startswith((f"{namespace}:", f"{namespace}-", f"{namespace}."))


def queued_messages(broker: Any, queue: str) -> list[dict[str, Any]]:
    """The messages waiting on ``queue``: a ``RedisBroker``'s (its list and payload hash, in its
    namespace) or a ``StubBroker``'s (its in-memory queue), as Dramatiq's message dicts."""
    from dramatiq.brokers.stub import StubBroker

    if isinstance(broker, StubBroker):
        waiting = broker.queues.get(queue)
        return [json.loads(data) for data in list(waiting.queue)] if waiting is not None else []
    client, namespace = broker.client, broker.namespace
    ids = client.lrange(f"{namespace}:{queue}", 0, -1)
    return [json.loads(p) for p in client.hmget(f"{namespace}:{queue}.msgs", ids) if p] if ids else []


#: the backends of a test of the web app: SQLite and Dramatiq's in-memory ``StubBroker`` (the
#: unit tier), and PostgreSQL and Redis; ``web_backend`` gives ``(database_url, broker_url)``
WEB_BACKENDS = [pytest.param("memory", marks=pytest.mark.unit), "services"]


def web_backend(request: Any, tmp_path: Any) -> tuple[str, str]:
    """``(database_url, broker_url)`` for ``request.param`` (default ``services``): a fresh empty
    PostgreSQL database and Redis, or a copy of the session's migrated SQLite database (migrating
    one per test would take most of the unit tier's time) and ``memory://``."""
    if getattr(request, "param", "services") == "memory":
        copy = tmp_path / "web.db"
        shutil.copyfile(request.getfixturevalue("migrated_sqlite"), copy)
        return f"sqlite:///{copy}", "memory://"
    return request.getfixturevalue("pg_url"), request.getfixturevalue("redis_url")


@contextlib.contextmanager
def root_logging_kept() -> Iterator[logging.Logger]:
    """The root logger's handlers and level as they were, put back on leaving (for a test that
    configures logging the way a process does)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield root
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


def consume_all(broker: Any, queues: Iterable[str], *, timeout_ms: int = 1000) -> dict[str, list[Any]]:
    """Every message waiting on each of ``queues``, consumed and acked through the broker's own
    consumer, in the order it hands them out; a queue with nothing waiting is left out."""
    seen: dict[str, list[Any]] = {}
    for queue in queues:
        broker.declare_queue(queue)
        consumer = broker.consume(queue, prefetch=100, timeout=timeout_ms)
        try:
            for message in consumer:
                if message is None:
                    break
                seen.setdefault(queue, []).append(message)
                consumer.ack(message)
        finally:
            consumer.close()
    return seen


def stop_process_group(proc: subprocess.Popen[Any], *, grace: float = 30.0) -> None:
    """SIGTERM the process group ``proc`` leads (``start_new_session=True``): the parent and what it
    forked; SIGKILL it if it has not exited after ``grace`` seconds (a hung shutdown, not a speed limit)."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
