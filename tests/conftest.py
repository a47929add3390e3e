"""Shared fixtures: real PostgreSQL, real Redis, the fake platform, settings; and the two tiers.

PostgreSQL and Redis are real. Locally a test that needs one skips when it does not answer; under
CI (``CI=true``) it fails instead, so a green CI run always means the real services were used.

Tiers: a test marked ``unit`` (``scripts/test --fast`` runs ``-m unit``) touches no service. It
may not ask for a service fixture (a collection error says which), and while it runs, opening a
connection, connecting to PostgreSQL or starting a process fails it. The fake platform answers a
unit test in-process (``httpx.MockTransport``), any other test over loopback: the ``fake`` and
``http`` fixtures pick the right one.

Redis: each test gets its own key namespace (``redis_namespace``; ``settings_factory`` uses it), and
``redis_url`` deletes only that namespace's keys afterwards, so two runs on one Redis database never
wipe each other's queues.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from social_accounts.settings import Settings, get_settings
from tests.fakeplatform import FakePlatformServer
from tests.support import (
    PG_ADMIN_URL,
    REDIS_URL,
    delete_namespace,
    fake_env,
    new_key,
    platform_modules,
    root_logging_kept,
    unavailable,
)
from workers.encoding import install_encoder

#: fixture modules shared through this conftest: the real pipeline (``pipeline``,
#: ``pipeline_factory``) and the account lifecycle on it (``life``, ``api``)
pytest_plugins = ["tests.pipeline_support", "tests.lifecycle_support", "tests.webhook_receiver"]


@pytest.fixture(autouse=True, scope="session")
def message_encoder() -> None:
    """Messages encoded as every process encodes them (``workers.encoding``), whichever broker a
    test builds; a process gets it from ``workers.broker.build_broker``."""
    install_encoder()


# ---- the unit tier ---------------------------------------------------------------------------

#: fixtures that reach a service (directly or through the fixtures that use them)
SERVICE_FIXTURES = frozenset({"pg_url", "redis_url", "fake_platform", "pds"})


def is_unit(node: pytest.Item | pytest.Collector) -> bool:
    return node.get_closest_marker("unit") is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A unit test that asks for a service fixture is an error, found before anything runs."""
    wrong = [
        f"{item.nodeid} uses {', '.join(sorted(SERVICE_FIXTURES.intersection(item.fixturenames)))}"  # type: ignore[attr-defined]
        for item in items
        if is_unit(item) and SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ()))
    ]
    if wrong:
        raise pytest.UsageError("unit tests must not use a service fixture:\n  " + "\n  ".join(wrong))


class ServiceTouched(OSError):
    """A unit test reached for the network, PostgreSQL or a process.

    An ``OSError``, as a refused connection is, so that callers clean up as they would (a socket
    closed, a pool discarded); the guard fails the test at teardown all the same.
    """


