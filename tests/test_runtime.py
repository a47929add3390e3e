"""The composition root: one ``Runtime`` per process, nothing built or installed at import.

No service is needed: SQLite in memory, the in-process broker, an ``httpx.MockTransport``. What
touches process-wide state (Dramatiq's global broker, the installed broker) runs in a fresh
interpreter, so the answer does not depend on which tests ran before.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine
from starlette.testclient import TestClient

from social_accounts.settings import Settings
from tests.support import new_key
from web_callback.app import create_app
from workers import runtime
from workers.runtime import Runtime

ROOT = Path(__file__).resolve().parent.parent


def _settings(**values: object) -> Settings:
    base: dict[str, object] = {
        "database_url": "sqlite://",
        "broker_url": "memory://",
        "api_token": "api-token",
        "state_secret": "state-secret",
        "token_keys": f"k1:{new_key()}",
    }
    return Settings(_env_file=None, **{**base, **values})  # type: ignore[arg-type]


def _fresh_python(code: str) -> str:
    """Run ``code`` in a new interpreter, in an empty directory (no ``.env``); its stdout."""
    env = {k: v for k, v in os.environ.items() if k.upper() not in {n.upper() for n in Settings.model_fields}}
    env.update(BROKER_URL="memory://", PYTHONPATH=str(ROOT))
    with tempfile.TemporaryDirectory() as empty:
        result = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            cwd=empty,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 0, result.stderr
    return result.stdout


# ---- no side effects at import ----------------------------------------------------------------


def test_importing_every_entry_point_installs_no_broker_and_actors_cannot_send_yet() -> None:
    out = _fresh_python(
        """
        import dramatiq.broker
        import service.cli, service.doctor, service.embedded, scheduler.main, web_callback.app
        import workers.actors, workers.broker, workers.lifecycle_actors
        from workers import runtime

        print("global", dramatiq.broker.global_broker)
        print("runtime", runtime._current)
        try:
            workers.actors.code_received.send(attempt_id="a")
        except RuntimeError as exc:
            print("send", exc)
        """
    )
    assert "global None" in out  # Dramatiq's implicit default (RabbitMQ when pika imports) never built
    assert "runtime None" in out
    assert "send no broker installed: cannot send code_received" in out


def test_installing_the_runtimes_broker_moves_every_actor_onto_it() -> None:
    out = _fresh_python(
        """
        import dramatiq
        import workers.actors  # declared before any broker exists
        from workers import runtime
        from workers.broker import get_broker

        rt = runtime.current()
        broker = rt.install_broker()
        print("same", broker is rt.broker is dramatiq.get_broker() is get_broker())
        print("actors", sorted(broker.actors))
        print("bound", workers.actors.code_received.broker is broker)
        workers.actors.code_received.send(attempt_id="a")
        print("queued", broker.queues["connect"].qsize())
        """
    )
    assert "same True" in out
    assert (
        "actors ['bluesky_login', 'code_received', 'deliver_webhook', 'disconnect_account', 'dispatch_events', "
        "'refresh_account', 'sync_account']"
    ) in out
    assert "bound True" in out and "queued 1" in out


def test_get_broker_installs_the_runtimes_broker_when_none_is() -> None:
    out = _fresh_python(
        """
        import dramatiq
        from workers import runtime
        from workers.broker import get_broker

        broker = get_broker()
        print("installed", broker is runtime.current().broker is dramatiq.get_broker())
        print("type", type(broker).__name__)
        """
    )
    assert "installed True" in out and "type StubBroker" in out


# ---- lazily built, injectable, closed by its owner --------------------------------------------


@pytest.mark.unit
def test_resources_are_built_on_first_use_and_closed_with_the_runtime() -> None:
    rt = Runtime(_settings())
    assert (rt._engine, rt._http, rt._broker, rt._ring) == (None, None, None, None)
    engine, http, broker = rt.engine, rt.http, rt.broker
    assert rt.engine is engine and rt.http is http and rt.broker is broker  # built once
    assert rt.ring.current_kid == "k1"
    rt.close()
    assert http.is_closed
    assert (rt._engine, rt._http, rt._broker) == (None, None, None)
    assert rt.http is not http  # built again on the next use
    rt.close()


@pytest.mark.unit
def test_a_runtime_never_closes_what_it_was_lent() -> None:
    engine = create_engine("sqlite://")
    lent_http = httpx.Client()
    rt = Runtime(_settings(), _engine=engine, _http=lent_http, lent=frozenset({"engine", "http"}))
    rt.close()
    assert rt.engine is engine and rt.http is lent_http and not lent_http.is_closed
    lent_http.close()
    engine.dispose()


@pytest.mark.unit
def test_no_redis_configured_is_one_clear_error() -> None:
    with pytest.raises(RuntimeError, match="no Redis configured"):
        Runtime(_settings()).redis  # noqa: B018


@pytest.mark.unit
def test_after_a_fork_the_process_runtime_builds_its_own_pools() -> None:
    rt = runtime.configure(_settings())
    try:
        inherited = rt.http
        rt._pid = -1  # as in a child process: the runtime was built by another pid
        assert runtime.current() is rt
        assert rt.http is not inherited and rt._pid == os.getpid()
        assert not inherited.is_closed  # the parent's sockets are left alone
    finally:
        inherited.close()
        runtime.reset()


@pytest.mark.unit
def test_configure_injects_and_reset_closes_what_was_handed_over() -> None:
    http = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(204)))
    rt = runtime.configure(_settings(), http=http, clock=lambda: None)  # type: ignore[arg-type, return-value]
    assert runtime.current() is rt and rt.http is http and rt.clock() is None
    runtime.reset()
    assert http.is_closed
    with pytest.raises(TypeError):
        runtime.configure(_settings(), cache=object())  # type: ignore[call-arg]


# ---- the web app on the container -------------------------------------------------------------


@pytest.mark.unit
def test_the_web_app_uses_the_runtime_it_is_given_and_leaves_it_open() -> None:
    rt = Runtime(_settings())
    app = create_app(runtime=rt)
    assert app.state.services is rt
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        http = rt.http
    assert not http.is_closed  # its owner (``run``, ``web``) closes it, after the worker threads stop
    rt.close()


@pytest.mark.unit
def test_the_web_apps_own_runtime_is_closed_at_shutdown_except_what_was_lent() -> None:
    engine = create_engine("sqlite://")
    app = create_app(_settings(), engine=engine)
    services: Runtime = app.state.services
    with TestClient(app):
        http = services.http
    assert http.is_closed and services._engine is engine
    engine.dispose()


@pytest.mark.unit
def test_create_app_takes_a_runtime_or_the_parts_not_both() -> None:
    with pytest.raises(TypeError):
        create_app(_settings(), runtime=Runtime(_settings()))


@pytest.mark.unit
def test_create_app_names_a_missing_secret() -> None:
    from social_accounts.errors import ConfigError

    with pytest.raises(ConfigError, match="TOKEN_KEYS is required"):
        create_app(runtime=Runtime(_settings(token_keys=None)))


@pytest.mark.unit
def test_the_scheduler_leads_where_doctor_looks_for_its_leader() -> None:
    """Leadership lives in the coordination Redis (REDIS_URL, else a Redis BROKER_URL): the one the
    doctor reads; without any Redis this process leads alone."""
    from scheduler.leader import LocalLeader, RedisLeader
    from scheduler.main import make_leader

    beside_memory = make_leader(_settings(redis_url="redis://127.0.0.1:1/0"))
    assert isinstance(beside_memory, RedisLeader)
    assert beside_memory._lock.redis.connection_pool.connection_kwargs["port"] == 1
    beside_memory._lock.redis.close()
    assert isinstance(make_leader(_settings()), LocalLeader)
