"""Crashes and outages, with the real processes: ``social-accounts worker`` subprocesses killed
with SIGKILL mid-call, a private Redis restarted with its data gone, a private PostgreSQL restarted
under load, and a platform answering 5xx for a long while.

Everything runs on servers of its own (a Redis on a free port, for the PostgreSQL restart a
cluster of its own), so nothing else on the machine is disturbed; where they cannot be started
the tests skip locally and fail in CI (``tests.support.unavailable``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dramatiq
import httpx
import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from models.attempts import create_attempt, load_attempt
from models.crypto import KeyRing
from models.engine import make_engine
from models.migrate import upgrade
from models.tables import SocialAccount, SocialAccountEvent, SocialOAuthState, table_of
from platforms.oauth2 import pkce_pair
from platforms.registry import get_adapter
from social_accounts.settings import Settings
from tests.fakeplatform import FakePlatformServer, FakeResponse
from tests.support import fake_env, new_key, unavailable
from tests.waiting import wait_until
from workers import messages
from workers.broker import build_broker
from workers.publish import enqueue_code_received

CLI = Path(sys.executable).with_name("social-accounts")
PG_BIN = Path("/usr/lib/postgresql/15/bin")
STATES = table_of(SocialOAuthState)
TOKEN_PATH = "/twitter/2/oauth2/token"
ME_PATH = "/twitter/2/users/me"
REVOKE_PATH = "/twitter/2/oauth2/revoke"
#: the workers' HTTP timeout here: short, so the refresh lock (4 x timeout + 20 s) frees sooner
HTTP_TIMEOUT = 3.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- private servers ------------------------------------------------------------------------------


class PrivateRedis:
    """A throwaway ``redis-server`` (no persistence: a restart loses every key)."""

    def __init__(self) -> None:
        if shutil.which("redis-server") is None:
            unavailable("redis-server")
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--save", "", "--appendonly", "no", "--daemonize", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_until(up, timeout=10, what="the private redis-server")
        client.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()  # SIGKILL: nothing is saved, as in a crash
            self.proc.wait(timeout=10)
            self.proc = None


class PrivatePostgres:
    """A throwaway PostgreSQL cluster owned by ``postgres``, on a free port (trust auth)."""

    def __init__(self) -> None:
        if os.geteuid() != 0 or not (PG_BIN / "initdb").exists() or shutil.which("runuser") is None:
            unavailable("a private PostgreSQL cluster (root, runuser and /usr/lib/postgresql/15/bin)")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="sa-pg-"))
        shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"

    def _pg(self, *args: str, timeout: float = 60) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *args],
            check=True,
            timeout=timeout,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def init(self) -> None:
        self._pg(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()

    def start(self) -> None:
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off -c unix_socket_directories={self.dir}"
        self._pg(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.dir / "log"), "-w", "start")

    def stop(self) -> None:
        self._pg(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


# ---- worker processes -----------------------------------------------------------------------------


@dataclass
class Cluster:
    """Settings shared by this test process and its worker subprocesses."""

    settings: Settings
    env: dict[str, str]
    engine: Engine
    ring: KeyRing
    broker: dramatiq.Broker
    fake: FakePlatformServer
    workdir: Path
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    # ---- processes ----------------------------------------------------------------------------

    def start_worker(self) -> subprocess.Popen[bytes]:
        """``social-accounts worker -p 1 -t 4`` in its own process group (so kill -9 takes all of it)."""
        log = open(self.workdir / f"worker-{len(self.workers)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [str(CLI), "worker", "--processes", "1", "--threads", "4"],
            env=self.env,
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.workers.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL the worker's whole process group: the parent and its forked worker process."""
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(p.read_text(errors="replace")[-tail:] for p in sorted(self.workdir.glob("worker-*.log")))

    # ---- connects -----------------------------------------------------------------------------

    def new_attempt(self, platform: str = "twitter") -> tuple[str, str]:
        verifier, challenge = pkce_pair()
        now = datetime.now(UTC)
        with Session(self.engine) as session, session.begin():
            attempt_id = create_attempt(
                session,
                self.ring,
                platform=platform,
                site_id="site-1",
                user_id="user-1",
                expires_at=now + timedelta(minutes=10),
                now=now,
                code_verifier=verifier,
            )
        return attempt_id, challenge

    def start_connect(self, platform: str = "twitter", **fake_params: str) -> str:
        """Authorize on the fake and enqueue the callback's message; returns the attempt id."""
        attempt_id, challenge = self.new_attempt(platform)
        with httpx.Client() as browser:
            adapter = get_adapter(platform, self.settings, browser)
            url = adapter.authorization_url(
                state=attempt_id, redirect_uri=self.settings.redirect_uri, code_challenge=challenge
            )
            extra = "".join(f"&{k}={v}" for k, v in fake_params.items())
            location = browser.get(url + extra).headers["location"]
        code = dict(httpx.URL(location).params)["code"]
        code_enc = self.ring.encrypt(code, table="message", column="code", row_id=attempt_id)
        enqueue_code_received(self.broker, attempt_id=attempt_id, code_enc=code_enc)
        return attempt_id

    def attempt(self, attempt_id: str) -> SocialOAuthState:
        with Session(self.engine, expire_on_commit=False) as session:
            row = load_attempt(session, attempt_id)
        assert row is not None
        return row

    def wait_attempt(self, attempt_id: str, timeout: float = 60) -> SocialOAuthState:
        try:
            wait_until(lambda: self.attempt(attempt_id).status != "pending", timeout=timeout, what="the attempt")
        except AssertionError:
            raise AssertionError(f"{self.attempt(attempt_id).history}\n{self.logs()}") from None
        return self.attempt(attempt_id)

    def connect(self, **fake_params: str) -> str:
        row = self.wait_attempt(self.start_connect(**fake_params))
        assert row.status == "connected", row.history
        return str(row.account_ids[0])

    # ---- accounts -----------------------------------------------------------------------------

    def account(self, account_id: str) -> SocialAccount:
        with Session(self.engine, expire_on_commit=False) as session:
            row = session.get(SocialAccount, account_id)
        assert row is not None
        return row

    def events(self, account_id: str, kind: str) -> list[SocialAccountEvent]:
        with Session(self.engine, expire_on_commit=False) as session:
            query = sa.select(SocialAccountEvent).where(
                SocialAccountEvent.account_id == account_id,  # type: ignore[arg-type]
                SocialAccountEvent.kind == kind,  # type: ignore[arg-type]
            )
            return list(session.scalars(query))

    def make_due(self, account_id: str) -> None:
        with Session(self.engine) as session, session.begin():
            row = session.get(SocialAccount, account_id)
            assert row is not None
            now = datetime.now(UTC)
            row.token_expires_at = now + timedelta(seconds=60)
            row.token_metadata = {**row.token_metadata, "issued_at": (now - timedelta(days=1)).isoformat()}

    def send(self, actor: str, **kwargs: Any) -> None:
        self.broker.enqueue(messages.build_message(actor, **kwargs))