@pytest.fixture(autouse=True)
def service_guard(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """While a unit test runs, no socket connects, no PostgreSQL connection opens, no process starts.

    Each attempt raises :class:`ServiceTouched`; the test also fails at teardown when it (or the
    code under test) caught that error, so a swallowed attempt still shows. Yields the list of
    attempts (empty outside the unit tier).
    """
    touched: list[str] = []
    if not is_unit(request.node):
        yield touched
        return

    def refuse(what: str) -> ServiceTouched:
        touched.append(what)
        return ServiceTouched(f"a unit test must not touch services: {what}")

    def connect(sock: socket.socket, address: Any) -> None:
        raise refuse(f"socket connect to {address!r}")

    def connect_ex(sock: socket.socket, address: Any) -> int:
        raise refuse(f"socket connect to {address!r}")

    def popen(self: Any, args: Any, *rest: Any, **kwargs: Any) -> None:
        raise refuse(f"process {args!r}")

    def pg_connect(*args: Any, **kwargs: Any) -> Any:
        raise refuse("a PostgreSQL connection")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(subprocess.Popen, "__init__", popen)
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        pass
    else:
        monkeypatch.setattr(psycopg, "connect", pg_connect)  # the module's alias of Connection.connect
        monkeypatch.setattr(psycopg.Connection, "connect", classmethod(pg_connect))
    yield touched
    if touched:
        pytest.fail(f"a unit test touched services: {touched}")


# ---- every /v1 answer against /openapi.json -----------------------------------------------------


@pytest.fixture(autouse=True)
def openapi_answers(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Every Starlette ``TestClient`` made during a test checks each ``/v1`` answer it receives
    against the app's OpenAPI document (``tests.openapi_check``); a mismatch fails the test."""
    from starlette.testclient import TestClient

    from tests.openapi_check import AnswerCheck
    from web_callback.openapi import document

    check = AnswerCheck(document())
    original = TestClient.__init__

    def init(self: TestClient, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        hooks = self.event_hooks
        hooks["response"] = [*hooks.get("response", []), check]
        self.event_hooks = hooks

    monkeypatch.setattr(TestClient, "__init__", init)
    return check


# ---- PostgreSQL ------------------------------------------------------------------------------


def _admin_connect() -> Any:
    import psycopg

    try:
        return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError:
        unavailable("PostgreSQL")


def refuse_in_unit_tier(request: pytest.FixtureRequest, what: str) -> None:
    """Fail a unit test that reaches a service fixture at run time (``getfixturevalue``)."""
    if is_unit(request.node):
        pytest.fail(f"a unit test must not use {what}", pytrace=False)


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    refuse_in_unit_tier(request, "PostgreSQL (pg_url)")
    name = f"sa_test_{uuid.uuid4().hex[:12]}"
    with _admin_connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        with _admin_connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---- Redis -----------------------------------------------------------------------------------


@pytest.fixture
def redis_namespace() -> str:
    """This test's own Redis key namespace (``REDIS_NAMESPACE``): broker queues, locks, cooldowns
    and the leader key all live under it, and ``redis_url`` deletes them afterwards."""
    return f"sa-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_namespace: str) -> Iterator[pytest.MonkeyPatch]:
    """For the CLI tests: no setting from the outside world, every variable unset, an empty
    working directory.

    Setting then deleting records each variable, so whatever a command writes into
    ``os.environ`` (``run`` does) is removed again afterwards.
    """
    for name in Settings.model_fields:
        monkeypatch.setenv(name.upper(), "x")
        monkeypatch.delenv(name.upper())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LOG_LEVEL", "WARNING")
    monkeypatch.setenv("REDIS_NAMESPACE", redis_namespace)  # the test's own keys (conftest's redis_url)
    with root_logging_kept():
        yield monkeypatch
    get_settings.cache_clear()


@pytest.fixture
def redis_url(request: pytest.FixtureRequest, redis_namespace: str) -> Iterator[str]:
    """The test Redis database; afterwards the keys of this test's namespace are deleted (only
    those: another run may be using the same database)."""
    refuse_in_unit_tier(request, "Redis (redis_url)")
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError:
        unavailable("Redis")
    try:
        yield REDIS_URL
    finally:
        delete_namespace(client, redis_namespace)
        client.close()


# ---- the fake platform -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def fake_platform() -> Iterator[FakePlatformServer]:
    """One fake server on loopback for the whole session, every platform module installed on it."""
    server = FakePlatformServer()
    for module in platform_modules():
        module.install(server)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fake_in_process() -> FakePlatformServer:
    """The same fake platforms, answering in-process only (the unit tier's)."""
    server = FakePlatformServer(listen=False)
    for module in platform_modules():
        module.install(server)
    return server


@pytest.fixture
def fake(request: pytest.FixtureRequest) -> Iterator[FakePlatformServer]:
    """The fake platform with a clean request log and no leftover faults: in-process for a unit
    test, the loopback server for any other."""
    which = "fake_in_process" if is_unit(request.node) else "fake_platform"
    server: FakePlatformServer = request.getfixturevalue(which)
    server.clear_faults()
    server.reset_log()
    server.delay = 0.0
    yield server
    server.clear_faults()
    server.delay = 0.0


@pytest.fixture
def http(fake: FakePlatformServer) -> Iterator[httpx.Client]:
    """An HTTP client that reaches the fake platform (in-process for a unit test)."""
    with fake.client() as client:
        yield client


@pytest.fixture
def settings_factory(fake: FakePlatformServer, redis_namespace: str) -> Any:
    """Build a Settings pointing at the fake platform, in this test's Redis namespace; keyword
    arguments override anything."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "api_token": "test-api-token",
            "state_secret": "test-state-secret",
            "token_keys": f"k1:{new_key()}",
            "allow_private_network": True,
            "public_url": "http://127.0.0.1:8000",
            "redis_namespace": redis_namespace,
        }
        values.update({k.lower(): v for k, v in fake_env(fake).items()})
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return build


# ---- platform adapters ------------------------------------------------------------------------


@pytest.fixture
def make(request: pytest.FixtureRequest, settings_factory: Any, http: httpx.Client) -> Any:
    """Build the module's adapter on the fake's settings: the class comes from the test's marker
    ``@pytest.mark.adapter.with_args(TwitterAdapter)`` (a class alone would be taken for a decorated test).

    ``make(**overrides)`` overrides settings; ``make(clock=...)`` fixes the adapter's clock.
    """
    marker = request.node.get_closest_marker("adapter")
    if marker is None:
        pytest.fail("`make` needs @pytest.mark.adapter.with_args(<adapter class>) on the test or its module")
    adapter_class = marker.args[0]

    def build(clock: Any = None, **overrides: Any) -> Any:
        settings = settings_factory(**overrides)
        return adapter_class(settings, http, clock) if clock else adapter_class(settings, http)

    return build


@pytest.fixture
def adapter(make: Any) -> Any:
    """The module's adapter with default test settings."""
    return make()


@pytest.fixture(autouse=True)
def _fresh_fake_worlds(request: pytest.FixtureRequest) -> Iterator[None]:
    """Reset the fake worlds a test names (``@pytest.mark.fake_world.with_args(META)``) before and after it."""
    marker = request.node.get_closest_marker("fake_world")
    worlds = marker.args if marker is not None else ()
    for world in worlds:
        world.reset()
    yield
    for world in worlds:
        world.reset()


# ---- the reference Bluesky PDS (tests/peers) --------------------------------------------------

from tests.peers.pds import pds  # noqa: E402,F401  (session fixture: the real PDS on loopback)


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A SQLite database file migrated to head, once per session: copy it, never write to it."""
    from models.migrate import upgrade

    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


# ---- a migrated engine ------------------------------------------------------------------------


@pytest.fixture
def engine(pg_url: str) -> Iterator[Any]:
    """A fresh PostgreSQL database migrated to head, and an engine on it."""
    from models.engine import make_engine
    from models.migrate import upgrade

    upgrade(pg_url)
    eng = make_engine(pg_url)
    yield eng
    eng.dispose()


@pytest.fixture
def sqlite_engine(tmp_path: Path, migrated_sqlite: Path) -> Iterator[Any]:
    """The embedded default's database (a file, a copy of the migrated template) and an engine on it."""
    from models.engine import make_engine

    path = tmp_path / "embedded.db"
    shutil.copyfile(migrated_sqlite, path)
    eng = make_engine(f"sqlite:///{path}")
    yield eng
    eng.dispose()


@pytest.fixture
def ring() -> Any:
    """A key ring of one fresh key (``k1``)."""
    from models.crypto import KeyRing

    return KeyRing([("k1", os.urandom(32))])
