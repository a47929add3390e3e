"""Helpers the benchmarks share: a throw-away PostgreSQL database and Redis namespace, the fake
platform with every module installed, subprocess servers/workers, wrk, and the results table.

Why benchmarks live here and not in tests: speed depends on the machine and on what else runs,
so a timed test is either flaky or so lax it proves nothing. These scripts measure, print a
table with the goal and ``ok``/``MISSED``, and exit non-zero only when they could not run.
Everything they start listens on, or talks to, 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/x.py` from anywhere
    sys.path.insert(0, str(ROOT))

PG_ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")
#: RabbitMQ for the parts that compare brokers; each run gets a virtual host of its own on it
AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672")
VENV_BIN = ROOT / ".venv" / "bin"


class BenchError(Exception):
    """The benchmark could not run (a service is missing, a process died): exit non-zero."""


# ---- the machine ---------------------------------------------------------------------------


def machine() -> str:
    """One line for the README: date, CPU count and model, Python."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores ({model}), "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


# ---- results --------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    value: str
    goal: str = ""
    ok: bool | None = None  # None: informational


def print_table(title: str, rows: Sequence[Row]) -> None:
    """A small aligned table; goal rows end with ``ok`` or ``MISSED``."""
    print(f"\n{title}\n{machine()}")
    width = max(len(r.name) for r in rows)
    vwidth = max(len(r.value) for r in rows)
    for r in rows:
        verdict = "" if r.ok is None else ("ok" if r.ok else "MISSED")
        goal = f"goal {r.goal}" if r.goal else ""
        print(f"  {r.name:<{width}}  {r.value:>{vwidth}}  {goal:<22} {verdict}".rstrip())
    print()


# ---- services -------------------------------------------------------------------------------


def new_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def bench_secrets() -> dict[str, str]:
    """Fresh secrets for one run (nothing from a developer's .env leaks into a benchmark)."""
    return {
        "API_TOKEN": "bench-" + uuid.uuid4().hex,
        "STATE_SECRET": "bench-" + uuid.uuid4().hex,
        "TOKEN_KEYS": f"k1:{new_key()}",
    }


@contextlib.contextmanager
def pg_database(prefix: str = "sa_bench") -> Iterator[str]:
    """A fresh PostgreSQL database migrated to head; dropped afterwards. Yields its SQLAlchemy URL."""
    import psycopg

    from models.migrate import upgrade

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        raise BenchError(f"PostgreSQL does not answer at {PG_ADMIN_URL}") from exc
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + f"/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def redis_namespace(prefix: str = "sa-bench") -> Iterator[str]:
    """A dedicated Redis namespace on ``REDIS_URL``; every key under it is deleted afterwards."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise BenchError(f"Redis does not answer at {REDIS_URL}") from exc
    namespace = f"{prefix}-{uuid.uuid4().hex[:8]}"
    try:
        yield namespace
    finally:
        for pattern in (f"{namespace}:*", f"{namespace}*"):
            keys = list(client.scan_iter(match=pattern, count=1000))
            for start in range(0, len(keys), 1000):
                client.delete(*keys[start : start + 1000])
        client.close()


@contextlib.contextmanager
def rabbitmq_vhost() -> Iterator[str]:
    """A RabbitMQ virtual host of this run's own on 127.0.0.1 (``rabbitmqctl``, as root), deleted
    afterwards: its queues cannot meet another run's. Yields the broker URL."""
    name = f"sa-bench-{uuid.uuid4().hex[:8]}"
    import shutil

    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        raise BenchError("rabbitmqctl is not installed")

    def call(*args: str) -> None:
        subprocess.run([ctl, "-q", *args], check=True, capture_output=True, timeout=60)

    call("add_vhost", name)
    try:
        user = AMQP_URL.split("://", 1)[1].split(":", 1)[0] if "@" in AMQP_URL else "guest"
        call("set_permissions", "-p", name, user, ".*", ".*", ".*")
        yield f"{AMQP_URL.rstrip('/')}/{name}"
    finally:
        call("delete_vhost", name)


def redis_client() -> Any:
    import redis

    return redis.Redis.from_url(REDIS_URL)