def _env(settings: Settings, fake: FakePlatformServer, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TZ")}
    env.update(fake_env(fake))
    env.update(
        {
            "DATABASE_URL": settings.database_url,
            "BROKER_URL": settings.effective_broker_url,
            "TOKEN_KEYS": settings.token_keys or "",
            "REDIS_NAMESPACE": settings.redis_namespace,
            "STATE_SECRET": settings.state_secret or "",
            "API_TOKEN": settings.api_token or "",
            "ALLOW_PRIVATE_NETWORK": "1",
            "PUBLIC_URL": settings.public_url,
            "HTTP_TIMEOUT_SECONDS": str(settings.http_timeout_seconds),
            "WORKER_METRICS_PORT": "0",
            "LOG_LEVEL": "INFO",
        }
    )
    env.update(extra)
    return env


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def cluster_factory(
    private_redis: PrivateRedis, fake: FakePlatformServer, tmp_path: Path
) -> Iterator[Callable[..., Cluster]]:
    built: list[Cluster] = []

    def build(database_url: str, **env_extra: str) -> Cluster:
        upgrade(database_url)
        values: dict[str, Any] = {k.lower(): v for k, v in fake_env(fake).items()}
        values.update(
            database_url=database_url,
            broker_url=private_redis.url,
            redis_namespace=f"crash-{uuid.uuid4().hex[:8]}",
            token_keys=f"k1:{new_key()}",
            state_secret="test-state-secret",
            api_token="test-api-token",
            allow_private_network=True,
            public_url="http://127.0.0.1:8000",
            http_timeout_seconds=HTTP_TIMEOUT,
        )
        settings = Settings(_env_file=None, **values)
        engine = make_engine(database_url)
        cluster = Cluster(
            settings=settings,
            env=_env(settings, fake, env_extra),
            engine=engine,
            ring=KeyRing.from_settings(settings),
            broker=build_broker(settings),
            fake=fake,
            workdir=tmp_path,
        )
        built.append(cluster)
        return cluster

    yield build
    for cluster in built:
        cluster.stop_all()
        cluster.broker.close()
        cluster.engine.dispose()


@pytest.fixture
def cluster(cluster_factory: Callable[..., Cluster], pg_url: str) -> Cluster:
    return cluster_factory(pg_url)


# ---- kill -9 in the middle of each actor ----------------------------------------------------------

#: seconds the fake holds the call the worker is killed in (the worker never sees the answer)
SLOW = 8.0
#: the broker's promise (workers/broker.py): redelivery 10-20 s after the death; plus boot time
REDELIVERY_BOUND = 45.0


def _kill_mid_call(cluster: Cluster, path: str, send: Callable[[], None]) -> float:
    """Make the fake slow on ``path``, run ``send``, kill the worker once the call is in flight,
    start a second worker; returns the kill time (monotonic)."""
    first = cluster.workers[-1]
    before = cluster.fake.count(path)
    cluster.fake.fail(path, FakeResponse(503, {"error": "slow"}), times=1, delay=SLOW)
    send()
    wait_until(lambda: cluster.fake.count(path) > before, timeout=30, what=f"the call to {path}")
    cluster.kill(first)
    killed = time.monotonic()
    cluster.start_worker()
    return killed


def test_kill_during_code_received_fetch_redelivers_and_connects_once(cluster: Cluster) -> None:
    cluster.start_worker()
    attempt: list[str] = []
    killed = _kill_mid_call(cluster, ME_PATH, lambda: attempt.append(cluster.start_connect()))
    row = cluster.wait_attempt(attempt[0], timeout=REDELIVERY_BOUND + 30)
    took = time.monotonic() - killed  # reported, not asserted: a busy machine may take longer
    assert row.status == "connected", row.history
    # the code was exchanged once (the stored token bundle served the redelivery), one account
    assert cluster.fake.count(TOKEN_PATH) == 1
    with Session(cluster.engine) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(SocialAccount)) == 1
    print(f"code_received redelivered and finished {took:.1f}s after kill -9")


