"""Benchmark: what people feel (connect and token latency) and the workers' memory over time.

Why one service for all three: the user who pressed **Allow** waits for the callback, the web
app, Redis, a worker and two platform calls; the module that asks for a token waits for the web
app and the database. Both are measured against the real processes: one uvicorn process serving
the product app (``bench/callback.py: create_bench_app``, which adds the bench-only reference
routes) and ``social-accounts worker --processes 2 --threads 8``, the fake platform answering
every call after 20 ms, a fresh PostgreSQL database and a Redis namespace of this run's own.

* **Callback to "connected"**: a real ``GET /oauth/callback`` with a signed state and a live
  code, timed from just before the request to the attempt's ``connected`` event (the worker's
  clock, same machine). Idle: one connect after each quiet spell of ``IDLE_GAP`` seconds, so the
  consumers are at their longest idle poll. Loaded: callbacks sent open-loop at 50 per second.
  Reference: the platform calls' own time, ``CALLS_PER_CONNECT x DELAY`` (the design's two calls,
  not what the run observed). Goal: p50 <= +30 ms, p99 <= +150 ms over it.
* **Token API**: ``POST /v1/accounts/{id}/token`` for accounts whose token is not due, sent
  open-loop at 200 per second (latency counted from the scheduled send, so a stall is not hidden
  by sending less), beside ``POST /bench/row/{id}`` on the same server: one row by primary key in
  a worker thread, nothing else. Rounds alternate. Goal: p50 and p99 <= 2x the bare endpoint's.
* **Worker memory**: rounds of forced refreshes (``reason="api"``) of the same accounts until
  ``refreshes`` are done; the resident memory of the worker processes after the first tenth (the
  start, warmed up) against the end. Goal: within +-5 %.

Checks: every connect ``connected``, none failed, exactly two platform calls each; the token API
makes no platform call for a token that is not due; every refresh one token call, no grant
revoked, no refresh failed.

Run: ``.venv/bin/python bench/latency.py [--quick]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from callback import ROW_PATH, uvicorn_command  # noqa: E402
from common import (  # noqa: E402
    POLL_SECONDS,
    BenchError,
    Row,
    fake_platform,
    free_port,
    main_guard,
    pg_database,
    print_table,
    process,
    redis_namespace,
    service_for,
    tail,
    wait_for_port,
    wait_for_workers,
    worker_command,
)
from pipeline import CALLS_PER_CONNECT, PLATFORM, prepare  # noqa: E402
from refresh import CALLS_PER_REFRESH, TOKEN_PATH, events, seed  # noqa: E402

DELAY = 0.020
#: seconds of quiet before each idle connect: longer than any idle poll, so every consumer sleeps
IDLE_GAP = (1.0, 1.5)
CONNECT_RATE = 50.0
TOKEN_RATE = 200.0
#: the token API's accounts: their tokens live two hours (the fake's X lifetime), none is due
TOKEN_ACCOUNTS = 200
NOT_DUE_SECONDS = 7200


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q * len(ordered) + 0.5) - 1))]


@dataclass
class Sizes:
    """How much each part does: ``full()`` for the lead's run, ``quick()`` to check it works."""

    idle_connects: int
    load_seconds: float
    token_seconds: float
    token_rounds: int
    memory_accounts: int
    memory_rounds: int

    @classmethod
    def full(cls) -> Sizes:
        return cls(idle_connects=60, load_seconds=20, token_seconds=10, token_rounds=3, memory_accounts=2000,
                   memory_rounds=50)  # fmt: skip

    @classmethod
    def quick(cls) -> Sizes:
        return cls(idle_connects=8, load_seconds=3, token_seconds=3, token_rounds=1, memory_accounts=300,
                   memory_rounds=5)  # fmt: skip


@dataclass
class LatencyResult:
    """Milliseconds per figure, the checks, the memory in MiB, and the printable rows."""

    reference_ms: float
    idle_ms: list[float]
    load_ms: list[float]
    token_ms: list[float]
    row_ms: list[float]
    rss_start: float
    rss_end: float
    refreshes: int
    connects_ok: bool
    token_ok: bool
    memory_ok: bool
    rows: list[Row] = field(default_factory=list)