@contextlib.contextmanager
def fake_platform(delay: float = 0.0) -> Iterator[Any]:
    """The fake platform server (every module installed) on loopback, answering after ``delay``."""
    from tests.fakeplatform import FakePlatformServer
    from tests.support import platform_modules

    server = FakePlatformServer()
    # the default listen backlog (5) drops SYNs when 16 worker threads connect at once
    server._httpd.socket.listen(128)
    for module in platform_modules():
        module.install(server)
    server.delay = delay
    server.start()
    try:
        yield server
    finally:
        server.stop()


def fake_env(server: Any) -> dict[str, str]:
    from tests.support import fake_env as env

    return env(server)


#: run in a separate process, so the probe's clients do not share the fake's GIL
_PROBE = r"""
import sys, threading, time, http.client
host, port, path, threads, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
counts = [0] * threads
start = time.monotonic()
deadline = start + seconds
def loop(i):
    conn = http.client.HTTPConnection(host, port, timeout=10)
    while time.monotonic() < deadline:
        conn.request("GET", path)
        conn.getresponse().read()
        counts[i] += 1
    conn.close()
workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
for w in workers: w.start()
for w in workers: w.join()
print(sum(counts) / (time.monotonic() - start))
"""


def fake_capacity(server: Any, threads: int, seconds: float = 3.0) -> float:
    """Requests per second the fake serves to ``threads`` concurrent keep-alive clients in another
    process (each answered after ``server.delay``). The ceiling is ``threads / delay``: well below
    it, the fake itself would limit a benchmark."""
    host, port = server.base_url.rsplit("//", 1)[1].split(":")
    done = subprocess.run(
        [python(), "-c", _PROBE, host, port, "/bench-capacity-probe", str(threads), str(seconds)],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    )
    if done.returncode != 0:
        raise BenchError(f"the fake capacity probe failed: {done.stderr.strip()[-300:]}")
    return float(done.stdout.strip())


# ---- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[Any], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"the server exited with {proc.returncode} before listening")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise BenchError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


@contextlib.contextmanager
def process(args: Sequence[str], env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[Any]]:
    """Start ``args`` in its own process group (output to ``log_path``); stop it with SIGTERM."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            list(args), env=full_env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds used so far by every live process in process group ``pgid`` (a worker pool)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def load_average() -> float:
    return os.getloadavg()[0]


def db_commits(engine: Any) -> int:
    """Transactions committed in the engine's database so far (``pg_stat_database``)."""
    import sqlalchemy as sa

    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
            ).scalar_one()
        )


def tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


# ---- wrk --------------------------------------------------------------------------------------

#: wrk Lua: cycle through the paths in WRK_PATHS (one per line); print a JSON summary at the end
WRK_SCRIPT = r"""
local paths = {}
local counter = 0
function init(args)
  local f = assert(io.open(os.getenv("WRK_PATHS"), "r"))
  for line in f:lines() do paths[#paths + 1] = line end
  f:close()
  counter = math.random(#paths)
end
function request()
  counter = counter % #paths + 1
  return wrk.format("GET", paths[counter])
end
function done(summary, latency, requests)
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "connect_errors": %d, "read_errors": %d, "write_errors": %d, ' ..
    '"timeouts": %d, "bad_status": %d, "p50_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.timeout, summary.errors.status, latency:percentile(50), latency:percentile(99), latency.max))
end
"""


@dataclass
class WrkResult:
    requests: int
    seconds: float
    errors: int
    bad_status: int
    p50_ms: float
    p99_ms: float
    #: CPU seconds the server used during the run (filled in by the caller)
    server_cpu: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_us_per_request(self) -> float:
        return self.server_cpu / max(self.requests, 1) * 1e6


def run_wrk(
    url_base: str, paths_file: Path, *, connections: int, threads: int, seconds: int, workdir: Path
) -> WrkResult:
    """Run wrk against ``url_base`` cycling through ``paths_file``; parse the Lua JSON summary."""
    script = workdir / "cycle.lua"
    script.write_text(WRK_SCRIPT)
    cmd = ["wrk", f"-c{connections}", f"-t{threads}", f"-d{seconds}s", "-s", str(script), url_base]
    try:
        done = subprocess.run(
            cmd, env={**os.environ, "WRK_PATHS": str(paths_file)}, capture_output=True, text=True, timeout=seconds + 60
        )
    except FileNotFoundError as exc:
        raise BenchError("wrk is not installed (apt-get install -y wrk)") from exc
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith('{"requests"')), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    data = json.loads(line)
    return WrkResult(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        errors=data["connect_errors"] + data["read_errors"] + data["write_errors"] + data["timeouts"],
        bad_status=data["bad_status"],
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
    )