def test_kill_during_the_code_exchange_never_replays_the_code(cluster: Cluster) -> None:
    cluster.start_worker()
    attempt: list[str] = []
    _kill_mid_call(cluster, TOKEN_PATH, lambda: attempt.append(cluster.start_connect()))
    row = cluster.wait_attempt(attempt[0], timeout=REDELIVERY_BOUND + 30)
    # the code may have been spent: replaying it could revoke the grant, so it ends uncertain
    assert (row.status, row.error_code) == ("failed", "exchange_uncertain"), row.history
    assert cluster.fake.count(TOKEN_PATH) == 1


def test_kill_during_refresh_redelivers_and_refreshes_exactly_once(cluster: Cluster) -> None:
    cluster.start_worker()
    account_id = cluster.connect()
    cluster.make_due(account_id)
    version = cluster.account(account_id).token_version
    real_refreshes = cluster.fake.grants.refresh_calls
    killed = _kill_mid_call(
        cluster, TOKEN_PATH, lambda: cluster.send(messages.REFRESH_ACCOUNT, account_id=account_id, reason="manual")
    )
    wait_until(
        lambda: cluster.account(account_id).token_version > version,
        timeout=REDELIVERY_BOUND + 4 * HTTP_TIMEOUT + 30,
        what="the redelivered refresh",
    )
    took = time.monotonic() - killed
    # one refresh reached the platform's grant store: the killed call never got past the fake's
    # delay, and the redelivery found the token still due and refreshed it once
    assert cluster.fake.grants.refresh_calls - real_refreshes == 1
    # the redelivered message acked: nothing is left that could refresh a second time
    refresh_store = f"{cluster.settings.redis_namespace}:refresh.msgs"
    wait_until(lambda: cluster.broker.client.hlen(refresh_store) == 0, what="the refresh message acked")
    assert cluster.fake.grants.refresh_calls - real_refreshes == 1
    account = cluster.account(account_id)
    assert account.status == "active" and account.token_version == version + 1
    assert len(cluster.events(account_id, "refreshed")) == 1
    print(f"refresh_account redelivered and finished {took:.1f}s after kill -9")


