"""Benchmark: one scheduler refresh tick over a million accounts.

What it answers: with 1,000,000 accounts in PostgreSQL of which 10,000 are due, how long does
``scheduler.jobs.refresh_ahead`` take to claim all of them and enqueue 10,000 messages to a real
Redis broker (goal: under 1 s), does the claim walk the partial index
``ix_social_accounts_next_refresh_active``, and does the scheduler's memory stay flat over 100
ticks. It creates the database ``sa_bench``, fills it with ``generate_series`` (seconds, not
minutes), and drops it at the end.

Time is injected: each tick runs one lease later than the previous one, so the 10,000 accounts
claimed by a tick are due again at the next, and every tick does the full work. The Redis queue is
emptied between ticks (outside the timing) so Redis memory stays bounded.

Usage::

    .venv/bin/python bench/scheduler_tick.py [--accounts 1000000] [--due 10000] [--ticks 100]

Environment: ``BENCH_PG_ADMIN_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``),
``BENCH_REDIS_URL`` (default ``redis://127.0.0.1:6379/12``; only keys under ``sa-bench:`` are used).
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402
import redis  # noqa: E402

from models.engine import make_engine  # noqa: E402
from models.migrate import upgrade  # noqa: E402
from scheduler import jobs  # noqa: E402
from scheduler.claims import claim_statement  # noqa: E402
from social_accounts.settings import Settings  # noqa: E402
from workers.broker import build_broker  # noqa: E402

DB_NAME = "sa_bench"
NAMESPACE = "sa-bench"
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


def admin(url: str, sql: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)


def clear_namespace(client: redis.Redis) -> None:
    keys = list(client.scan_iter(match=f"{NAMESPACE}:*", count=10_000))
    for i in range(0, len(keys), 5000):
        client.delete(*keys[i : i + 5000])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=1_000_000)
    parser.add_argument("--due", type=int, default=10_000)
    parser.add_argument("--ticks", type=int, default=100)
    parser.add_argument("--keep", action="store_true", help="do not drop the database at the end")
    args = parser.parse_args()
    if args.accounts % args.due:
        parser.error("--accounts must be a multiple of --due")
    step = args.accounts // args.due

    admin_url = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
    db_url = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + f"/{DB_NAME}"

    admin(admin_url, f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
    admin(admin_url, f'CREATE DATABASE "{DB_NAME}"')
    rows: list[tuple[str, str]] = []
    try:
        upgrade(db_url)
        engine = make_engine(db_url)
        started = time.perf_counter()
        with engine.begin() as conn:
            conn.exec_driver_sql(FILL_SQL, {"step": step, "t0": T0, "n": args.accounts})
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM ANALYZE social_accounts")
        rows.append(("fill + VACUUM ANALYZE", f"{time.perf_counter() - started:.1f} s ({args.accounts:,} rows)"))

        settings = Settings(
            _env_file=None,
            database_url=db_url,
            broker_url=redis_url,
            redis_namespace=NAMESPACE,
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
        print(f"EXPLAIN (ANALYZE, BUFFERS) of the claim (batch {jobs.CLAIM_BATCH}):\n")
        print("\n".join("    " + line for line in plan) + "\n")
        uses_index = any(INDEX in line for line in plan)
        rows.append(("claim uses " + INDEX, "yes" if uses_index else "NO"))

        broker = build_broker(settings)
        client = redis.Redis.from_url(redis_url)
        clear_namespace(client)
        now = T0
        ctx = jobs.JobContext(settings=settings, engine=engine, broker=broker, clock=lambda: now)
        durations: list[float] = []
        rss: list[float] = []
        for tick in range(args.ticks):
            now = T0 + tick * (lease + timedelta(seconds=1))
            began = time.perf_counter()
            sent = jobs.refresh_ahead(ctx)
            durations.append(time.perf_counter() - began)
            if sent != args.due:
                raise SystemExit(f"tick {tick}: sent {sent}, expected {args.due}")
            queued = client.llen(f"{NAMESPACE}:refresh")
            if queued != args.due:
                raise SystemExit(f"tick {tick}: {queued} messages in Redis, expected {args.due}")
            clear_namespace(client)
            rss.append(rss_mib())

        rows.append(("first tick (claim + enqueue)", f"{durations[0] * 1000:.0f} ms for {args.due:,} messages"))
        ordered = sorted(durations)
        rows.append(("tick median", f"{statistics.median(durations) * 1000:.0f} ms"))
        rows.append(("tick p95", f"{ordered[int(len(ordered) * 0.95) - 1] * 1000:.0f} ms"))
        rows.append(("tick max", f"{ordered[-1] * 1000:.0f} ms"))
        marks = sorted({1, 10, args.ticks // 2, args.ticks})
        rows.append(
            (
                "RSS after tick " + "/".join(map(str, marks)),
                " / ".join(f"{rss[min(m, len(rss)) - 1]:.1f}" for m in marks) + " MiB",
            )
        )

        started = time.perf_counter()
        changed = jobs.recompute_health(ctx)
        rows.append(
            (
                "recompute_health (whole table)",
                f"{(time.perf_counter() - started) * 1000:.0f} ms, {changed:,} rows changed",
            )
        )

        broker.close()
        client.close()
        engine.dispose()
    finally:
        if not args.keep:
            admin(admin_url, f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')

    width = max(len(name) for name, _ in rows)
    print(f"{'measure':<{width}}  result")
    print(f"{'-' * width}  {'-' * 40}")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    goal = max(durations) < 1.0 and uses_index
    print(f"\ngoal (every tick < 1 s, index scan): {'met' if goal else 'NOT met'}")
    return 0 if goal else 1


if __name__ == "__main__":
    raise SystemExit(main())
