"""Profile: CPU of one OAuth connect in one thread, without the broker (where the time goes).

Why: ``bench/pipeline.py`` measures throughput, which on a 2-core machine is bound by the
workers' CPU per connect; this script measures that CPU alone, repeatably, and can write a
cProfile of it. Attempts are created and authorized on the fake exactly as ``pipeline.py`` does
(real single-use codes bound to PKCE, codes encrypted as the web app does); then the body of the
``code_received`` actor runs for each, in this thread. The fake answers at once; the main
thread's CPU time (``time.thread_time``) excludes the fake's server threads.

Run: ``.venv/bin/python bench/connect_cpu.py [--connects 1000] [--profile OUT.pstats]``
"""

from __future__ import annotations

import argparse
import cProfile
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    fake_platform,
    main_guard,
    pg_database,
    redis_namespace,
    service_for,
)
from pipeline import prepare  # noqa: E402

#: connects run before the clock starts (connection pool, statement caches, imports)
WARM = 100
#: connects per CPU sample
CHUNK = 50


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connects", type=int, default=1000, help="timed connects (plus 100 to warm up)")
    parser.add_argument("--profile", help="write a cProfile of the timed loop here")
    args = parser.parse_args()

    import sqlalchemy as sa

    from workers import runtime

    with fake_platform() as fake, pg_database() as db_url, redis_namespace() as namespace:
        svc = service_for(fake, db_url, namespace)
        settings, engine, ring = svc.settings, svc.engine, svc.ring
        attempts = prepare(settings, engine, ring, WARM + args.connects)
        messages = [
            (attempt_id, ring.encrypt(code, table="message", column="code", row_id=attempt_id))
            for attempt_id, code in attempts
        ]
        rt = runtime.configure(settings)
        try:
            from workers.actors import code_received

            def connect(attempt_id: str, code_enc: str) -> None:
                # the actor's body, as a worker thread runs it (outside a worker each call gets a
                # fresh message id: retrying.current_delivery)
                code_received.fn(attempt_id, code_enc=code_enc)

            warm, timed = messages[:WARM], messages[WARM:]
            for attempt_id, code_enc in warm:
                connect(attempt_id, code_enc)
            rt.engine.dispose()  # every pooled backend exits, so PostgreSQL has counted its transactions
            commits = _transactions(db_url)
            profiler = cProfile.Profile(time.thread_time) if args.profile else None
            if profiler:
                profiler.enable()
            chunks: list[float] = []  # CPU per connect of each chunk: the median resists other load
            cpu, wall = time.thread_time(), time.perf_counter()
            for start in range(0, len(timed), CHUNK):
                chunk_cpu = time.thread_time()
                for attempt_id, code_enc in timed[start : start + CHUNK]:
                    connect(attempt_id, code_enc)
                chunks.append((time.thread_time() - chunk_cpu) / len(timed[start : start + CHUNK]))
            cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
            if profiler:
                profiler.disable()
                profiler.dump_stats(args.profile)
            rt.engine.dispose()
            time.sleep(0.5)
            commits = _transactions(db_url) - commits - 1  # the first count's own transaction
            with rt.engine.connect() as conn:
                statuses = Counter(
                    {
                        str(s): int(n)
                        for s, n in conn.execute(
                            sa.text("SELECT status, count(*) FROM social_oauth_states GROUP BY status")
                        )
                    }
                )
        finally:
            runtime.reset()
            engine.dispose()
    n = len(timed)
    calls = Counter(r.path for r in list(fake.requests))
    print(f"connects {n} (+{WARM} warm-up)  attempts {dict(statuses)}")
    print(f"platform calls    {dict(calls)}")
    print(f"CPU per connect   {cpu / n * 1e6:8.0f} us mean, {statistics.median(chunks) * 1e6:.0f} us median of")
    print(f"                  {len(chunks)} chunks of {CHUNK} (one thread, no broker; fake's threads excluded)")
    print(f"wall per connect  {wall / n * 1e6:8.0f} us")
    print(f"transactions per connect {commits / n:.2f} (PostgreSQL's count; a read in autocommit is one)")


def _transactions(db_url: str) -> int:
    """Transactions committed in the database so far (``pg_stat_database``), read on a connection
    of its own: a backend publishes its counts when it exits (or lazily, about once a second)."""
    import psycopg

    with psycopg.connect(db_url.replace("postgresql+psycopg://", "postgresql://", 1), autocommit=True) as conn:
        row = conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()").fetchone()
    assert row is not None
    return int(row[0])


if __name__ == "__main__":
    main_guard(run)
