"""Helpers for tests that run the real pipeline: a Dramatiq Worker on a real RedisBroker,
PostgreSQL migrated to head, and the fake platform server.

The ``pipeline`` and ``pipeline_factory`` fixtures reach every test through ``tests/conftest.py``
(``pytest_plugins``): they configure ``workers.runtime`` with test settings, install a Redis broker
in the test's own namespace, start a worker with two threads and stop everything afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import dramatiq
import httpx
import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from models.attempts import create_attempt, load_attempt
from models.crypto import KeyRing
from models.tables import SocialAccount, SocialOAuthState
from platforms.deadline import DeadlineTransport
from platforms.oauth2 import pkce_pair
from platforms.registry import get_adapter
from social_accounts.settings import Settings
from tests.fakeplatform import FakePlatformServer
from tests.waiting import WAIT_SECONDS, wait_until

#: quick retries so failure paths finish in seconds (budgets as in production)
FAST_POLICY_KW = {"min_backoff_ms": 100, "max_backoff_ms": 1000}


class Recording(httpx.BaseTransport):
    """A transport that tells ``record`` about every request, then hands it to ``inner``."""

    def __init__(self, inner: httpx.BaseTransport, record: Callable[[httpx.Request], None]) -> None:
        self.inner = inner
        self.record = record

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.record(request)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


@dataclass
class Pipeline:
    """Everything one pipeline test touches."""

    settings: Settings
    engine: Engine
    broker: dramatiq.Broker
    ring: KeyRing
    fake: FakePlatformServer
    #: (monotonic time, method, path) of every request the workers' HTTP client sent
    sent: list[tuple[float, str, str]] = field(default_factory=list)

    # ---- driving a connect without the web app -------------------------------------------

    def new_attempt(self, platform: str, *, site_id: str = "site-1", **extra: Any) -> tuple[str, str | None]:
        """Create a pending attempt; returns ``(attempt_id, code_challenge)``."""
        verifier, challenge = pkce_pair()
        now = datetime.now(UTC)
        with Session(self.engine) as session, session.begin():
            attempt_id = create_attempt(
                session,
                self.ring,
                platform=platform,
                site_id=site_id,
                user_id="user-1",
                expires_at=now + timedelta(minutes=10),
                now=now,
                code_verifier=verifier,
                **extra,
            )
        return attempt_id, challenge

    def authorize(self, platform: str, attempt_id: str, challenge: str | None, **fake_params: str) -> dict[str, str]:
        """Follow the adapter's authorization URL on the fake; returns the callback's query."""
        with httpx.Client() as browser:
            adapter = get_adapter(platform, self.settings, browser)
            url = adapter.authorization_url(
                state=attempt_id, redirect_uri=self.settings.redirect_uri, code_challenge=challenge
            )
            if fake_params:
                url += "&" + "&".join(f"{k}={v}" for k, v in fake_params.items())
            response = browser.get(url, follow_redirects=False)
        assert response.status_code in (302, 303), response.text
        return dict(parse_qsl(urlsplit(response.headers["location"]).query))

    def callback(self, attempt_id: str, query: dict[str, str]) -> str:
        """What the web app does with the callback: encrypt the code, enqueue one message."""
        from workers.publish import enqueue_code_received

        code = query.get("code")
        return enqueue_code_received(
            self.broker,
            attempt_id=attempt_id,
            code_enc=self.encrypt_code(attempt_id, code) if code else None,
            error=query.get("error"),
            error_description=query.get("error_description"),
        )

    def encrypt_code(self, attempt_id: str, code: str) -> str:
        return self.ring.encrypt(code, table="message", column="code", row_id=attempt_id)

    def connect(self, platform: str, **fake_params: str) -> tuple[str, dict[str, str]]:
        """A full connect up to the enqueued callback; returns ``(attempt_id, callback query)``."""
        attempt_id, challenge = self.new_attempt(platform)
        query = self.authorize(platform, attempt_id, challenge, **fake_params)
        self.callback(attempt_id, query)
        return attempt_id, query

    # ---- observing -------------------------------------------------------------------------

    def attempt(self, attempt_id: str) -> SocialOAuthState:
        with Session(self.engine, expire_on_commit=False) as session:
            row = load_attempt(session, attempt_id)
        assert row is not None
        return row

    def wait_for(
        self, attempt_id: str, done: Callable[[SocialOAuthState], bool] | None = None, timeout: float = WAIT_SECONDS
    ) -> SocialOAuthState:
        """Wait until the attempt is ``done`` (default: no longer pending); returns its row."""
        done = done or (lambda row: row.status != "pending")
        seen: list[SocialOAuthState] = []

        def check() -> SocialOAuthState | None:
            seen[:] = [self.attempt(attempt_id)]
            return seen[0] if done(seen[0]) else None

        try:
            return wait_until(check, what=f"attempt {attempt_id}", timeout=timeout)
        except AssertionError:
            row = seen[0]
            raise AssertionError(f"attempt {attempt_id} still {row.status}/{row.stage}: {row.history}") from None

    def sent_to(self, path: str) -> list[float]:
        """Monotonic send times of the requests to ``path``."""
        return [at for at, _, p in self.sent if p == path]


def events(row: SocialOAuthState, name: str) -> list[dict[str, Any]]:
    return [entry for entry in row.history if entry.get("event") == name]


def token_path(pipe: Pipeline, platform: str) -> str:
    """The path of ``platform``'s token endpoint on the fake."""
    url = pipe.settings.endpoint(platform, "token_url")
    assert url
    return urlsplit(url).path


