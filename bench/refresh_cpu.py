"""Profile: CPU of one token refresh in one thread, without the broker (where the time goes).

Why: ``bench/refresh.py`` measures throughput, which on a 2-core machine is bound by CPU per
refresh; this script measures that CPU alone, repeatably, and can write a cProfile of it. The
fake platform answers at once; the main thread's CPU time (``time.thread_time``) excludes the
fake's server threads.

Run: ``.venv/bin/python bench/refresh_cpu.py [--accounts 2000] [--profile OUT.pstats]``
"""

from __future__ import annotations

import argparse
import cProfile
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import fake_platform, main_guard, pg_database, redis_namespace, service_for  # noqa: E402
from refresh import seed  # noqa: E402


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--accounts", type=int, default=2000)
    parser.add_argument("--profile", help="write a cProfile of the timed loop here")
    args = parser.parse_args()

    from workers import runtime
    from workers.refresh import refresh_now

    with fake_platform() as fake, pg_database() as db_url, redis_namespace() as namespace:
        svc = service_for(fake, db_url, namespace)
        seed(fake, svc.engine, svc.ring, args.accounts)
        svc.engine.dispose()
        rt = runtime.configure(svc.settings)
        try:
            from sqlalchemy import text

            with rt.engine.connect() as conn:
                ids = [r for (r,) in conn.execute(text("SELECT id FROM social_accounts ORDER BY id"))]
            warm, timed = ids[:100], ids[100:]
            for account_id in warm:
                refresh_now(rt, account_id, reason="scheduled", precheck=False)
            profiler = cProfile.Profile(time.thread_time) if args.profile else None
            if profiler:
                profiler.enable()
            cpu, wall = time.thread_time(), time.perf_counter()
            outcomes: dict[str, int] = {}
            for account_id in timed:
                outcome = refresh_now(rt, account_id, reason="scheduled", precheck=False).outcome
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
            cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
            if profiler:
                profiler.disable()
                profiler.dump_stats(args.profile)
        finally:
            runtime.reset()
    n = len(timed)
    print(f"refreshes {n}  outcomes {outcomes}")
    print(f"CPU per refresh   {cpu / n * 1e6:8.0f} us (one thread, no broker)")
    print(f"wall per refresh  {wall / n * 1e6:8.0f} us")


if __name__ == "__main__":
    main_guard(run)
