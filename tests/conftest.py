"""Shared fixtures: real PostgreSQL, real Redis, the fake platform server, settings.

PostgreSQL and Redis are real. Locally a test that needs one skips when it does not answer; under
CI (``CI=true``) it fails instead, so a green CI run always means the real services were used.
"""

from __future__ import annotations

import base64
import importlib
import os
import pkgutil
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from social_accounts.settings import Settings
from tests.fakeplatform import FakePlatformServer

PG_ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

#: every attempt error code of CONTRACT.md (written out here, not read from the code under test)
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


# ---- PostgreSQL ------------------------------------------------------------------------------


def _admin_connect() -> Any:
    import psycopg

    try:
        return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError:
        unavailable("PostgreSQL")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
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
def redis_url() -> Iterator[str]:
    """The test Redis database, flushed before and after."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError:
        unavailable("Redis")
    client.flushdb()
    yield REDIS_URL
    client.flushdb()
    client.close()


# ---- the fake platform -----------------------------------------------------------------------


def _platform_modules() -> list[Any]:
    import tests.fakeplatform as pkg

    names = [m.name for m in pkgutil.iter_modules(pkg.__path__) if m.name != "core"]
    return [importlib.import_module(f"tests.fakeplatform.{name}") for name in sorted(names)]


@pytest.fixture(scope="session")
def fake_platform() -> Iterator[FakePlatformServer]:
    """One fake server for the whole session, every platform module installed on it."""
    server = FakePlatformServer()
    for module in _platform_modules():
        module.install(server)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fake(fake_platform: FakePlatformServer) -> Iterator[FakePlatformServer]:
    """The session's fake server with a clean request log and no leftover faults."""
    fake_platform.clear_faults()
    fake_platform.reset_log()
    fake_platform.delay = 0.0
    yield fake_platform
    fake_platform.clear_faults()
    fake_platform.delay = 0.0


def fake_env(server: FakePlatformServer) -> dict[str, str]:
    """Settings values that point every OAuth platform at the fake server, with test credentials."""
    env: dict[str, str] = {}
    for module in _platform_modules():
        env.update(module.settings_env(server.base_url))
    return env


@pytest.fixture
def settings_factory(fake_platform: FakePlatformServer) -> Any:
    """Build a Settings pointing at the fake platform; keyword arguments override anything."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "api_token": "test-api-token",
            "state_secret": "test-state-secret",
            "token_keys": f"k1:{new_key()}",
            "allow_private_network": True,
            "public_url": "http://127.0.0.1:8000",
        }
        values.update({k.lower(): v for k, v in fake_env(fake_platform).items()})
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return build


# ---- the reference Bluesky PDS (tests/peers) --------------------------------------------------

from tests.peers.pds import pds  # noqa: E402,F401  (session fixture: the real PDS on loopback)

# ---- the scheduler tests' own Redis DB and a migrated engine ----------------------------------


#: Redis DB for the scheduler tests. Other suites ``FLUSHDB`` the shared test DB (``redis_url``) before
#: and after each test; run at the same time on one machine, they would wipe our queues mid-test.
#: Same server, a DB of our own, and every key under a ``sched-test-`` namespace we delete after.
SCHED_REDIS_DB = 13


@pytest.fixture
def sched_redis_url(redis_url: str) -> Iterator[str]:
    import redis

    url = redis_url.rsplit("/", 1)[0] + f"/{SCHED_REDIS_DB}"
    yield url
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match="sched-test-*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def engine(pg_url: str) -> Iterator[Any]:
    """A fresh PostgreSQL database migrated to head, and an engine on it."""
    from models.engine import make_engine
    from models.migrate import upgrade

    upgrade(pg_url)
    eng = make_engine(pg_url)
    yield eng
    eng.dispose()
