"""Benchmark: webhook deliveries per second for 10,000 status changes, against a bare worker.

Why: every status change is an event, and a receiver must get it soon even when thousands change
at once (a platform outage ends). Ours goes through the whole path: the outbox rows are
published by the dispatcher (cursor, one delivery row each), then ``deliver_webhook`` signs,
checks the URL, POSTs and records each attempt. Goal: at least 0.75x the rate of a bare
Dramatiq worker making the same signed POSTs (``bench/bare_webhooks.py``), measured side by side.

Setup: a fresh PostgreSQL database, a Redis namespace, a receiver (``bench/webhook_receiver.py``
under uvicorn, one process, answering 204). N ``status_changed`` rows of N distinct accounts are
written as committed status changes would write them. Ours: ``social-accounts worker
--processes P --threads T``; the clock runs from the ``dispatch_events`` message to the
receiver's last POST. Bare: the stock ``dramatiq`` CLI with the same processes and threads; the
clock runs from the bulk enqueue of N messages to the receiver's last POST. Checks: the receiver
counts exactly N each time; every delivery row of ours is ``delivered``.

Run: ``.venv/bin/python bench/events.py [--events 10000] [--processes 2] [--threads 8]``
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    POLL_SECONDS,
    REDIS_URL,
    VENV_BIN,
    BenchError,
    Row,
    bench_secrets,
    free_port,
    main_guard,
    pg_database,
    print_table,
    process,
    redis_namespace,
    wait_for_port,
    wait_for_workers,
    worker_command,
)

BENCH_DIR = Path(__file__).resolve().parent
GOAL = 0.75


def _seed(db_url: str, n: int) -> None:
    """N published-to-be status changes of N accounts, as the status policy writes them."""
    import sqlalchemy as sa

    from models.engine import make_engine
    from models.tables import SocialAccountEvent, table_of

    start = datetime.now(UTC)
    rows = [
        {
            "id": str(uuid.uuid4()),
            "account_id": str(uuid.uuid4()),
            "site_id": f"site-{i % 50}",
            "platform": "twitter",
            "kind": "status_changed",
            "reason": "sync: twitter: server error (HTTP 503)",
            "data": {"from": "active", "to": "error", "health_score": 70, "error_code": "transient"},
            "created_at": start + timedelta(microseconds=i),
        }
        for i in range(n)
    ]
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.insert(table_of(SocialAccountEvent)), rows)
    finally:
        engine.dispose()


def _count(client: httpx.Client, base: str) -> dict[str, float]:
    data: dict[str, float] = client.get(f"{base}/count").json()
    return data


def _wait(client: httpx.Client, base: str, n: int, proc: Any, timeout: float) -> float:
    """Poll the receiver until it counted ``n``; returns the time of its last POST."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"the workers exited with {proc.returncode}")
        seen = _count(client, base)
        if seen["count"] >= n:
            if seen["count"] > n:
                raise BenchError(f"the receiver counted {seen['count']:.0f} POSTs for {n} events")
            return seen["last"]
        time.sleep(POLL_SECONDS)
    raise BenchError(f"only {_count(client, base)['count']:.0f} of {n} arrived within {timeout:.0f}s")


@dataclass
class EventsResult:
    """Events per second, ours and the bare worker's POSTs per second, and the checks."""

    events: int
    ours_rate: float
    bare_rate: float
    rows: list[Row]


