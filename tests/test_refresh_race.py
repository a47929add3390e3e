"""THE race: fifty concurrent refreshes of one X account whose rotating refresh token is due.

X rotates refresh tokens and (like the fake) revokes the whole grant when a spent one is used
again, so two refreshes of the same account at once would disconnect the user. Here scheduler
messages, published ``request_refresh`` messages and ``POST /v1/accounts/{id}/token`` calls hit
the account together; the messages are processed by two real worker *processes*
(``social-accounts worker``), the API calls by threads of this process. Exactly one call may
reach the token endpoint, and the account must end ``active`` with a token X accepts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from social_accounts.settings import Settings
from tests.fakeplatform import FakePlatformServer
from tests.lifecycle_support import api_client, connect, events, load, make_due, refresh_calls
from tests.pipeline_support import Pipeline
from tests.support import fake_env, stop_process_group
from tests.waiting import wait_until
from workers import messages, publish, runtime
from workers.tokens import get_valid_token

ROOT = Path(__file__).resolve().parent.parent
CLI = ROOT / ".venv" / "bin" / "social-accounts"


def worker_env(settings: Settings, fake: FakePlatformServer) -> dict[str, str]:
    """What a worker process needs: the same database, broker, namespace, keys and fake endpoints."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "COV_"))}
    env.update(fake_env(fake))
    env.update(
        DATABASE_URL=settings.database_url,
        BROKER_URL=settings.effective_broker_url,
        REDIS_NAMESPACE=settings.redis_namespace,
        TOKEN_KEYS=str(settings.token_keys),
        API_TOKEN=str(settings.api_token),
        STATE_SECRET=str(settings.state_secret),
        ALLOW_PRIVATE_NETWORK="1",
        LOG_FORMAT="json",
        LOG_LEVEL="INFO",
        WORKER_METRICS_PORT="0",
        # one refresh message in hand per process at a time, so both processes share the burst
        dramatiq_queue_prefetch="1",
        # an idle consumer backs off up to this long (ms) between polls; at Dramatiq's default
        # (1 s) one process could drain all 30 quick messages before the other looked again
        dramatiq_worker_timeout="100",
    )
    return env


class WorkerProcess:
    """One ``social-accounts worker --processes 1 --threads 8``, its log in its own file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = log.open("wb")
        self.proc = subprocess.Popen(
            [str(CLI), "worker", "--processes", "1", "--threads", "8"],
            cwd=str(ROOT),
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as a whole, by its id
        )

    def lines(self) -> list[dict[str, Any]]:
        found = []
        for raw in self.log.read_text(errors="replace").splitlines():
            try:
                found.append(json.loads(raw))
            except ValueError:
                continue
        return found

    def stop(self) -> None:
        stop_process_group(self.proc)
        self._out.close()


@pytest.fixture
def two_workers(
    pg_url: str, redis_url: str, settings_factory: Any, fake: FakePlatformServer, tmp_path: Path
) -> Iterator[tuple[Pipeline, list[WorkerProcess]]]:
    """PostgreSQL at head, a Redis namespace, two worker processes; this process only publishes."""
    from models.engine import make_engine
    from models.migrate import upgrade
    from workers import broker as broker_mod

    if sys.platform == "win32" or not CLI.exists():
        pytest.skip("needs the installed social-accounts console script")
    upgrade(pg_url)
    settings = settings_factory(database_url=pg_url, broker_url=redis_url)  # in the test's own namespace
    engine = make_engine(pg_url)
    rt = runtime.configure(settings, engine=engine)
    broker = broker_mod.setup(settings)
    env = worker_env(settings, fake)
    workers = [WorkerProcess(env, tmp_path / f"worker-{n}.log") for n in (1, 2)]
    client = redis.Redis.from_url(redis_url)
    try:
        beats = f"{settings.redis_namespace}:__heartbeats__"
        wait_until(lambda: client.zcard(beats) >= 2, timeout=60, what="two worker processes polling")
        yield Pipeline(settings, engine, broker, rt.ring, fake), workers
    finally:
        for worker in workers:
            worker.stop()
        client.close()
        broker.close()
        runtime.reset()


def queue_idle(pipe: Pipeline) -> bool:
    """No refresh message waiting, delayed or in flight in any worker."""
    client: redis.Redis = pipe.broker.client
    ns = pipe.settings.redis_namespace
    waiting = client.llen(f"{ns}:refresh") + client.llen(f"{ns}:refresh.DQ")
    in_flight = sum(int(client.scard(key)) for key in client.scan_iter(f"{ns}:__acks__.*.refresh*"))
    return waiting == 0 and in_flight == 0


def test_fifty_concurrent_refreshes_call_the_platform_once(
    two_workers: tuple[Pipeline, list[WorkerProcess]],
) -> None:
    pipe, workers = two_workers
    [account_id] = connect(pipe, "twitter")
    make_due(pipe, account_id)
    before = load(pipe, account_id).tokens
    pipe.fake.reset_log()
    pipe.fake.delay = 0.3  # a slow token endpoint keeps the window of the race open

    start = threading.Barrier(21)
    tokens: list[str] = []
    failures: list[BaseException] = []

    def api_call() -> None:
        with api_client(pipe) as client:
            start.wait()
            answer = client.post(f"/v1/accounts/{account_id}/token")
        if answer.status_code != 200:
            failures.append(AssertionError(f"token API answered {answer.status_code}: {answer.text}"))
        else:
            tokens.append(answer.json()["access_token"])

    def library_call() -> None:
        start.wait()
        tokens.append(get_valid_token(account_id).access_token)

    def guarded(fn: Any) -> Any:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # collected and asserted below
                failures.append(exc)

        return run

    threads = [threading.Thread(target=guarded(api_call)) for _ in range(10)]
    threads += [threading.Thread(target=guarded(library_call)) for _ in range(10)]
    for t in threads:
        t.start()
    start.wait()  # everyone goes at once: 20 in-process callers, then 30 messages
    for _ in range(15):
        pipe.broker.enqueue(messages.build_message(messages.REFRESH_ACCOUNT, account_id=account_id, reason="scheduled"))
        publish.request_refresh(account_id, "requested", broker=pipe.broker)
    for t in threads:
        t.join(60)
    wait_until(lambda: queue_idle(pipe), what="every refresh message processed")

    def done_lines() -> int:
        return sum(len([x for x in w.lines() if x.get("message") == "refresh done"]) for w in workers)

    wait_until(lambda: done_lines() >= 30, what="the workers' log of the 30 messages")

    assert not failures, failures
    assert refresh_calls(pipe, "twitter") == 1
    after = load(pipe, account_id)
    assert after.status == "active"
    assert after.tokens.access_token != before.access_token
    assert len(tokens) == 20 and set(tokens) == {after.tokens.access_token}
    assert len(events(pipe, account_id, "refreshed")) == 1
    assert not events(pipe, account_id, "refresh_failed")
    grant = next(g for g in pipe.fake.grants.grants.values() if after.tokens.refresh_token in g.refresh_tokens)
    assert not grant.revoked and grant.refresh_tokens[-1] == after.tokens.refresh_token
    with httpx.Client() as http:  # the stored token works at X
        me = http.get(
            f"{pipe.fake.base_url}/twitter/2/users/me", headers={"Authorization": f"Bearer {after.tokens.access_token}"}
        )
    assert me.status_code == 200
    # both worker processes took part: each logged refresh messages it handled
    for worker in workers:
        handled = [line for line in worker.lines() if line.get("message") == "refresh done"]
        assert handled, f"{worker.log.name} handled no refresh message"
    assert done_lines() == 30
