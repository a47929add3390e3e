"""Two nodes on one machine, and the drill that kills one of them (``scripts/two-nodes``).

Each node is a Linux network namespace with its own address on a bridge, running the three
processes of a production machine: ``social-accounts web``, ``worker`` and ``scheduler``. Both
reach one PostgreSQL, one Redis (and RabbitMQ with ``--broker rabbitmq``) and the fake platform
through the bridge address of the root namespace, where small TCP forwarders relay to the
services' loopback listeners: nothing in the system's configuration changes.

The drill, under a steady load of connects and with accounts coming due for refresh:

1. node A's scheduler leads; A's platform calls are held "on the wire" (the fake platform has
   not seen them yet) while due refreshes and connects flow, then every process of A gets
   SIGKILL. Holding them first makes sure A dies with messages in hand, and that no call A made
   was both acted on by the platform and lost with A (a lost answer to a rotating refresh cannot
   be recovered by anyone);
2. B's scheduler must lead within the leader lock's TTL (plus one try interval);
3. B must finish A's unacknowledged messages within the broker's redelivery time
   (``workers/broker.py``: heartbeat timeout for Redis; at once for RabbitMQ, which requeues a
   closed connection's unacked messages);
4. every connect ends ``connected``, or ``failed``/``exchange_uncertain`` when its code exchange
   was in flight on A at the kill; every due account is refreshed exactly once (token calls
   counted at the fake platform); nothing is left pending;
5. A comes back as a standby: it serves, and never ticks while B leads.

Run as root (``ip netns``). Every run has its own names (database, Redis namespace, RabbitMQ
vhost, namespaces, bridge), so it cannot clobber a test run, and tears everything down on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import redis
import sqlalchemy as sa

from tests.fakeplatform import FakePlatformServer, FakeRequest, FakeResponse
from tests.support import delete_namespace, fake_env, new_key, platform_modules

ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).with_name("social-accounts")
PG_ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
TOKEN_PATH = "/twitter/2/oauth2/token"
API_TOKEN = "two-nodes-api-token"
WEB_PORT = 8000

#: compressed timings (settings the service exposes)
LEADER_TTL = 3.0
SCAN_SECONDS = 1
HTTP_TIMEOUT = 3.0
#: how late a busy machine may run a timed job (the scheduler's next leadership try)
SCHEDULING_SLACK = 1.0
#: the fake platform answers every call after this long: calls overlap the kill
PLATFORM_DELAY = 0.2
#: connects per second during the drill
CONNECT_RATE = 4.0
#: accounts connected before the drill, and how many come due before, at and after the kill
WARM_ACCOUNTS = 30
DUE_BEFORE, DUE_AT_KILL, DUE_AFTER_REJOIN = 6, 8, 6


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, text=True, capture_output=True)


# ---- the network ------------------------------------------------------------------------------


@dataclass
class Network:
    """A bridge with two namespaces on it; names and addresses derived from ``run_id``."""

    run_id: str

    @property
    def bridge(self) -> str:
        return f"satn{self.run_id[:6]}"

    @property
    def subnet(self) -> str:
        n = int(self.run_id[:4], 16)
        return f"10.{200 + n % 50}.{(n >> 6) % 250}"

    @property
    def host_ip(self) -> str:
        return f"{self.subnet}.1"

    def ns(self, node: str) -> str:
        return f"sa-{self.run_id[:6]}-{node}"

    def ip(self, node: str) -> str:
        return f"{self.subnet}.{2 if node == 'a' else 3}"

    def setup(self) -> None:
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{self.host_ip}/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        for node in ("a", "b"):
            ns, outside, inside = self.ns(node), f"{self.bridge}{node}", f"{self.bridge}{node}i"
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
            sh("ip", "link", "set", inside, "netns", ns)
            sh("ip", "link", "set", outside, "master", self.bridge, "up")
            sh("ip", "-n", ns, "addr", "add", f"{self.ip(node)}/24", "dev", inside)
            sh("ip", "-n", ns, "link", "set", inside, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")

    def pids(self, node: str) -> list[int]:
        found = sh("ip", "netns", "pids", self.ns(node), check=False).stdout.split()
        return [int(p) for p in found]

    def kill(self, node: str) -> None:
        """SIGKILL every process in the node's namespace, as a machine that loses power."""
        for _ in range(5):
            pids = self.pids(node)
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)

    def teardown(self) -> None:
        for node in ("a", "b"):
            self.kill(node)
            sh("ip", "netns", "del", self.ns(node), check=False)
            sh("ip", "link", "del", f"{self.bridge}{node}", check=False)  # the pair goes with it
        sh("ip", "link", "del", self.bridge, check=False)


