"""Helpers for the account-lifecycle tests: connected accounts on the fakes and the real PDS,
making a token due, counting platform calls, reading events and the public API view.

Accounts are connected through the real pipeline (``tests.pipeline_support``): a Dramatiq worker
on real Redis exchanges a code the fake platform issued, so every stored token is one the fake
really accepts. Only the *stored* expiry is moved to make a token due; the platform's own view of
the token is never touched unless a test says so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from starlette.testclient import TestClient

from models.repository import LoadedAccount, load_account
from models.tables import SocialAccount, SocialAccountEvent
from tests.fakeplatform import FakePlatformServer
from tests.pipeline_support import Pipeline
from workers import lifecycle_actors, retrying

#: lifecycle retries in milliseconds instead of seconds, same budgets' shape
FAST_LIFECYCLE = retrying.RetryPolicy(
    max_transient=2, max_rate_limited=3, min_backoff_ms=100, max_backoff_ms=300, max_retry_after_ms=3_600_000
)
#: short failure thresholds: two failures in a row make an account `error`
LIFECYCLE_SETTINGS: dict[str, Any] = {"error_after_failures": 2, "error_after_seconds": 0, "http_timeout_seconds": 5}


@pytest.fixture
def life(pipeline_factory: Callable[..., Pipeline], monkeypatch: pytest.MonkeyPatch) -> Pipeline:
    """The real pipeline (in-process worker, Redis, PostgreSQL, fakes) with short lifecycle settings."""
    monkeypatch.setattr(lifecycle_actors, "LIFECYCLE_POLICY", FAST_LIFECYCLE)
    return pipeline_factory(**LIFECYCLE_SETTINGS)


# ---- connecting ---------------------------------------------------------------------------------


def connect(pipe: Pipeline, platform: str, **fake_params: str) -> list[str]:
    """Connect through the worker; returns the account ids of the finished attempt."""
    attempt_id, _ = pipe.connect(platform, **fake_params)
    row = pipe.wait_for(attempt_id)
    assert row.status == "connected", row.history
    return list(row.account_ids)


def connect_mastodon(pipe: Pipeline) -> str:
    """Connect an account on the fake Mastodon instance (the fake server itself)."""
    import httpx

    from tests.fakeplatform.core import follow_authorization
    from workers import runtime
    from workers.mastodon_store import mastodon_adapter

    adapter: Any = mastodon_adapter(runtime.current())
    instance = adapter.instance_url(pipe.fake.base_url)
    attempt_id, challenge = pipe.new_attempt("mastodon", instance=instance)
    url = adapter.authorization_url(
        state=attempt_id, redirect_uri=pipe.settings.redirect_uri, code_challenge=challenge, instance=instance
    )
    assert isinstance(adapter.http, httpx.Client)
    pipe.callback(attempt_id, follow_authorization(url))
    row = pipe.wait_for(attempt_id)
    assert row.status == "connected", row.history
    return str(row.account_ids[0])


def connect_bluesky(pipe: Pipeline, pds: Any) -> tuple[str, Any]:
    """Create an account on the reference PDS and connect it with its app password."""
    person = pds.create_account()
    return login_bluesky(pipe, person), person


def login_bluesky(pipe: Pipeline, person: Any) -> str:
    """Connect (again) a PDS account with its app password; returns the account id."""
    from workers.publish import enqueue_bluesky_login

    attempt_id, _ = pipe.new_attempt("bluesky", instance=person.handle, app_password=person.app_password)
    enqueue_bluesky_login(attempt_id, broker=pipe.broker)
    row = pipe.wait_for(attempt_id)
    assert row.status == "connected", row.history
    return str(row.account_ids[0])


def bluesky_settings(pds: Any) -> dict[str, Any]:
    return {"bluesky_service_url": pds.service_url, "bluesky_plc_url": pds.plc_url}


# ---- reading and shaping state ------------------------------------------------------------------


class ShiftedClock:
    """A runtime clock (``Runtime.clock``): the real time plus ``offset``, which a test moves on."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


def load(pipe: Pipeline, account_id: str) -> LoadedAccount:
    with Session(pipe.engine, expire_on_commit=False) as session:
        account = load_account(session, pipe.ring, account_id)
    assert account is not None
    return account


def raw_row(pipe: Pipeline, account_id: str) -> SocialAccount:
    """The row as stored (ciphertexts, not decrypted)."""
    with Session(pipe.engine, expire_on_commit=False) as session:
        row = session.get(SocialAccount, account_id)
    assert row is not None
    return row


def make_due(pipe: Pipeline, account_id: str, *, seconds_left: float = 60.0) -> None:
    """Let the stored token expire in ``seconds_left``, issued long ago: due for every platform."""
    with Session(pipe.engine) as session, session.begin():
        row = session.get(SocialAccount, account_id)
        assert row is not None
        now = datetime.now(UTC)
        row.token_expires_at = now + timedelta(seconds=seconds_left)
        row.token_metadata = {**row.token_metadata, "issued_at": (now - timedelta(days=90)).isoformat()}
        row.next_refresh_at = now


def events(pipe: Pipeline, account_id: str, kind: str | None = None) -> list[SocialAccountEvent]:
    with Session(pipe.engine, expire_on_commit=False) as session:
        query = sa.select(SocialAccountEvent).where(SocialAccountEvent.account_id == account_id)  # type: ignore[arg-type]
        found = list(session.scalars(query.order_by(SocialAccountEvent.created_at)))  # type: ignore[arg-type]
    return [e for e in found if kind is None or e.kind == kind]


def path_of(pipe: Pipeline, platform: str, kind: str) -> str:
    url = pipe.settings.endpoint(platform, kind)
    assert url, f"{platform} has no {kind} on the fake"
    return urlsplit(url).path


def calls(fake: FakePlatformServer, path: str, *, method: str | None = None, **form: str) -> int:
    """Requests to ``path`` (prefix when it ends in ``*``) whose query/form holds ``form``."""
    with fake._lock:
        seen = list(fake.requests)
    hits = [r for r in seen if (r.path.startswith(path[:-1]) if path.endswith("*") else r.path == path)]
    return len(
        [
            r
            for r in hits
            if (method is None or r.method == method) and all(r.params.get(k) == v for k, v in form.items())
        ]
    )


def refresh_calls(pipe: Pipeline, platform: str) -> int:
    return calls(pipe.fake, path_of(pipe, platform, "token_url"), grant_type="refresh_token")


# ---- the HTTP API ---------------------------------------------------------------------------------


def api_client(pipe: Pipeline) -> TestClient:
    """A TestClient of the real app sharing the pipeline's database, broker and settings."""
    from web_callback.app import create_app

    app = create_app(pipe.settings, broker=pipe.broker, engine=pipe.engine)
    client = TestClient(app)
    client.headers["Authorization"] = f"Bearer {pipe.settings.api_token}"
    return client


@pytest.fixture
def api(life: Pipeline) -> Iterator[TestClient]:
    with api_client(life) as client:
        yield client
