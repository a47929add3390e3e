"""Benchmark: connects per second through the real pipeline (Redis, workers, PostgreSQL, platform).

Why this shape: a connect is I/O-bound on the platform, so the number that matters is how close
the workers come to keeping every thread busy on a platform call. With ``P`` processes x ``T``
threads and a platform answering every call after ``d`` seconds, the ceiling is
``P*T / (calls per connect * d)`` connects per second; everything else (Redis, the database,
encryption, our own code) shows up as the distance from it.

Setup: the fake platform (every module installed, ``delay = 0.020``) in this process; a fresh
PostgreSQL database migrated to head; a dedicated Redis namespace; ``social-accounts worker
--processes 2 --threads 8`` with the fake's settings. N twitter attempts (distinct sites) are
created with ``models.attempts.create_attempt``, authorized on the fake (real codes bound to
PKCE), then every callback's ``code_received`` message (codes encrypted as the web app does) is
enqueued in one pipelined write (``workers.bulk.enqueue_many``). The clock runs from the first
enqueue until the last ``connected`` event (its time as the worker wrote it; the bench checks
every 0.25 s whether every attempt has left ``pending``). Calls per connect are counted from the
fake's request log.

Reference, same run: the bare Dramatiq worker (``bench/bare_worker.py``, stock CLI, same
processes and threads, same fake delay) connects another N codes with the same two calls (code
exchange, ``users/me``) through a plain ``httpx.Client``, nothing else. Goal: ours >= 0.6x its
connects per second.

Checks: every attempt ``connected``, none failed, each with exactly one account, N distinct
accounts, exactly one code exchange per attempt, exactly ``CALLS_PER_CONNECT`` platform calls
each (the design's count). The ratio to the ideal is printed for comparison with older runs.

Why 2,000 by default: the rate in steady flow is what the goal is about. 500 connects last
under 2 s, where the consumers' first poll after an idle spell (up to ``IDLE_POLL_MS``) and
the last threads finishing alone weigh several percent, and one busy moment of the machine
moves the ratio by 0.1 (``bench/README.md``, fourth round). ``--connects 500`` still runs that.

Run: ``.venv/bin/python bench/pipeline.py [--connects 2000] [--no-bare]``
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bare_reference import BareResult, bare_rows, run_bare  # noqa: E402
from common import (  # noqa: E402
    POLL_SECONDS,
    BenchError,
    Row,
    db_commits,
    fake_capacity,
    fake_platform,
    group_cpu_seconds,
    last_event_at,
    load_average,
    main_guard,
    pg_database,
    print_table,
    process,
    redis_namespace,
    service_for,
    tail,
    wait_for_workers,
    worker_command,
)

DELAY = 0.020
PLATFORM = "twitter"


def prepare(settings: Any, engine: Any, ring: Any, n: int) -> list[tuple[str, str]]:
    """N pending attempts, each authorized on the fake: ``[(attempt_id, code)]``."""
    from sqlalchemy.orm import Session

    from models.attempts import create_attempt
    from platforms.oauth2 import pkce_pair

    now = datetime.now(UTC)
    attempts: list[tuple[str, str]] = []
    with Session(engine) as session, session.begin():
        for i in range(n):
            verifier, challenge = pkce_pair()
            attempt_id = create_attempt(
                session,
                ring,
                platform=PLATFORM,
                site_id=f"bench-site-{i}",
                user_id="bench-user",
                expires_at=now + timedelta(minutes=30),
                now=now,
                code_verifier=verifier,
            )
            attempts.append((attempt_id, challenge))

    def authorize(item: tuple[str, str]) -> tuple[str, str]:
        attempt_id, challenge = item
        return attempt_id, authorize_on_fake(settings, attempt_id, challenge)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return list(pool.map(authorize, attempts))


def authorize_on_fake(settings: Any, state: str, challenge: str) -> str:
    """Walk the fake's authorize step as a browser would; the code it redirects with."""
    import httpx

    from platforms.registry import get_adapter

    with httpx.Client() as browser:
        adapter = get_adapter(PLATFORM, settings, browser)
        url = adapter.authorization_url(state=state, redirect_uri=settings.redirect_uri, code_challenge=challenge)
        response = browser.get(url, follow_redirects=False)
    if response.status_code != 302:
        raise BenchError(f"the fake's authorize answered {response.status_code}")
    query = dict(httpx.URL(response.headers["location"]).params)
    if "code" not in query:
        raise BenchError(f"the fake's authorize gave no code: {sorted(query)}")
    return query["code"]