# ---- the root namespace's relays and fake platform --------------------------------------------


class Forwarders:
    """TCP relays ``host_ip:port -> 127.0.0.1:port`` in one asyncio thread (the services listen
    on loopback only; the nodes reach them on the bridge address)."""

    def __init__(self, host: str, ports: list[int]) -> None:
        self.loop = asyncio.new_event_loop()
        self.host, self.ports = host, ports
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name="forwarders", daemon=True)

    def start(self) -> None:
        self.thread.start()
        if not self.ready.wait(10):
            raise RuntimeError("the forwarders did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        for port in self.ports:
            self.loop.run_until_complete(asyncio.start_server(self._relay(port), self.host, port))
        self.ready.set()
        self.loop.run_forever()

    def _relay(self, port: int) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]:
        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.close()

        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                writer.close()
                return
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

        return relay

    def stop(self) -> None:
        if self.thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._close(), self.loop).result(5)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)

    async def _close(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class NodePlatform(FakePlatformServer):
    """The fake platform as one node sees it (its own port, the grant store shared by both).

    ``hold()`` keeps the node's next calls waiting before the platform acts on them; once the
    node is ``dead`` they are refused unseen, as packets from a machine that is gone.
    """

    def __init__(self, host: str) -> None:
        super().__init__(host=host)
        self.gate = threading.Condition()
        self.holding = False
        self.dead = False
        self.acting = 0
        self.held: list[FakeRequest] = []

    def dispatch(self, request: FakeRequest) -> FakeResponse:
        if request.path.endswith("/authorize"):  # the user's browser, not the node
            return super().dispatch(request)
        with self.gate:
            if self.holding:
                self.held.append(request)
            while self.holding and not self.dead:
                self.gate.wait()
            if self.dead:
                return FakeResponse(503, {"error": "node gone"})
            self.acting += 1
        try:
            return super().dispatch(request)
        finally:
            with self.gate:
                self.acting -= 1
                self.gate.notify_all()

    def hold(self) -> None:
        with self.gate:
            self.holding = True

    def wait_idle(self, timeout: float) -> None:
        """Until no call of this node is being acted on (held ones wait before the platform)."""
        deadline = time.monotonic() + timeout
        with self.gate:
            while self.acting and time.monotonic() < deadline:
                self.gate.wait(0.1)

    def release_dead(self) -> None:
        with self.gate:
            self.dead = True
            self.gate.notify_all()


def platforms(host: str) -> tuple[NodePlatform, NodePlatform]:
    a, b = NodePlatform(host), NodePlatform(host)
    b.grants = a.grants
    for server in (a, b):
        for module in platform_modules():
            module.install(server)
        server.delay = PLATFORM_DELAY
        server.start()
    return a, b


# ---- waiting ------------------------------------------------------------------------------------


def wait_for(check: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except Exception:  # a node still starting, a connection refused: try again
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise DrillError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


class DrillError(Exception):
    pass


# ---- the drill ----------------------------------------------------------------------------------


@dataclass
class Connect:
    attempt_id: str
    code: str
    node: str


@dataclass
class Drill:
    broker: str
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    checks: list[tuple[bool, str]] = field(default_factory=list)
    cleanup: list[Callable[[], None]] = field(default_factory=list)
    procs: dict[str, list[subprocess.Popen[bytes]]] = field(default_factory=lambda: {"a": [], "b": []})
    connects: list[Connect] = field(default_factory=list)
    stop_load: threading.Event = field(default_factory=threading.Event)
    dead: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.net = Network(self.run_id)
        self.workdir = Path(tempfile.mkdtemp(prefix=f"two-nodes-{self.run_id}-"))
        self.namespace = f"two-nodes-{self.run_id}"
        self.dbname = f"sa_two_nodes_{self.run_id}"
        self.vhost = f"two-nodes-{self.run_id}"
        self.public_url = "http://two-nodes.test"
        self.lock = threading.Lock()

    def check(self, ok: bool, text: str) -> None:
        self.checks.append((ok, text))
        print(f"[{'ok' if ok else 'FAILED'}] {text}", flush=True)

    # ---- services -------------------------------------------------------------------------------

    def setup(self) -> None:
        self.cleanup.append(self.net.teardown)
        self.net.setup()
        redis_parts = urlsplit(REDIS_URL)
        self.redis_db = (redis_parts.path or "/0").lstrip("/") or "0"
        ports = [urlsplit(PG_ADMIN_URL).port or 5432, redis_parts.port or 6379]
        if self.broker == "rabbitmq":
            ports.append(5672)
            sh("rabbitmqctl", "-q", "add_vhost", self.vhost)
            self.cleanup.append(lambda: sh("rabbitmqctl", "-q", "delete_vhost", self.vhost, check=False) and None)
            sh("rabbitmqctl", "-q", "set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")
        self.forwarders = Forwarders(self.net.host_ip, ports)
        self.forwarders.start()
        self.cleanup.append(self.forwarders.stop)
        self.fake_a, self.fake_b = platforms(self.net.host_ip)
        self.cleanup.append(self.fake_a.stop)
        self.cleanup.append(self.fake_b.stop)

        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.dbname}"')
        self.cleanup.append(self._drop_database)
        base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
        self.db_url = f"{base}/{self.dbname}"
        from models.migrate import upgrade

        upgrade(self.db_url)
        self.engine = sa.create_engine(self.db_url)
        self.cleanup.append(self.engine.dispose)
        self.redis = redis.Redis.from_url(REDIS_URL)
        self.cleanup.append(lambda: delete_namespace(self.redis, self.namespace) and None)
        self.token_keys = f"k1:{new_key()}"
        self.state_secret = secrets.token_urlsafe(24)

    def _drop_database(self) -> None:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.dbname}" WITH (FORCE)')

    def teardown(self) -> None:
        self.stop_load.set()
        for node in ("a", "b"):
            self.net.kill(node)
            for proc in self.procs[node]:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
        for step in reversed(self.cleanup):
            try:
                step()
            except Exception as exc:  # tear down the rest whatever one step says
                print(f"teardown: {type(exc).__name__}: {exc}", file=sys.stderr)

    # ---- nodes ----------------------------------------------------------------------------------

    def node_env(self, node: str) -> dict[str, str]:
        host = self.net.host_ip
        fake = self.fake_a if node == "a" else self.fake_b
        redis_url = f"redis://{host}:{urlsplit(REDIS_URL).port or 6379}/{self.redis_db}"
        broker_url = redis_url if self.broker == "redis" else f"amqp://guest:guest@{host}:5672/{self.vhost}"
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ")}
        env.update(fake_env(fake))
        env.update(
            {
                "HOME": str(self.workdir),
                "DATABASE_URL": self.db_url.replace("127.0.0.1", host),
                "BROKER_URL": broker_url,
                "REDIS_URL": redis_url,
                "REDIS_NAMESPACE": self.namespace,
                "TOKEN_KEYS": self.token_keys,
                "STATE_SECRET": self.state_secret,
                "API_TOKEN": API_TOKEN,
                "PUBLIC_URL": self.public_url,
                "ALLOW_PRIVATE_NETWORK": "1",
                "HOST": self.net.ip(node),
                "PORT": str(WEB_PORT),
                "HTTP_TIMEOUT_SECONDS": str(HTTP_TIMEOUT),
                "REFRESH_SCAN_SECONDS": str(SCAN_SECONDS),
                "LEADER_TTL_SECONDS": str(LEADER_TTL),
                "WORKER_METRICS_PORT": "0",
                "LOG_LEVEL": "INFO",
            }
        )
        return env

    def start(self, node: str, command: str, *args: str) -> subprocess.Popen[bytes]:
        log = self.workdir / f"{node}-{command}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.net.ns(node), str(CLI), command, *args],
                env=self.node_env(node),
                cwd=self.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs[node].append(proc)
        return proc

    def start_node(self, node: str, *, scheduler: bool = True) -> None:
        self.start(node, "web")
        self.start(node, "worker", "--processes", "1", "--threads", "4")
        if scheduler:
            self.start(node, "scheduler")
        wait_for(lambda: self.web(node).get("/readyz").status_code == 200, 60, f"node {node}'s web")

    def web(self, node: str) -> httpx.Client:
        return httpx.Client(
            base_url=f"http://{self.net.ip(node)}:{WEB_PORT}",
            headers={"authorization": f"Bearer {API_TOKEN}"},
            timeout=10,
        )

    def leader_pid(self) -> int | None:
        value = self.redis.get(f"{self.namespace}:scheduler:leader")  # "hostname:pid:random"
        return int(value.decode().split(":")[1]) if isinstance(value, bytes) else None

    def scheduler_pid(self, node: str) -> int:
        """The scheduler's pid (``ip netns exec`` execs it: same pid as the Popen)."""
        (proc,) = [p for p in self.procs[node] if p.args[-1] == "scheduler" and p.poll() is None]  # type: ignore[index]
        return proc.pid

    def ticks(self, node: str) -> int:
        return (self.workdir / f"{node}-scheduler.log").read_bytes().count(b"job=refresh_ahead outcome=ok")

    # ---- load -----------------------------------------------------------------------------------

    def on_web(self, node: str, call: Callable[[httpx.Client], httpx.Response]) -> httpx.Response:
        """``call`` on ``node``'s web, or on the other node's when ``node`` is gone (a balancer's retry)."""
        order = [n for n in (node, "b" if node == "a" else "a") if n not in self.dead]
        for candidate in order:
            try:
                with self.web(candidate) as client:
                    answer = call(client)
            except httpx.TransportError:
                continue
            if answer.status_code >= 400:
                raise DrillError(f"{answer.request.url.path} answered {answer.status_code}")
            return answer
        raise DrillError("no node answered")

    def connect_once(self, node: str) -> None:
        """A user connects X: the dashboard asks ``node``'s web, the user's browser consents at the
        platform and comes back to the callback (each step retried on the other node if one dies)."""
        site = f"site-{uuid.uuid4().hex[:8]}"
        body = self.on_web(
            node, lambda c: c.post("/v1/connect/twitter", json={"site_id": site, "user_id": "u1"})
        ).json()
        with httpx.Client(timeout=10) as browser:
            location = browser.get(body["authorization_url"]).headers["location"]
        query = dict(httpx.URL(location).params)
        self.on_web(node, lambda c: c.get("/oauth/callback", params=query))
        with self.lock:
            self.connects.append(Connect(body["attempt_id"], query["code"], node))

    def load(self) -> None:
        turn = 0
        while not self.stop_load.is_set():
            began = time.monotonic()
            turn += 1
            try:
                self.connect_once("a" if turn % 2 else "b")
            except Exception as exc:
                print(f"load: {type(exc).__name__}: {exc}", file=sys.stderr)
            self.stop_load.wait(max(0.0, 1 / CONNECT_RATE - (time.monotonic() - began)))

    # ---- the database ---------------------------------------------------------------------------

    def attempts(self) -> dict[str, tuple[str, str | None]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT id, status, error_code FROM social_oauth_states"))
            return {str(r[0]): (str(r[1]), r[2]) for r in rows}

    def accounts(self) -> list[str]:
        with self.engine.connect() as conn:
            return [str(r[0]) for r in conn.execute(sa.text("SELECT id FROM social_accounts ORDER BY created_at"))]

    def versions(self, ids: list[str]) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT id, token_version FROM social_accounts WHERE id = ANY(:ids)"), {"ids": ids}
            )
            return {str(r[0]): int(r[1]) for r in rows}

    def refreshed_events(self, ids: list[str]) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT account_id, count(*) FROM social_account_events "
                    "WHERE kind = 'refreshed' AND account_id = ANY(:ids) GROUP BY account_id"
                ),
                {"ids": ids},
            )
            return {str(r[0]): int(r[1]) for r in rows}

    def make_due(self, ids: list[str]) -> None:
        """Due now: the scheduler's claim finds them, and the worker finds the token due."""
        now = datetime.now(UTC)
        issued = (now - timedelta(days=1)).isoformat()
        with self.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE social_accounts SET next_refresh_at = :now, token_expires_at = :expires, "
                    "token_metadata = token_metadata || jsonb_build_object('issued_at', CAST(:issued AS text)) "
                    "WHERE id = ANY(:ids)"
                ),
                {"now": now, "expires": now + timedelta(seconds=60), "issued": issued, "ids": ids},
            )

    def queues_empty(self) -> bool:
        from social_accounts.settings import Settings
        from workers.broker import build_broker
        from workers.gauges import queue_depths

        url = REDIS_URL if self.broker == "redis" else RABBITMQ_URL.rstrip("/") + f"/{self.vhost}"
        settings = Settings(_env_file=None, broker_url=url, redis_namespace=self.namespace)
        broker = build_broker(settings)
        try:
            depths = queue_depths(broker)
        finally:
            broker.close()
        self.depths = depths
        if any(depths.values()):
            return False
        if self.broker == "redis":  # nothing in any consumer's hands either
            keys = list(self.redis.scan_iter(match=f"{self.namespace}:*.msgs"))
            keys += list(self.redis.scan_iter(match=f"{self.namespace}:__acks__*"))
            return all(int(self.redis.hlen(k) if k.endswith(b".msgs") else self.redis.scard(k)) == 0 for k in keys)
        return True

    # ---- the drill ------------------------------------------------------------------------------

    def watch(self, condition: Callable[[], bool]) -> dict[str, float]:
        """``{"at": monotonic time}`` once ``condition`` first holds (polled in a thread)."""
        seen: dict[str, float] = {}

        def poll() -> None:
            with contextlib.suppress(DrillError):
                wait_for(condition, 180, "a watched condition", every=0.2)
                seen["at"] = time.monotonic()

        threading.Thread(target=poll, name="watch", daemon=True).start()
        return seen

    def run(self) -> None:
        fakes = {"a": self.fake_a, "b": self.fake_b}
        # A first, so A's scheduler leads; then B as the standby
        self.start_node("a")
        wait_for(lambda: self.leader_pid() == self.scheduler_pid("a"), 30, "A's scheduler to lead")
        self.start_node("b")
        for n in range(WARM_ACCOUNTS):
            self.connect_once("a" if n % 2 else "b")
        wait_for(lambda: len(self.accounts()) >= WARM_ACCOUNTS, 90, "the warm-up connects")
        warm = self.accounts()[:WARM_ACCOUNTS]
        due_before, due_at_kill = warm[:DUE_BEFORE], warm[DUE_BEFORE : DUE_BEFORE + DUE_AT_KILL]
        due_rejoin = warm[DUE_BEFORE + DUE_AT_KILL : DUE_BEFORE + DUE_AT_KILL + DUE_AFTER_REJOIN]
        versions = self.versions(warm)
        refresh_calls = self.fake_a.grants.refresh_calls

        loader = threading.Thread(target=self.load, name="load", daemon=True)
        loader.start()
        self.make_due(due_before)
        wait_for(lambda: all(self.versions(due_before)[i] > versions[i] for i in due_before), 60, "the first refreshes")

        # A's calls wait on the wire; due refreshes and connects keep coming; then A dies
        self.fake_a.hold()
        self.make_due(due_at_kill)

        def connect_call(request: FakeRequest) -> bool:
            exchange = request.path == TOKEN_PATH and request.form.get("grant_type") == "authorization_code"
            return exchange or request.path.startswith("/twitter/2/users/me")

        def refresh_call(request: FakeRequest) -> bool:
            return request.form.get("grant_type") == "refresh_token"

        # both kinds of work in A's hands; one more account due now and then, should B's worker
        # have fetched every refresh so far
        reserve = warm[DUE_BEFORE + DUE_AT_KILL + DUE_AFTER_REJOIN :]
        deadline, added = time.monotonic() + 45, time.monotonic()
        while not (any(connect_call(r) for r in self.fake_a.held) and any(refresh_call(r) for r in self.fake_a.held)):
            if time.monotonic() > deadline:
                raise DrillError("node A never had a connect and a refresh in flight")
            if reserve and time.monotonic() - added > 2 * SCAN_SECONDS:
                due_at_kill.append(reserve.pop())
                self.make_due(due_at_kill[-1:])
                added = time.monotonic()
            time.sleep(0.1)
        self.fake_a.wait_idle(5)
        time.sleep(PLATFORM_DELAY + 0.5)  # A's last answers are stored before the kill
        held = list(self.fake_a.held)
        standby_ticks = self.ticks("b")
        self.net.kill("a")
        killed = time.monotonic()
        self.dead.add("a")
        self.fake_a.release_dead()
        print(f"killed node A with {len(held)} platform calls in flight", flush=True)
        refreshed_at = self.watch(lambda: all(self.versions(due_at_kill)[i] > versions[i] for i in due_at_kill))

        # 1. leadership
        b_scheduler = self.scheduler_pid("b")
        wait_for(lambda: self.leader_pid() == b_scheduler, 60, "B's scheduler to lead", every=0.05)
        took = time.monotonic() - killed
        # the lock outlives its last extension (at most now) by the TTL; B tries every TTL/3 (1 s at
        # least), and a loaded machine runs that try a little late (SCHEDULING_SLACK)
        bound = LEADER_TTL + max(1.0, LEADER_TTL / 3) + SCHEDULING_SLACK
        self.check(
            took <= bound and standby_ticks == 0,
            f"B's scheduler leads {took:.1f}s after the kill (lock TTL {LEADER_TTL:.0f}s + one try every "
            f"{max(1.0, LEADER_TTL / 3):.0f}s + {SCHEDULING_SLACK:.0f}s slack: {bound:.0f}s); "
            f"it ticked {standby_ticks} times as a standby before",
        )

        # 2. A's unacknowledged messages: the connects whose calls A had in flight end on B
        codes = {c.code: c.attempt_id for c in self.connects}
        grants = self.fake_a.grants
        in_flight: set[str] = set()
        uncertain_ok: set[str] = set()
        for request in held:
            if request.path == TOKEN_PATH and request.form.get("grant_type") == "authorization_code":
                attempt = codes.get(request.form.get("code", ""))
                if attempt:
                    in_flight.add(attempt)
                    uncertain_ok.add(attempt)
            elif request.path.startswith("/twitter/2/users/me"):
                grant_id = grants.access.get(request.bearer() or "", ("",))[0]
                code = next((c for c, i in grants.codes.items() if i.grant_id == grant_id), None)
                if code in codes:
                    in_flight.add(codes[code])
        if self.broker == "redis":
            from workers.broker import HEARTBEAT_TIMEOUT_MS

            redelivery = HEARTBEAT_TIMEOUT_MS / 1000 + 10
            why = f"heartbeat timeout {HEARTBEAT_TIMEOUT_MS / 1000:.0f}s + maintenance and work 10s"
        else:
            redelivery, why = 10.0, "RabbitMQ requeues at once on the closed connection; work 10s"
        try:
            wait_for(
                lambda: in_flight and all(self.attempts()[i][0] != "pending" for i in in_flight),
                redelivery + 60,
                "A's connects to end on B",
            )
            took = time.monotonic() - killed
        except DrillError:
            took = float("inf")
        self.check(
            bool(in_flight) and took <= redelivery,
            f"A's {len(in_flight)} connects in flight ended on B {took:.1f}s after the kill "
            f"(bound {redelivery:.0f}s: {why})",
        )

        time.sleep(3)  # the load goes on, on B alone
        self.stop_load.set()
        loader.join(30)

        # 3. every connect ends
        def settled() -> bool:
            states = self.attempts()
            return all(states.get(c.attempt_id, ("pending", None))[0] != "pending" for c in self.connects)

        with contextlib.suppress(DrillError):
            wait_for(settled, 120, "every connect to end")
        states = self.attempts()
        outcome = {c.attempt_id: states.get(c.attempt_id, ("missing", None)) for c in self.connects}
        connected = [i for i, s in outcome.items() if s == ("connected", None)]
        uncertain = [i for i, s in outcome.items() if s == ("failed", "exchange_uncertain")]
        others = {i: s for i, s in outcome.items() if i not in connected and i not in uncertain}
        self.check(
            not others and set(uncertain) <= uncertain_ok,
            f"{len(self.connects)} connects: {len(connected)} connected, {len(uncertain)} exchange_uncertain "
            f"(in flight at the kill: {len(uncertain_ok)}), other: {sorted(set(map(str, others.values())))}",
        )

        # 4. every due account refreshed exactly once
        due = due_before + due_at_kill
        with contextlib.suppress(DrillError):
            wait_for(lambda: all(self.versions(due)[i] > versions[i] for i in due), 120, "every due refresh", every=0.5)
        with contextlib.suppress(DrillError):  # the watch polls on its own: let it see the same
            wait_for(lambda: "at" in refreshed_at, 2, "the watch", every=0.05)
        held_refreshes = sum(1 for r in held if r.form.get("grant_type") == "refresh_token")
        from workers.coordination import lock_ttl_seconds

        print(
            f"  the {len(due_at_kill)} accounts due at the kill were all refreshed "
            f"{refreshed_at.get('at', float('inf')) - killed:.1f}s "
            f"after it ({held_refreshes} refreshes were in flight on A: their accounts' refresh locks, "
            f"{lock_ttl_seconds(HTTP_TIMEOUT):.0f}s, expire first)",
            flush=True,
        )
        now_versions, events = self.versions(due), self.refreshed_events(due)
        calls = self.fake_a.grants.refresh_calls - refresh_calls
        once = all(now_versions[i] == versions[i] + 1 and events.get(i) == 1 for i in due)
        self.check(
            once and calls == len(due),
            f"{len(due)} due accounts refreshed exactly once: {calls} refresh calls at the platform, "
            f"{sum(events.values())} refreshed events",
        )

        # 5. nothing pending, no grant revoked (no code replayed, no refresh token reused)
        with contextlib.suppress(DrillError):
            wait_for(self.queues_empty, 60, "the queues to drain", every=0.5)
        # an attempt whose user never reached the callback (the dashboard's request died with A)
        # is pending by design until ATTEMPT_TIMEOUT_SECONDS; every other one must have ended
        called_back = {c.attempt_id for c in self.connects}
        pending = [i for i, s in self.attempts().items() if s[0] == "pending"]
        stuck = [i for i in pending if i in called_back]
        revoked = [g for g in grants.grants.values() if g.revoked]
        empty = self.queues_empty()
        self.check(
            not stuck and empty and not revoked,
            f"nothing pending: {len(stuck)} attempts pending after their callback "
            f"({len(pending) - len(stuck)} never called back), queues {'empty' if empty else self.depths}, "
            f"{len(revoked)} grants revoked",
        )

        # 6. A comes back: a standby that serves and never ticks
        for proc in self.procs["a"]:
            proc.wait(10)
        self.procs["a"].clear()
        self.fake_a = fakes["a"]
        self.dead.discard("a")
        with self.fake_a.gate:
            self.fake_a.dead = self.fake_a.holding = False
        ticks_b = self.ticks("b")
        a_scheduler_log = (self.workdir / "a-scheduler.log").read_bytes()
        (self.workdir / "a-scheduler.log").write_bytes(a_scheduler_log + b"\n---- restarted ----\n")
        self.start_node("a")
        refresh_calls = self.fake_a.grants.refresh_calls
        before = len(self.connects)
        self.make_due(due_rejoin)
        for _ in range(4):
            self.connect_once("a")
        wait_for(
            lambda: all(self.versions(due_rejoin)[i] > versions[i] for i in due_rejoin), 60, "the rejoin refreshes"
        )
        wait_for(lambda: self.ticks("b") >= ticks_b + 5, 30, "B to tick on")
        new = [c.attempt_id for c in self.connects[before:]]
        with contextlib.suppress(DrillError):
            wait_for(lambda: all(self.attempts()[i][0] != "pending" for i in new), 60, "the connects through A")
        after_log = (self.workdir / "a-scheduler.log").read_bytes().split(b"---- restarted ----")[-1]
        a_ticks = after_log.count(b"job=refresh_ahead outcome=ok")
        calls = self.fake_a.grants.refresh_calls - refresh_calls
        connected_via_a = sum(1 for i in new if self.attempts()[i] == ("connected", None))
        self.check(
            a_ticks == 0 and self.leader_pid() == b_scheduler and calls == len(due_rejoin),
            f"A rejoined as a standby: {a_ticks} ticks from A while B ticked {self.ticks('b') - ticks_b}, "
            f"{len(due_rejoin)} due refreshed with {calls} calls, "
            f"{connected_via_a}/{len(new)} connects via A connected",
        )