def rss_mib(pgid: int) -> float:
    """Resident memory of every process in group ``pgid`` (the worker pool), in MiB."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


def connected_at(engine: Any, attempt_ids: list[str]) -> tuple[dict[str, float], Counter[str]]:
    """Each attempt's ``connected`` event time (epoch seconds) and the attempts' statuses."""
    import sqlalchemy as sa

    with engine.connect() as conn:
        times = conn.execute(
            sa.text(
                "SELECT s.id, min(e.created_at) FROM social_oauth_states s "
                "JOIN social_account_events e ON e.account_id = (s.account_ids::json ->> 0) AND e.kind = 'connected' "
                "WHERE s.id = ANY(:ids) GROUP BY s.id"
            ),
            {"ids": attempt_ids},
        ).all()
        statuses = conn.execute(
            sa.text("SELECT status, count(*) FROM social_oauth_states WHERE id = ANY(:ids) GROUP BY status"),
            {"ids": attempt_ids},
        ).all()
    return {str(i): float(t.timestamp()) for i, t in times}, Counter({str(s): int(c) for s, c in statuses})


def wait_settled(engine: Any, attempt_ids: list[str], workers: Any, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        _, statuses = connected_at(engine, attempt_ids)
        if statuses["pending"] == 0:
            return
        if workers.poll() is not None:
            raise BenchError(f"the workers died:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise BenchError(f"attempts still pending after {timeout:.0f}s: {dict(statuses)}\n{tail(log)}")
        time.sleep(POLL_SECONDS)


async def open_loop(
    base: str, requests: list[tuple[str, str]], rate: float, headers: dict[str, str], expect: int
) -> tuple[list[float], list[float], int]:
    """Send ``(method, path)`` at ``rate`` per second on a fixed schedule, without waiting for
    answers. Returns each request's send time (epoch seconds), its latency from its scheduled
    time (ms), and how many answers were not ``expect``."""
    import httpx

    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    sent = [0.0] * len(requests)
    latency = [0.0] * len(requests)
    bad = 0
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=30) as client:
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.05

        async def one(i: int, method: str, path: str) -> None:
            nonlocal bad
            scheduled = start + i / rate
            await asyncio.sleep(max(0.0, scheduled - loop.time()))
            sent[i] = time.time()
            response = await client.request(method, path)
            latency[i] = (loop.time() - scheduled) * 1000
            if response.status_code != expect:
                bad += 1

        await asyncio.gather(*(one(i, m, p) for i, (m, p) in enumerate(requests)))
    return sent, latency, bad


def callback_paths(settings: Any, attempts: list[tuple[str, str]]) -> list[str]:
    """``/oauth/callback`` paths with a validly signed state for each ``(attempt_id, code)``."""
    from urllib.parse import urlencode

    from web_callback.state import SignedState, sign_state

    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    secret = settings.state_secret
    return [
        "/oauth/callback?"
        + urlencode(
            {
                "code": code,
                "state": sign_state(SignedState(a, PLATFORM, expires, f"{settings.public_url}/done"), secret),
            }
        )
        for a, code in attempts
    ]


@contextlib.contextmanager
def service(
    tmp: Path, worker_env: dict[str, str] | None = None, broker_url: str | None = None
) -> Iterator[tuple[Any, Any, str, Any, Any, Path]]:
    """The fake, the database, the web server and the workers (``worker_env`` added to theirs):
    ``(fake, svc, base, web, workers, log)``. ``broker_url`` (``amqp://``) puts web and workers
    on that broker instead of Redis (Redis keeps the locks and cooldowns)."""
    with fake_platform() as fake, pg_database() as db_url, redis_namespace() as namespace:
        svc = service_for(fake, db_url, namespace, ping_after_idle=60.0)
        if broker_url:
            env = {**svc.env, "BROKER_URL": broker_url, "REDIS_URL": svc.env["BROKER_URL"]}
            svc = type(svc)(env, svc.settings, svc.ring, svc.engine)
        port = free_port()
        web_log, log = tmp / "web.log", tmp / "workers.log"
        try:
            with (
                process(uvicorn_command("callback:create_bench_app", port), svc.env, web_log) as web,
                process(worker_command(2, 8), {**svc.env, **(worker_env or {})}, log) as workers,
            ):
                wait_for_port(port, web)
                if broker_url:  # no Redis heartbeats to wait for: give the consumers time to start
                    time.sleep(8.0)
                    if workers.poll() is not None:
                        raise BenchError(f"the workers exited:\n{tail(log)}")
                else:
                    wait_for_workers(namespace, 2, workers, log)
                yield fake, svc, f"http://127.0.0.1:{port}", web, workers, log
                if web.poll() is not None:
                    raise BenchError(f"the web server died:\n{tail(web_log)}")
        finally:
            svc.engine.dispose()


def measure(
    sizes: Sizes,
    progress: Callable[[str], None] = lambda _: None,
    *,
    broker_url: str | None = None,
    connects_only: bool = False,
) -> LatencyResult:
    """Connect latency idle and at 50/s, the token API at 200/s beside the bare row, worker memory.

    ``broker_url`` runs web and workers on that broker (``amqp://``); ``connects_only`` stops
    after the connect latencies (the token API and memory figures are then empty).
    """
    import httpx

    from workers import messages
    from workers.broker import build_broker
    from workers.bulk import enqueue_many

    reference = CALLS_PER_CONNECT * DELAY * 1000
    load_n = int(sizes.load_seconds * CONNECT_RATE)
    with tempfile.TemporaryDirectory(prefix="sa-bench-") as tmp, service(Path(tmp), None, broker_url) as stack:
        fake, svc, base, web, workers, log = stack
        settings, engine, ring = svc.settings, svc.engine, svc.ring
        fake.delay = 0.0
        attempts = prepare(settings, engine, ring, sizes.idle_connects + load_n)
        paths = callback_paths(settings, attempts)
        token_ids = memory_ids = []
        if not connects_only:
            token_ids = seed(fake, engine, ring, TOKEN_ACCOUNTS, expires_in=NOT_DUE_SECONDS, first=1_000_000)
            memory_ids = seed(fake, engine, ring, sizes.memory_accounts, first=2_000_000)
        fake.delay = DELAY
        fake.reset_log()

        # 1. idle: one callback after each quiet spell
        progress(f"connect latency, idle: {sizes.idle_connects} connects")
        idle_ids = [a for a, _ in attempts[: sizes.idle_connects]]
        idle_sent: list[float] = []
        with httpx.Client(base_url=base, timeout=10) as client:
            for path in paths[: sizes.idle_connects]:
                time.sleep(random.uniform(*IDLE_GAP))
                idle_sent.append(time.time())
                answer = client.get(path)
                if answer.status_code != 303:
                    raise BenchError(f"the callback answered {answer.status_code}")
        wait_settled(engine, idle_ids, workers, log, 60)

        # 2. loaded: 50 callbacks a second, open-loop
        progress(f"connect latency, {CONNECT_RATE:.0f}/s for {sizes.load_seconds:.0f} s")
        time.sleep(1.0)
        load_ids = [a for a, _ in attempts[sizes.idle_connects :]]
        load_sent, _, bad_callbacks = asyncio.run(
            open_loop(base, [("GET", p) for p in paths[sizes.idle_connects :]], CONNECT_RATE, {}, 303)
        )
        wait_settled(engine, load_ids, workers, log, 120)
        connect_calls = len(fake.requests)
        ids = idle_ids + load_ids
        ends, statuses = connected_at(engine, ids)
        idle_ms = [(ends[a] - t) * 1000 for a, t in zip(idle_ids, idle_sent, strict=True) if a in ends]
        load_ms = [(ends[a] - t) * 1000 for a, t in zip(load_ids, load_sent, strict=True) if a in ends]
        connects_ok = (
            statuses["connected"] == len(ids) and bad_callbacks == 0 and connect_calls == CALLS_PER_CONNECT * len(ids)
        )

        token_ms: list[float] = []
        row_ms: list[float] = []
        bad_tokens = token_calls = revoked = 0
        rss_start = rss_end = 0.0
        refreshes = 0
        token_ok = memory_ok = True
        refresh_calls: Counter[str] = Counter()
        counts: Counter[str] = Counter()
        if not connects_only:
            # 3. the token API at 200/s beside one row by primary key, alternating
            progress(f"token API at {TOKEN_RATE:.0f}/s: {sizes.token_rounds} x {sizes.token_seconds:.0f} s each side")
            fake.reset_log()
            auth = {"Authorization": f"Bearer {settings.api_token}"}
            count = int(sizes.token_seconds * TOKEN_RATE)
            for i in range(sizes.token_rounds + 1):  # the first round of each warms up, not counted
                picks = [random.choice(token_ids) for _ in range(count if i else count // 4)]
                sides = [("token", "/v1/accounts/{}/token", token_ms), ("row", ROW_PATH + "/{}", row_ms)]
                for _, template, into in sides if i % 2 == 0 else reversed(sides):
                    _, latency, bad = asyncio.run(
                        open_loop(base, [("POST", template.format(a)) for a in picks], TOKEN_RATE, auth, 200)
                    )
                    if i:
                        into.extend(latency)
                        bad_tokens += bad
            token_calls = len(fake.requests)
            token_ok = bad_tokens == 0 and token_calls == 0

            # 4. worker memory over rounds of forced refreshes of the same accounts
            refreshes = sizes.memory_accounts * sizes.memory_rounds
            progress(f"worker memory: {refreshes:,} refreshes")
            fake.reset_log()
            broker = build_broker(settings)
            done_before = events(engine)["refreshed"]
            try:
                for round_ in range(sizes.memory_rounds):
                    time.sleep(0.05)  # every message is stamped after the previous round's tokens
                    enqueue_many(
                        broker,
                        [
                            messages.build_message(messages.REFRESH_ACCOUNT, account_id=a, reason="api")
                            for a in memory_ids
                        ],
                    )
                    target = done_before + (round_ + 1) * sizes.memory_accounts
                    deadline = time.monotonic() + 120
                    while (counts := events(engine))["refreshed"] < target:
                        if counts["refresh_failed"] or workers.poll() is not None or time.monotonic() > deadline:
                            raise BenchError(f"refresh round {round_}: {dict(counts)}, expected {target}\n{tail(log)}")
                        time.sleep(POLL_SECONDS)
                    if round_ + 1 == max(1, sizes.memory_rounds // 10):
                        rss_start = rss_mib(workers.pid)
                rss_end = rss_mib(workers.pid)
            finally:
                broker.close()
            time.sleep(1.0)
            counts = events(engine)
            refresh_calls = Counter(r.path for r in list(fake.requests))
            with fake.grants.lock:
                revoked = sum(1 for g in fake.grants.grants.values() if g.revoked)
            memory_ok = (
                refresh_calls.get(TOKEN_PATH, 0) == CALLS_PER_REFRESH * refreshes
                and sum(refresh_calls.values()) == refresh_calls.get(TOKEN_PATH, 0)
                and revoked == 0
                and counts["refresh_failed"] == 0
                and counts["refreshed"] - done_before == refreshes
            )

    def ms(values: list[float]) -> str:
        return f"{percentile(values, 0.5):.1f} / {percentile(values, 0.99):.1f} ms"

    rows = [
        Row(
            "platform calls' own time (design)", f"{reference:.0f} ms ({CALLS_PER_CONNECT} calls x {DELAY * 1000:.0f})"
        ),
        Row("callback -> connected, idle p50 / p99", f"{ms(idle_ms)} ({len(idle_ms)} connects)"),
        Row(f"callback -> connected, {CONNECT_RATE:.0f}/s p50 / p99", f"{ms(load_ms)} ({len(load_ms)} connects)"),
        Row(
            "connects connected / platform calls",
            f"{statuses['connected']} / {connect_calls}",
            f"{len(ids)} / {CALLS_PER_CONNECT * len(ids)}",
            connects_ok,
        ),
        Row(f"token API at {TOKEN_RATE:.0f}/s p50 / p99", f"{ms(token_ms)} ({len(token_ms)} requests)"),
        Row(f"bare row read at {TOKEN_RATE:.0f}/s p50 / p99", f"{ms(row_ms)} ({len(row_ms)} requests)"),
        Row("token API bad answers / platform calls", f"{bad_tokens} / {token_calls}", "0 / 0", token_ok),
        Row("worker RSS start -> end", f"{rss_start:.1f} -> {rss_end:.1f} MiB ({refreshes:,} refreshes)"),
        Row(
            "refresh token calls / revoked / failed",
            f"{refresh_calls.get(TOKEN_PATH, 0):,} / {revoked} / {counts['refresh_failed']}",
            f"{CALLS_PER_REFRESH * refreshes:,} / 0 / 0",
            memory_ok,
        ),
    ]
    return LatencyResult(
        reference, idle_ms, load_ms, token_ms, row_ms, rss_start, rss_end, refreshes, connects_ok, token_ok,
        memory_ok, rows,
    )  # fmt: skip


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds per part, to check it works")
    args = parser.parse_args()
    result = measure(Sizes.quick() if args.quick else Sizes.full(), progress=lambda s: print(f"... {s}", flush=True))
    print_table("latency and memory: 1 uvicorn worker, 2 worker processes x 8 threads, fake after 20 ms", result.rows)


if __name__ == "__main__":
    main_guard(run)