def test_kill_during_sync_redelivers_and_syncs(cluster: Cluster) -> None:
    cluster.start_worker()
    account_id = cluster.connect()
    before = cluster.account(account_id).last_synced_at
    killed = _kill_mid_call(cluster, ME_PATH, lambda: cluster.send(messages.SYNC_ACCOUNT, account_id=account_id))
    wait_until(
        lambda: cluster.account(account_id).last_synced_at != before,
        timeout=REDELIVERY_BOUND + 30,
        what="the redelivered sync",
    )
    print(f"sync_account redelivered and finished {time.monotonic() - killed:.1f}s after kill -9")
    assert cluster.account(account_id).followers_count == 1200
    assert len(cluster.events(account_id, "synced")) == 1


def test_kill_during_disconnect_redelivers_revokes_and_erases(cluster: Cluster) -> None:
    cluster.start_worker()
    account_id = cluster.connect()
    grants_before = {g.grant_id for g in cluster.fake.grants.grants.values() if g.revoked}
    killed = _kill_mid_call(
        cluster, REVOKE_PATH, lambda: cluster.send(messages.DISCONNECT_ACCOUNT, account_id=account_id)
    )
    wait_until(lambda: cluster.events(account_id, "disconnected"), timeout=REDELIVERY_BOUND + 30, what="the disconnect")
    print(f"disconnect_account redelivered and finished {time.monotonic() - killed:.1f}s after kill -9")
    account = cluster.account(account_id)
    assert account.status == "disconnected" and account.access_token is None and account.refresh_token is None
    revoked = {g.grant_id for g in cluster.fake.grants.grants.values() if g.revoked} - grants_before
    assert len(revoked) == 1  # revoked at the platform by the redelivery
    assert len(cluster.events(account_id, "disconnected")) == 1


# ---- PostgreSQL restarted under 200 connects -------------------------------------------------------


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    try:
        server.init()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError):
        server.destroy()
        unavailable("a private PostgreSQL cluster")
    yield server
    server.destroy()


def test_postgres_restart_during_200_connects(
    cluster_factory: Callable[..., Cluster], private_pg: PrivatePostgres
) -> None:
    cluster = cluster_factory(private_pg.url)
    ids = [cluster.start_connect() for _ in range(200)]
    cluster.fake.delay = 0.1  # every platform call takes a while: the run spans the restart
    cluster.start_worker()

    def connected() -> int:
        with Session(cluster.engine) as session:
            query = sa.select(sa.func.count()).select_from(STATES).where(STATES.c.status == "connected")
            return int(session.scalar(query) or 0)

    wait_until(lambda: connected() >= 20, timeout=60, what="the first connects")
    with cluster.engine.connect() as conn:
        booted = conn.scalar(sa.text("SELECT pg_postmaster_start_time()"))
    private_pg.stop()
    cluster.engine.dispose()
    time.sleep(2)
    private_pg.start()
    during = connected()
    assert during < 200, "the restart came too late to land in the middle of the run"
    wait_until(lambda: connected() == 200, timeout=180, what="all 200 connects", every=0.5)
    with Session(cluster.engine) as session:
        rows = session.scalars(sa.select(SocialOAuthState).where(STATES.c.id.in_(ids))).all()
        assert {r.status for r in rows} == {"connected"}
        assert {r.error_code for r in rows} == {None}
    assert cluster.fake.count(TOKEN_PATH) == 200  # every code exchanged exactly once
    with cluster.engine.connect() as conn:  # it really was restarted under the run
        assert conn.scalar(sa.text("SELECT pg_postmaster_start_time()")) > booted
    print(f"PostgreSQL restarted with {during}/200 connected; all 200 ended connected")


# ---- Redis restarted with its data gone ------------------------------------------------------------


def later(seconds: float) -> Callable[[], datetime]:
    """A scheduler clock ``seconds`` ahead of the real one."""
    return lambda: datetime.now(UTC) + timedelta(seconds=seconds)


