"""The test tiers themselves: the unit tier's guard, the in-process fake platform, and the Redis
namespace a test's keys live under."""

from __future__ import annotations

import socket
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from tests.conftest import ServiceTouched, pytest_collection_modifyitems
from tests.fakeplatform import FakePlatformServer, FakeResponse
from tests.support import delete_namespace

# ---- the unit tier's guard -----------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("port", [5432, 6379, 5672, 80])
def test_a_unit_test_cannot_open_a_connection(port: int, service_guard: list[str]) -> None:
    with pytest.raises(ServiceTouched), socket.socket() as sock:
        sock.connect(("127.0.0.1", port))
    with pytest.raises(ServiceTouched):
        socket.create_connection(("127.0.0.1", port), timeout=1)
    assert len(service_guard) == 2 and str(port) in service_guard[0]
    service_guard.clear()  # seen and expected: the test passes


@pytest.mark.unit
def test_a_unit_test_cannot_reach_postgresql_or_start_a_process(service_guard: list[str]) -> None:
    import psycopg

    with pytest.raises(ServiceTouched):
        psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", connect_timeout=1)
    with pytest.raises(ServiceTouched):
        subprocess.run([sys.executable, "-c", "pass"], check=False)
    assert [what.split(" ")[0] for what in service_guard] == ["a", "process"]
    service_guard.clear()


@pytest.mark.unit
def test_redis_py_against_the_guard_fails_loudly(service_guard: list[str]) -> None:
    """A client library that wraps the error (redis-py) still cannot hide the attempt."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    with pytest.raises((ServiceTouched, redis.ConnectionError)):
        client.ping()
    assert service_guard and "6379" in service_guard[0]
    service_guard.clear()
    client.close()


def test_outside_the_unit_tier_nothing_is_guarded(service_guard: list[str]) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=5):
            pass
    assert service_guard == []


def _item(nodeid: str, unit: bool, fixtures: list[str]) -> Any:
    return SimpleNamespace(
        nodeid=nodeid,
        fixturenames=fixtures,
        get_closest_marker=lambda name: object() if unit and name == "unit" else None,
    )


@pytest.mark.unit
def test_a_unit_test_asking_for_a_service_fixture_is_a_collection_error() -> None:
    fine = [_item("t::a", True, ["settings_factory", "fake"]), _item("t::b", False, ["pg_url", "redis_url"])]
    pytest_collection_modifyitems(None, fine)  # type: ignore[arg-type]
    wrong = [*fine, _item("t::c", True, ["engine", "pg_url"])]
    with pytest.raises(pytest.UsageError, match="t::c uses pg_url"):
        pytest_collection_modifyitems(None, wrong)  # type: ignore[arg-type]


# ---- the in-process fake platform -----------------------------------------------------------------


@pytest.fixture
def lone_fake() -> FakePlatformServer:
    server = FakePlatformServer(listen=False)

    @server.route("POST", "/p/token")
    def token(request: Any) -> FakeResponse:
        return FakeResponse(200, {"got": request.form, "q": request.query}, {"X-Rate": "7"})

    return server


@pytest.mark.unit
def test_the_in_process_fake_answers_as_the_server_would(lone_fake: FakePlatformServer) -> None:
    with lone_fake.client() as client:
        response = client.post(f"{lone_fake.base_url}/p/token?a=1&a=2", data={"code": "c d"})
    assert response.status_code == 200
    assert response.json() == {"got": {"code": "c d"}, "q": {"a": "2"}}
    assert response.headers["x-rate"] == "7" and response.headers["content-type"] == "application/json"
    assert lone_fake.count("/p/token", "POST") == 1
    assert lone_fake.requests[0].headers["content-type"] == "application/x-www-form-urlencoded"


@pytest.mark.unit
def test_another_address_is_refused_and_a_late_answer_times_out(lone_fake: FakePlatformServer) -> None:
    with lone_fake.client() as client:
        with pytest.raises(httpx.ConnectError):
            client.post("http://127.0.0.1:1/p/token")
        assert lone_fake.requests == []  # nothing was sent

        lone_fake.fail("/p/token", FakeResponse(200, {"late": True}), delay=5.0)
        with pytest.raises(httpx.ReadTimeout):
            client.post(f"{lone_fake.base_url}/p/token", timeout=1.0)
        assert lone_fake.count("/p/token") == 1  # it arrived: the answer was what got lost

        lone_fake.fail("/p/token", FakeResponse(200, {"slow": True}), delay=0.5)
        assert client.post(f"{lone_fake.base_url}/p/token", timeout=1.0).json() == {"slow": True}


# ---- the Redis namespace of a test --------------------------------------------------------------


def test_a_namespace_is_deleted_alone(redis_url: str, redis_namespace: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    neighbour = f"{redis_namespace}x"  # shares the prefix, is another namespace
    try:
        client.set(f"{redis_namespace}:refresh", 1)
        client.set(f"{redis_namespace}-1:cooldown:twitter:app", 1)
        client.set(f"{neighbour}:refresh", 1)
        assert delete_namespace(client, redis_namespace) == 2
        assert client.exists(f"{redis_namespace}:refresh", f"{redis_namespace}-1:cooldown:twitter:app") == 0
        assert client.exists(f"{neighbour}:refresh") == 1
    finally:
        client.delete(f"{neighbour}:refresh")
        client.close()