def bare_connect_calls(settings: Any, n: int) -> list[dict[str, Any]]:
    """N codes authorized on the fake with PKCE, without any attempt row: the bare worker's messages."""
    from platforms.oauth2 import pkce_pair

    def one(i: int) -> dict[str, Any]:
        verifier, challenge = pkce_pair()
        return {"code": authorize_on_fake(settings, f"bare-{i}", challenge), "code_verifier": verifier}

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(n)))


def outcome(engine: Any) -> Counter[str]:
    import sqlalchemy as sa

    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT status, count(*) FROM social_oauth_states GROUP BY status")).all()
    return Counter({str(status): int(count) for status, count in rows})


#: platform calls one connect makes, from the design (docs/design.md, "One connect, end to end"):
#: the code exchange and the profile. The ideal and the checks use this constant, never what a
#: run observed, so an extra call per connect shows up as a missed check.
CALLS_PER_CONNECT = 2
TOKEN_PATH = "/twitter/2/oauth2/token"


@dataclass
class PipelineResult:
    """One run's figures: ours, the bare worker's (when run), and the correctness counts."""

    n: int
    rate: float
    ideal: float
    calls: int
    exchanges: int
    connected: int
    failed: int
    clean: bool
    bare: BareResult | None
    rows: list[Row]

    @property
    def correct(self) -> bool:
        return self.clean and self.exchanges == self.n and self.calls == self.n * CALLS_PER_CONNECT