def test_redis_restart_loses_messages_and_the_reconciler_and_leases_recover(
    cluster_factory: Callable[..., Cluster], pg_url: str, private_redis: PrivateRedis
) -> None:
    from scheduler.jobs import JobContext, reconcile, refresh_ahead

    cluster = cluster_factory(pg_url)
    cluster.start_worker()
    accounts = [cluster.connect(fake_user=user) for user in ("alice", "bob")]
    cluster.stop_all()  # nobody consumes: the messages below exist only in Redis

    lost_attempts = [cluster.start_connect() for _ in range(3)]
    for account_id in accounts:
        cluster.make_due(account_id)
        with Session(cluster.engine) as session, session.begin():
            row = session.get(SocialAccount, account_id)
            assert row is not None
            row.next_refresh_at = datetime.now(UTC) - timedelta(seconds=1)
    lease = 15
    short = cluster.settings.model_copy(update={"attempt_timeout_seconds": 10, "refresh_lease_seconds": lease})
    ctx = JobContext(settings=short, engine=cluster.engine, broker=cluster.broker)
    assert refresh_ahead(ctx) == 2  # claimed (lease pushed) and enqueued ...

    private_redis.stop()  # ... and lost with everything else in Redis
    private_redis.start()
    cluster.start_worker()
    versions = {a: cluster.account(a).token_version for a in accounts}
    assert refresh_ahead(ctx) == 0  # still leased: nothing is emitted twice meanwhile

    # the lost attempts end failed/timeout once they are older than ATTEMPT_TIMEOUT_SECONDS (the
    # scheduler's clock moved past it, rather than the test sleeping for it)
    assert reconcile(ctx)["timed_out"] == 0
    assert reconcile(dataclasses.replace(ctx, clock=later(11)))["timed_out"] == 3
    for attempt_id in lost_attempts:
        attempt = cluster.attempt(attempt_id)
        assert (attempt.status, attempt.error_code) == ("failed", "timeout")

    # the lost refreshes come back when their lease runs out: nothing waits on the dead messages
    assert refresh_ahead(dataclasses.replace(ctx, clock=later(lease + 1))) == 2
    wait_until(
        lambda: all(cluster.account(a).token_version > versions[a] for a in accounts),
        timeout=60,
        what="the re-emitted refreshes",
    )
    now = datetime.now(UTC)
    for account_id in accounts:
        account = cluster.account(account_id)
        assert account.status == "active"
        # a fresh token's next refresh lies before its expiry: no lease that never ends
        assert account.next_refresh_at is not None and account.token_expires_at is not None
        assert now < account.next_refresh_at < account.token_expires_at


# ---- a long platform outage ----------------------------------------------------------------------


def test_a_long_5xx_outage_backs_off_turns_error_late_and_recovers(
    cluster_factory: Callable[..., Cluster], pg_url: str
) -> None:
    from workers.lifecycle_actors import LIFECYCLE_POLICY

    cluster = cluster_factory(pg_url, ERROR_AFTER_FAILURES="2", ERROR_AFTER_SECONDS="0")
    cluster.start_worker()
    accounts = [cluster.connect(fake_user=user) for user in ("alice", "bob")]
    outage = 20.0
    cluster.fake.reset_log()
    cluster.fake.fail(ME_PATH, FakeResponse(503, {"title": "Service Unavailable"}), times=10_000)
    started = time.monotonic()
    for account_id in accounts:
        cluster.send(messages.SYNC_ACCOUNT, account_id=account_id)

    # one failure is a blip: the account stays active until failures persist
    wait_until(lambda: cluster.fake.count(ME_PATH) >= 2, timeout=20, what="the first failures")
    wait_until(
        lambda: all(cluster.account(a).consecutive_failures >= 1 for a in accounts), what="the first failures stored"
    )
    first = [cluster.account(a) for a in accounts]
    assert all(a.status == "active" and a.consecutive_failures == 1 for a in first), [
        (a.status, a.consecutive_failures) for a in first
    ]
    wait_until(
        lambda: all(cluster.account(a).status == "error" for a in accounts),
        timeout=outage,
        what="error after the persistence threshold",
    )
    time.sleep(max(0.0, outage - (time.monotonic() - started)))
    cluster.fake.clear_faults()  # the platform is back
    seen_during_outage = cluster.fake.count(ME_PATH)
    # every sync tries at most 1 + max_transient times: no retry storm, whatever the outage length
    assert seen_during_outage <= len(accounts) * (1 + LIFECYCLE_POLICY.max_transient)

    wait_until(
        lambda: all(cluster.account(a).status == "active" for a in accounts),
        timeout=LIFECYCLE_POLICY.max_backoff_ms / 1000 + 30,
        what="recovery",
        every=0.5,
    )
    total = cluster.fake.count(ME_PATH)
    assert total <= len(accounts) * (1 + LIFECYCLE_POLICY.max_transient)
    for account_id in accounts:
        assert cluster.account(account_id).consecutive_failures == 0