def python() -> str:
    """The project's interpreter (the venv when present)."""
    candidate = VENV_BIN / "python"
    return str(candidate) if candidate.exists() else sys.executable


def main_guard(run: Any) -> None:
    """Run ``run()``; a ``BenchError`` is one line on stderr and exit status 2. SIGTERM unwinds
    like an exception, so the workers are stopped and the database and Redis keys removed."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        run()
    except BenchError as exc:
        print(f"benchmark could not run: {exc}", file=sys.stderr)
        sys.exit(2)


def worker_env(fake: Any, db_url: str, namespace: str) -> dict[str, str]:
    """The environment of the service's processes in a benchmark: the fake platform, a bench
    database, the bench Redis namespace, generated secrets, quiet logs."""
    return {
        **bench_secrets(),
        **fake_env(fake),
        "DATABASE_URL": db_url,
        "BROKER_URL": REDIS_URL,
        "REDIS_NAMESPACE": namespace,
        "ALLOW_PRIVATE_NETWORK": "1",
        "PUBLIC_URL": "http://127.0.0.1:8000",
        "LOG_LEVEL": "WARNING",
        # no fixed port: two runs at once must not collide (the workers' metrics exposition is off)
        "WORKER_METRICS_PORT": "0",
    }


def settings_from(env: dict[str, str]) -> Any:
    """The ``Settings`` the worker processes will read from ``env`` (no ``.env`` file)."""
    from social_accounts.settings import Settings

    return Settings(_env_file=None, **{k.lower(): v for k, v in env.items()})  # type: ignore[arg-type]


@dataclass(frozen=True)
class Service:
    """What a benchmark needs to act as the service does: the workers' environment, the
    ``Settings`` they read from it, the key ring and an engine on the bench database."""

    env: dict[str, str]
    settings: Any
    ring: Any
    engine: Any


def service_for(fake: Any, db_url: str, namespace: str, **engine_options: Any) -> Service:
    """The benchmark's view of the service (``engine_options`` go to ``make_engine``)."""
    from models.crypto import KeyRing
    from models.engine import make_engine

    env = worker_env(fake, db_url, namespace)
    settings = settings_from(env)
    return Service(env, settings, KeyRing.from_settings(settings), make_engine(db_url, **engine_options))


#: how often a benchmark looks at its progress; the end time itself comes from the database
#: (``last_event_at``), so polling this seldom costs no precision and little of the 2 cores
POLL_SECONDS = 0.25


def last_event_at(engine: Any, kind: str) -> float:
    """When the last ``kind`` event was written, in epoch seconds (the workers' clock).

    Why: a run ends when its last account is saved, not when the bench next looks. Polling
    every few milliseconds with a ``GROUP BY`` over a growing table took a visible share of
    PostgreSQL's and the bench's CPU, on the same two cores as the system being measured.
    """
    import sqlalchemy as sa

    with engine.connect() as conn:
        query = sa.text("SELECT max(created_at) FROM social_account_events WHERE kind = :k")
        last = conn.execute(query, {"k": kind}).scalar_one()
    if last is None:
        raise BenchError(f"no {kind} event was written")
    return float(last.timestamp())


def worker_command(processes: int, threads: int) -> list[str]:
    return [str(VENV_BIN / "social-accounts"), "worker", "--processes", str(processes), "--threads", str(threads)]


def wait_for_workers(namespace: str, processes: int, proc: Any, log: Path, timeout: float = 60.0) -> None:
    """Workers are ready once each process has sent a heartbeat (its first queue poll)."""
    client = redis_client()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(f"the workers exited with {proc.returncode}:\n{tail(log)}")
            if client.zcard(f"{namespace}:__heartbeats__") >= processes:
                return
            time.sleep(0.1)
    finally:
        client.close()
    raise BenchError(f"the workers did not start within {timeout:.0f}s:\n{tail(log)}")