def measure(
    connects: int, *, processes: int = 2, threads: int = 8, timeout: float = 300.0, bare: bool = True
) -> PipelineResult:
    """``connects`` callbacks through our workers, then (``bare``) as many through the bare worker."""
    concurrency = processes * threads

    import sqlalchemy as sa

    from workers.broker import build_broker
    from workers.bulk import enqueue_many
    from workers.publish import code_received_message

    with (
        tempfile.TemporaryDirectory(prefix="sa-bench-") as tmp,
        fake_platform() as fake,
        pg_database() as db_url,
        redis_namespace() as namespace,
    ):
        # no ping per poll: each would count as a commit
        svc = service_for(fake, db_url, namespace, ping_after_idle=60.0)
        env, settings, ring, engine = svc.env, svc.settings, svc.ring, svc.engine
        broker = build_broker(settings)
        try:
            fake.delay = DELAY
            capacity = fake_capacity(fake, concurrency)
            fake.delay = 0.0
            attempts = prepare(settings, engine, ring, connects)
            log = Path(tmp) / "workers.log"
            with process(worker_command(processes, threads), env, log) as workers:
                wait_for_workers(namespace, processes, workers, log)
                fake.delay = DELAY
                fake.reset_log()
                commits_before = db_commits(engine)
                cpu_before = group_cpu_seconds(workers.pid)
                own_cpu_before = time.process_time()
                load_before = load_average()
                # the web app's share (encrypting each code, building its message) happens
                # before the clock; the enqueue is one pipelined write, as callbacks arriving
                # together would be: one message at a time from this process (the fake's own)
                # took ~2 s for 4,000 and slowed the fake's answers while it ran
                messages = [
                    code_received_message(
                        attempt_id=attempt_id,
                        code_enc=ring.encrypt(code, table="message", column="code", row_id=attempt_id),
                    )
                    for attempt_id, code in attempts
                ]
                started, started_at = time.monotonic(), time.time()
                enqueue_many(broker, messages)
                enqueued = time.monotonic() - started
                while True:
                    counts = outcome(engine)
                    if counts["pending"] == 0:
                        break
                    if time.monotonic() - started > timeout:
                        raise BenchError(f"still pending after {timeout:.0f}s: {dict(counts)}\n{tail(log)}")
                    if workers.poll() is not None:
                        raise BenchError(f"the workers died:\n{tail(log)}")
                    time.sleep(POLL_SECONDS)
                elapsed = last_event_at(engine, "connected") - started_at
                worker_cpu = group_cpu_seconds(workers.pid) - cpu_before
                own_cpu = time.process_time() - own_cpu_before
                load = max(load_before, load_average())
            # counted once the workers are gone: a backend publishes its counters when it exits,
            # and an idle one only lazily (a count taken while they sit idle misses some)
            time.sleep(0.5)
            commits = db_commits(engine) - commits_before
            calls = Counter(r.path for r in list(fake.requests))
            with engine.connect() as conn:
                accounts = conn.execute(sa.text("SELECT count(*) FROM social_accounts")).scalar_one()
                per_attempt = conn.execute(
                    sa.text(
                        "SELECT count(*) FROM social_oauth_states "
                        "WHERE status = 'connected' AND json_array_length(account_ids::json) = 1"
                    )
                ).scalar_one()
                reused = conn.execute(
                    sa.text("SELECT count(*) FROM social_oauth_states WHERE history::text LIKE '%state_reused%'")
                ).scalar_one()
            bare_result: BareResult | None = None
            if bare:
                fake.delay = 0.0
                bare_calls = bare_connect_calls(settings, connects)
                fake.delay = DELAY
                bare_result = run_bare(
                    fake,
                    env,
                    namespace,
                    "connect",
                    bare_calls,
                    processes=processes,
                    threads=threads,
                    workdir=Path(tmp),
                    timeout=timeout,
                )
        finally:
            broker.close()
            engine.dispose()

    n = connects
    total_calls = sum(calls.values())
    per_connect = total_calls / n
    ideal = concurrency / (CALLS_PER_CONNECT * DELAY)
    rate = n / elapsed
    exchanges = calls.get(TOKEN_PATH, 0)
    clean = counts["connected"] == n and counts["failed"] == 0 and per_attempt == n and accounts == n and reused == 0
    rows = [
        Row("connects", f"{n}"),
        Row("platform calls per connect", f"{per_connect:.2f}  ({', '.join(f'{p} {c}' for p, c in calls.items())})"),
        Row("fake capacity, 16 clients", f"{capacity:,.0f} req/s (ceiling {concurrency / DELAY:,.0f})"),
        Row("enqueue time", f"{enqueued * 1000:.0f} ms"),
        Row("first enqueue -> all connected", f"{elapsed:.2f} s"),
        Row("connects/s", f"{rate:.1f}"),
        Row(
            "ideal connects/s",
            f"{ideal:.1f}  (= {concurrency} / ({CALLS_PER_CONNECT} calls x {DELAY * 1000:.0f} ms), by design)",
        ),
        Row("platform calls", f"{total_calls}", f"== {n * CALLS_PER_CONNECT}", total_calls == n * CALLS_PER_CONNECT),
        Row(
            "worker CPU per connect", f"{worker_cpu / n * 1000:.1f} ms (2 procs: {worker_cpu / elapsed:.2f} cores busy)"
        ),
        Row("fake+bench CPU per connect", f"{own_cpu / n * 1000:.1f} ms"),
        Row("DB transactions per connect", f"{commits / n:.1f}  (a read in autocommit counts as one)"),
        Row("load average (1 min)", f"{load:.1f} on {os.cpu_count()} cores"),
        Row("ratio to ideal (informational)", f"{rate / ideal:.2f}x"),
        Row("connected / failed", f"{counts['connected']} / {counts['failed']}", f"{n} / 0", clean),
        Row("code exchanges", f"{exchanges}", f"{n}", exchanges == n),
        Row("accounts / replays", f"{accounts} / {reused}", f"{n} / 0", accounts == n and reused == 0),
    ]
    if bare_result is not None:
        rows += bare_rows(bare_result, rate, "connect", "connects")
    return PipelineResult(
        n, rate, ideal, total_calls, exchanges, counts["connected"], counts["failed"], clean, bare_result, rows
    )


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connects", type=int, default=2000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds")
    parser.add_argument("--no-bare", action="store_true", help="skip the bare Dramatiq worker reference")
    args = parser.parse_args()
    result = measure(
        args.connects, processes=args.processes, threads=args.threads, timeout=args.timeout, bare=not args.no_bare
    )
    print_table(
        f"connect pipeline: {args.processes} worker processes x {args.threads} threads, "
        f"fake platform answering after {DELAY * 1000:.0f} ms, {args.connects} {PLATFORM} connects",
        result.rows,
    )


if __name__ == "__main__":
    main_guard(run)
