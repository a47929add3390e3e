"""Evaluation: the idle connect's latency against the workers' idle cost, per idle poll.

Why: Dramatiq's Redis consumer does not block on its queue; an idle consumer sleeps between
polls, up to ``dramatiq_worker_timeout`` ms (jittered between half and all of it), so a connect
after a quiet spell waits for the next poll. A shorter poll is a public option of Dramatiq and
costs idle CPU (one fetch script per queue and delay queue per process per poll, 10 consumers
per process here). For each value this starts the real service (``bench/latency.py: service``),
measures the idle workers' CPU over ``--idle-seconds``, then ``--connects`` connects, each after
a quiet spell, timed from the callback to "connected" (the design's platform time: 40 ms).

``--rabbitmq`` runs the same on RabbitMQ (push delivery: a consumer is handed the message, no
poll), in a virtual host of the run's own (``rabbitmqctl``).

Run: ``.venv/bin/python bench/idle_poll.py [--timeouts 200,100,50,25] [--connects 30] [--rabbitmq]``
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
from common import BenchError, Row, group_cpu_seconds, main_guard, print_table, rabbitmq_vhost  # noqa: E402
from latency import DELAY, IDLE_GAP, callback_paths, connected_at, percentile, service, wait_settled  # noqa: E402
from pipeline import CALLS_PER_CONNECT, prepare  # noqa: E402


def one(
    timeout_ms: int, connects: int, idle_seconds: float, broker_url: str | None = None
) -> tuple[float, list[float]]:
    """Idle CPU of the worker pool (share of one core) and the idle connects' latencies (ms)."""
    with (
        tempfile.TemporaryDirectory(prefix="sa-bench-") as tmp,
        service(Path(tmp), {"dramatiq_worker_timeout": str(timeout_ms)}, broker_url) as stack,
    ):
        fake, svc, base, _web, workers, log = stack
        attempts = prepare(svc.settings, svc.engine, svc.ring, connects)
        paths = callback_paths(svc.settings, attempts)
        fake.delay = DELAY
        time.sleep(2.0)  # start-up work done, every consumer at its longest sleep
        cpu = group_cpu_seconds(workers.pid)
        time.sleep(idle_seconds)
        idle_cpu = (group_cpu_seconds(workers.pid) - cpu) / idle_seconds
        sent: list[float] = []
        with httpx.Client(base_url=base, timeout=10) as client:
            for path in paths:
                time.sleep(random.uniform(*IDLE_GAP))
                sent.append(time.time())
                if client.get(path).status_code != 303:
                    raise BenchError("the callback did not answer 303")
        ids = [a for a, _ in attempts]
        wait_settled(svc.engine, ids, workers, log, 60)
        ends, _ = connected_at(svc.engine, ids)
    return idle_cpu, [(ends[a] - t) * 1000 for a, t in zip(ids, sent, strict=True) if a in ends]


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--timeouts", default="200,100,50,25", help="dramatiq_worker_timeout values, ms")
    parser.add_argument("--connects", type=int, default=30)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--rabbitmq", action="store_true", help="also run once on RabbitMQ (push delivery)")
    args = parser.parse_args()
    reference = CALLS_PER_CONNECT * DELAY * 1000
    rows = [Row("platform calls' own time (design)", f"{reference:.0f} ms")]
    for value in (int(v) for v in args.timeouts.split(",")):
        idle_cpu, ms = one(value, args.connects, args.idle_seconds)
        p50, p99 = percentile(ms, 0.5), percentile(ms, 0.99)
        rows.append(
            Row(
                f"worker_timeout {value} ms",
                f"idle p50 {p50:.0f} (+{p50 - reference:.0f}) / p99 {p99:.0f} (+{p99 - reference:.0f}) ms, "
                f"idle workers {idle_cpu * 100:.1f} % of a core",
                "+30 / +150 ms",
                p50 - reference <= 30 and p99 - reference <= 150,
            )
        )
    if args.rabbitmq:
        with rabbitmq_vhost() as url:
            idle_cpu, ms = one(1000, args.connects, args.idle_seconds, url)
        p50, p99 = percentile(ms, 0.5), percentile(ms, 0.99)
        rows.append(
            Row(
                "RabbitMQ (push)",
                f"idle p50 {p50:.0f} (+{p50 - reference:.0f}) / p99 {p99:.0f} (+{p99 - reference:.0f}) ms, "
                f"idle workers {idle_cpu * 100:.1f} % of a core",
                "+30 / +150 ms",
                p50 - reference <= 30 and p99 - reference <= 150,
            )
        )
    print_table(f"idle connect latency per idle poll: {args.connects} connects each, 2 processes x 8 threads", rows)


if __name__ == "__main__":
    main_guard(run)