def measure(events: int = 10_000, processes: int = 2, threads: int = 8, timeout: float = 600.0) -> EventsResult:
    """Ours, then the bare worker, over ``events`` status changes (see the module docstring).

    Raises:
      BenchError: a run did not end with exactly ``events`` POSTs counted, or a delivery row of
        ours is not ``delivered``.
    """
    key = os.urandom(32)
    secret = "whsec_" + base64.b64encode(key).decode()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    logs = Path(tempfile.mkdtemp(prefix="sa-bench-events-"))
    receiver_cmd = [str(VENV_BIN / "uvicorn"), "webhook_receiver:app", "--app-dir", str(BENCH_DIR)]
    receiver_cmd += ["--port", str(port), "--log-level", "warning", "--no-access-log"]
    with (
        pg_database() as db_url,
        redis_namespace() as namespace,
        process(receiver_cmd, {}, logs / "receiver.log") as receiver,
        httpx.Client(timeout=5.0) as client,
    ):
        wait_for_port(port, receiver)
        # ---- ours ----
        _seed(db_url, events)
        env = {
            **bench_secrets(),
            "DATABASE_URL": db_url,
            "BROKER_URL": REDIS_URL,
            "REDIS_NAMESPACE": namespace,
            "ALLOW_PRIVATE_NETWORK": "1",
            "WEBHOOK_URLS": f"{base}/hooks",
            "WEBHOOK_SECRETS": secret,
            "LOG_LEVEL": "WARNING",
            "WORKER_METRICS_PORT": "0",
        }
        with process(worker_command(processes, threads), env, logs / "ours.log") as workers:
            wait_for_workers(namespace, processes, workers, logs / "ours.log")
            from social_accounts.settings import Settings
            from workers import messages
            from workers.broker import build_broker
            from workers.bulk import enqueue_calls

            broker = build_broker(Settings(_env_file=None, broker_url=REDIS_URL, redis_namespace=namespace))  # type: ignore[call-arg]
            client.delete(f"{base}/count")
            started = time.time()
            enqueue_calls(broker, messages.QUEUE_WEBHOOKS, messages.DISPATCH_EVENTS, [{}])
            ours = _wait(client, base, events, workers, timeout) - started
        delivered = _delivered(db_url)
        if delivered != events:
            raise BenchError(f"{delivered} of {events} delivery rows are delivered")
        # ---- bare ----
        bare_ns = namespace + "-bare"
        bare_env = {
            "BROKER_URL": REDIS_URL,
            "BARE_NAMESPACE": bare_ns,
            "RECEIVER_URL": f"{base}/hooks",
            "WEBHOOK_KEY": base64.b64encode(key).decode(),
            "dramatiq_worker_timeout": "200",  # ours' idle poll (service.cli.IDLE_POLL_MS): both start alike
        }
        bare_cmd = [str(VENV_BIN / "dramatiq"), "bare_webhooks", "--path", str(BENCH_DIR)]
        bare_cmd += ["--processes", str(processes), "--threads", str(threads), "--worker-shutdown-timeout", "5000"]
        with process(bare_cmd, bare_env, logs / "bare.log") as bare:
            wait_for_workers(bare_ns, processes, bare, logs / "bare.log")
            bare_broker = build_broker(Settings(_env_file=None, broker_url=REDIS_URL, redis_namespace=bare_ns))  # type: ignore[call-arg]
            body = {
                "type": "account.status_changed",
                "timestamp": datetime.now(UTC).isoformat(),
                "data": {"status_to": "error"},
            }
            calls = [{"event_id": str(uuid.uuid4()), "body": body} for _ in range(events)]
            client.delete(f"{base}/count")
            started = time.time()
            enqueue_calls(bare_broker, "bare_webhooks", "bare_webhook", calls)
            reference = _wait(client, base, events, bare, timeout) - started
    ours_rate, bare_rate = events / ours, events / reference
    ratio = ours_rate / bare_rate
    rows = [
        Row("ours (events/s)", f"{ours_rate:,.0f}"),
        Row("bare Dramatiq worker (POSTs/s)", f"{bare_rate:,.0f}"),
        Row("ours / bare", f"{ratio:.2f}", f">= {GOAL}", ratio >= GOAL),
    ]
    return EventsResult(events, ours_rate, bare_rate, rows)


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    result = measure(args.events, args.processes, args.threads, args.timeout)
    print_table(
        f"Webhook delivery of {args.events} events ({args.processes} processes x {args.threads} threads)", result.rows
    )


def _delivered(db_url: str) -> int:
    import sqlalchemy as sa

    from models.engine import make_engine

    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            query = sa.text("SELECT count(*) FROM social_webhook_deliveries WHERE status = 'delivered'")
            return int(conn.execute(query).scalar_one())
    finally:
        engine.dispose()


if __name__ == "__main__":
    main_guard(run)
