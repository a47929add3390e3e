"""Benchmark: one scheduler refresh tick over a million accounts, beside the bare claim.

What it answers: with 1,000,000 accounts in PostgreSQL of which 10,000 are due, how long does
``scheduler.jobs.refresh_ahead`` take to claim all of them and enqueue 10,000 messages to a real
Redis broker (goal: under 1 s at p95, and at most 2x the bare claim), does the claim walk the
partial index ``ix_social_accounts_next_refresh_active``, and does the scheduler's memory stay
flat. The reference, same run: the claim alone (``scheduler.claims.claim_due``, the ``UPDATE …
RETURNING`` in batches, committed), no message built or sent; the tick claims its next batch
while it enqueues the one it has (``scheduler.jobs._claim_and_emit``), so what it adds to the
bare claim is mostly its last batch's enqueue. A fresh database (``sa_bench_<hex>``)
is filled with ``generate_series`` (seconds, not minutes) and dropped at the end; Redis keys go
under a namespace of their own (``bench/common.py``).

Time is injected: each tick and each bare claim runs one lease after the one before, so all
10,000 accounts are due again every time and tick and bare claim alternate over the same rows.
The Redis queue is emptied after each tick (outside the timing) so Redis memory stays bounded.

Usage::

    .venv/bin/python bench/scheduler_tick.py [--accounts 1000000] [--due 10000] [--ticks 100]

Environment: ``BENCH_PG_ADMIN_URL`` and ``BENCH_REDIS_URL`` (``bench/common.py``).
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis  # noqa: E402
from common import REDIS_URL, pg_database, redis_namespace  # noqa: E402

from models.engine import make_engine  # noqa: E402
from scheduler import jobs  # noqa: E402
from scheduler.claims import claim_due, claim_statement  # noqa: E402
from social_accounts.settings import Settings  # noqa: E402
from workers.broker import build_broker  # noqa: E402

INDEX = "ix_social_accounts_next_refresh_active"
T0 = datetime(2030, 1, 1, tzinfo=UTC)

#: 1 in STEP accounts is due; 1 in 20 of the rest is in error with a past due time (the partial
#: index must leave those out); everything else is due between 2 and 30 days from T0.
FILL_SQL = """
INSERT INTO social_accounts (
    id, site_id, platform, platform_account_id, scopes, token_metadata, status, health_score,
    created_at, updated_at, token_version, consecutive_failures, refresh_model,
    token_expires_at, next_refresh_at, next_sync_at)
SELECT md5(i::text)::uuid::text, 'site-' || (i %% 5000), 'twitter', 'pa-' || i, '[]'::jsonb, '{}'::jsonb,
       CASE WHEN i %% %(step)s <> 0 AND i %% 20 = 1 THEN 'error' ELSE 'active' END, 100,
       %(t0)s, %(t0)s, 1, 0, 'rotate',
       %(t0)s + interval '1 hour',
       CASE WHEN i %% %(step)s = 0 THEN %(t0)s - (i %% 3600) * interval '1 second'
            WHEN i %% 20 = 1 THEN %(t0)s - interval '1 hour'
            ELSE %(t0)s + interval '2 days' + (i %% 2419200) * interval '1 second' END,
       %(t0)s + (i %% 21600) * interval '1 second'
FROM generate_series(1, %(n)s) AS i
"""


def rss_mib() -> float:
    """This process's resident set size, from /proc (no psutil)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


def clear_namespace(client: redis.Redis, namespace: str) -> None:
    keys = list(client.scan_iter(match=f"{namespace}:*", count=10_000))
    for i in range(0, len(keys), 5000):
        client.delete(*keys[i : i + 5000])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q * len(ordered)) - 1))]


@dataclass
class TickResult:
    """Tick durations (claim + enqueue), the bare claim's durations on the same rows, the checks."""

    due: int
    durations: list[float]
    bare: list[float]
    uses_index: bool
    rss: list[float]
    rows: list[tuple[str, str]]

    @property
    def p95(self) -> float:
        return percentile(self.durations, 0.95)

    @property
    def bare_p95(self) -> float:
        return percentile(self.bare, 0.95)


def bare_claim(engine: Any, now: datetime, lease: timedelta, due: int) -> float:
    """The claim alone: ``claim_due`` (the scheduler's ``UPDATE … RETURNING``, committed) in
    batches until nothing is due, no message built or sent. Its seconds."""
    began = time.perf_counter()
    claimed = 0
    while True:
        ids = claim_due(engine, "next_refresh_at", now=now, lease_until=now + lease, batch=jobs.CLAIM_BATCH)
        claimed += len(ids)
        if len(ids) < jobs.CLAIM_BATCH:
            break
    elapsed = time.perf_counter() - began
    if claimed != due:
        raise SystemExit(f"bare claim: claimed {claimed}, expected {due}")
    return elapsed