def drill(broker: str) -> int:
    run = Drill(broker)
    print(f"two-nodes drill ({broker}), logs in {run.workdir}", flush=True)

    def stop(signum: int, _: Any) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, stop)
    expected = 6
    try:
        run.setup()
        run.run()
    except Exception as exc:  # a failed step is a failed check; the teardown below still runs
        detail = exc.stderr if isinstance(exc, subprocess.CalledProcessError) else ""
        run.check(False, f"drill stopped: {type(exc).__name__}: {exc} {detail}".strip())
    except SystemExit:
        run.check(False, "drill interrupted")
        raise
    finally:
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)  # a second signal must not cut the teardown short
        run.teardown()
        passed = sum(ok for ok, _ in run.checks)
        total = max(expected, len(run.checks))
        print(f"two-nodes: {passed}/{total} checks passed", flush=True)
    return 0 if passed == total == expected else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/two-nodes", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("setup", "teardown"):
        cmd = sub.add_parser(name, help=f"{name} the bridge and the two namespaces")
        cmd.add_argument("--id", default="000000", help="hex id naming the bridge and namespaces")
    run = sub.add_parser("drill", help="set up, kill node A under load, check, tear down")
    run.add_argument("--broker", choices=("redis", "rabbitmq"), default="redis")
    args = parser.parse_args(argv)
    if args.command == "drill":
        return drill(args.broker)
    net = Network(args.id)
    if args.command == "setup":
        net.setup()
        print(json.dumps({"bridge": net.bridge, "host": net.host_ip, **{n: [net.ns(n), net.ip(n)] for n in "ab"}}))
    else:
        net.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