def code_exchanges(pipe: Pipeline, platform: str) -> int:
    """Token-endpoint requests that spend an authorization code (not Meta's follow-up exchange)."""
    path = token_path(pipe, platform)
    with pipe.fake._lock:
        seen = list(pipe.fake.requests)
    return len([r for r in seen if r.path == path and "code" in r.params])


def bluesky_attempt(pipe: Pipeline, handle: str, app_password: str) -> str:
    """A pending Bluesky attempt holding ``app_password`` (encrypted), as ``POST /v1/connect/bluesky`` makes it."""
    now = datetime.now(UTC)
    with Session(pipe.engine) as session, session.begin():
        return create_attempt(
            session,
            pipe.ring,
            platform="bluesky",
            site_id="site-1",
            user_id="user-1",
            expires_at=now + timedelta(minutes=10),
            now=now,
            instance=handle,
            app_password=app_password,
        )


def account_rows(pipe: Pipeline) -> list[SocialAccount]:
    """Every row of ``social_accounts``."""
    with Session(pipe.engine) as session:
        return list(session.query(SocialAccount))


@pytest.fixture
def pipeline_factory(
    pg_url: str, redis_url: str, redis_namespace: str, settings_factory: Any, fake: FakePlatformServer
) -> Iterator[Callable[..., Pipeline]]:
    """Build the pipeline with extra settings (``http_timeout_seconds=...``); one per test."""
    import workers.actors  # noqa: F401  (declares the actors, so the broker moves them)
    from models.engine import make_engine
    from models.migrate import upgrade
    from workers import broker as broker_mod
    from workers import runtime
    from workers.retrying import RetryPolicy

    upgrade(pg_url)
    started: list[tuple[dramatiq.Worker, dramatiq.Broker]] = []

    def build(**overrides: Any) -> Pipeline:
        # the test's Redis namespace; a sub-namespace of it for each further pipeline of the test
        namespace = redis_namespace + (f"-{len(started)}" if started else "")
        settings = settings_factory(database_url=pg_url, broker_url=redis_url, redis_namespace=namespace, **overrides)
        engine = make_engine(pg_url)
        pipe_sent: list[tuple[float, str, str]] = []

        def record(request: httpx.Request) -> None:
            pipe_sent.append((time.monotonic(), request.method, request.url.path))

        # the production client and transport, watched on the way to the fake platform
        http = runtime.platform_client(settings, Recording(DeadlineTransport(retries=2), record))
        rt = runtime.configure(settings, engine=engine, http=http, retry_policy=RetryPolicy(**FAST_POLICY_KW))
        broker = broker_mod.setup(settings)
        worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
        worker.start()
        started.append((worker, broker))
        return Pipeline(settings, engine, broker, rt.ring, fake, pipe_sent)

    yield build
    for worker, broker in started:
        worker.stop(timeout=10_000)
        broker.close()
    runtime.reset()


@pytest.fixture
def pipeline(pipeline_factory: Callable[..., Pipeline]) -> Pipeline:
    return pipeline_factory()