def measure(accounts: int, due: int, ticks: int, *, health: bool = False, explain: bool = True) -> TickResult:
    """Fill a fresh database, then ``ticks`` rounds of one ``refresh_ahead`` tick and one bare claim.

    Every tick and bare claim runs one lease (plus a second) after the previous one, so each finds
    all ``due`` accounts due again. ``health`` also times ``recompute_health`` over the table.
    """
    if accounts % due:
        raise SystemExit("accounts must be a multiple of due")
    step = accounts // due
    rows: list[tuple[str, str]] = []
    with pg_database() as db_url, redis_namespace() as namespace:
        engine = make_engine(db_url)
        started = time.perf_counter()
        with engine.begin() as conn:
            conn.exec_driver_sql(FILL_SQL, {"step": step, "t0": T0, "n": accounts})
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM ANALYZE social_accounts")
        rows.append(("fill + VACUUM ANALYZE", f"{time.perf_counter() - started:.1f} s ({accounts:,} rows)"))

        settings = Settings(
            _env_file=None,
            database_url=db_url,
            broker_url=REDIS_URL,
            redis_namespace=namespace,
            token_keys="k1:" + base64.urlsafe_b64encode(os.urandom(32)).decode(),
        )
        lease = timedelta(seconds=settings.refresh_lease_seconds)

        # the plan of the claim, as the first batch of a tick runs it (rolled back)
        stmt = claim_statement("next_refresh_at", now=T0, lease_until=T0 + lease, batch=jobs.CLAIM_BATCH)
        compiled = stmt.compile(dialect=engine.dialect)
        with engine.connect() as conn, conn.begin() as tx:
            plan = [
                r[0]
                for r in conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + str(compiled), compiled.params)
            ]
            tx.rollback()
        if explain:
            print(f"EXPLAIN (ANALYZE, BUFFERS) of the claim (batch {jobs.CLAIM_BATCH}):\n")
            print("\n".join("    " + line for line in plan) + "\n")
        uses_index = any(INDEX in line for line in plan)
        rows.append(("claim uses " + INDEX, "yes" if uses_index else "NO"))

        broker = build_broker(settings)
        client = redis.Redis.from_url(REDIS_URL)
        now = T0
        ctx = jobs.JobContext(settings=settings, engine=engine, broker=broker, clock=lambda: now)
        durations: list[float] = []
        bare: list[float] = []
        rss: list[float] = []
        step_time = lease + timedelta(seconds=1)
        try:
            for tick in range(ticks):
                now = T0 + (2 * tick) * step_time
                began = time.perf_counter()
                sent = jobs.refresh_ahead(ctx)
                durations.append(time.perf_counter() - began)
                if sent != due:
                    raise SystemExit(f"tick {tick}: sent {sent}, expected {due}")
                queued = client.llen(f"{namespace}:refresh")
                if queued != due:
                    raise SystemExit(f"tick {tick}: {queued} messages in Redis, expected {due}")
                clear_namespace(client, namespace)
                rss.append(rss_mib())
                bare.append(bare_claim(engine, T0 + (2 * tick + 1) * step_time, lease, due))

            rows.append(("first tick (claim + enqueue)", f"{durations[0] * 1000:.0f} ms for {due:,} messages"))
            rows.append(("tick median", f"{statistics.median(durations) * 1000:.0f} ms"))
            rows.append(("tick p95", f"{percentile(durations, 0.95) * 1000:.0f} ms"))
            rows.append(("tick max", f"{max(durations) * 1000:.0f} ms"))
            rows.append(
                (
                    "bare claim median / p95",
                    f"{statistics.median(bare) * 1000:.0f} / {percentile(bare, 0.95) * 1000:.0f} ms",
                )
            )
            marks = sorted(m for m in {1, 10, ticks // 2, ticks} if 1 <= m <= ticks)
            rows.append(
                (
                    "RSS after tick " + "/".join(map(str, marks)),
                    " / ".join(f"{rss[min(m, len(rss)) - 1]:.1f}" for m in marks) + " MiB",
                )
            )
            if health:
                started = time.perf_counter()
                changed = jobs.recompute_health(ctx)
                rows.append(
                    (
                        "recompute_health (whole table)",
                        f"{(time.perf_counter() - started) * 1000:.0f} ms, {changed:,} rows changed",
                    )
                )
        finally:
            broker.close()
            client.close()
            engine.dispose()
    return TickResult(due, durations, bare, uses_index, rss, rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=1_000_000)
    parser.add_argument("--due", type=int, default=10_000)
    parser.add_argument("--ticks", type=int, default=100)
    args = parser.parse_args()
    if args.accounts % args.due:
        parser.error("--accounts must be a multiple of --due")
    result = measure(args.accounts, args.due, args.ticks, health=True)
    rows = result.rows
    width = max(len(name) for name, _ in rows)
    print(f"{'measure':<{width}}  result")
    print(f"{'-' * width}  {'-' * 40}")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    goal = max(result.durations) < 1.0 and result.uses_index
    print(f"\ngoal (every tick < 1 s, index scan): {'met' if goal else 'NOT met'}")
    return 0 if goal else 1


if __name__ == "__main__":
    raise SystemExit(main())
