"""Running the bare Dramatiq worker (``bench/bare_worker.py``) beside ours in one benchmark run.

Why a reference in the same run: absolute refreshes or connects per second say more about the
machine than about our workers. The bare worker makes the same platform calls with the same
processes, threads and fake latency, its messages are enqueued the same way (one pipelined
write, ``workers.bulk.enqueue_many``), and its clock runs the same way (from the enqueue to the
last end the workers wrote down), so ``ours / bare`` isolates what our workers add.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    POLL_SECONDS,
    REDIS_URL,
    VENV_BIN,
    BenchError,
    Row,
    group_cpu_seconds,
    process,
    redis_client,
    tail,
    wait_for_workers,
)

BENCH_DIR = Path(__file__).resolve().parent
#: the actors and queues ``bench/bare_worker.py`` declares (not imported: it builds a broker at import)
ACTORS = {"refresh": ("bare_refresh", "bare_refresh"), "connect": ("bare_connect", "bare_connect")}
#: ``social-accounts worker``'s idle poll in ms (Dramatiq's default is 1,000): both start alike
IDLE_POLL_MS = "200"


@dataclass
class BareResult:
    """One bare run: how many ended, how long from the enqueue to the last end, its CPU."""

    count: int
    done: int
    failed: int
    elapsed: float
    worker_cpu: float
    calls: Counter[str]

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def calls_per_op(self) -> float:
        return sum(self.calls.values()) / max(self.count, 1)


def bare_command(processes: int, threads: int) -> list[str]:
    """The stock Dramatiq CLI on the bare module, with ours' processes and threads."""
    return [
        str(VENV_BIN / "dramatiq"),
        "bare_worker",
        "--path",
        str(BENCH_DIR),
        "--processes",
        str(processes),
        "--threads",
        str(threads),
    ]


def run_bare(
    fake: Any,
    env: dict[str, str],
    namespace: str,
    kind: str,
    calls: list[dict[str, Any]],
    *,
    processes: int,
    threads: int,
    workdir: Path,
    timeout: float,
) -> BareResult:
    """Start the bare workers, enqueue one ``kind`` message per keyword dict, wait for them all.

    ``env`` is the environment ours ran with (the fake's settings, ``BROKER_URL``, ``PUBLIC_URL``);
    the bare workers get their own namespace below ``namespace`` (removed with it afterwards).
    The fake keeps its current delay; its request log is reset at the start.
    """
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    from workers.bulk import enqueue_many

    actor_name, queue_name = ACTORS[kind]
    bare_namespace = f"{namespace}-bare"
    bare_env = {**env, "BARE_NAMESPACE": bare_namespace, "dramatiq_worker_timeout": IDLE_POLL_MS}
    log = workdir / f"bare-{kind}-workers.log"
    done_key, failed_key = f"{bare_namespace}:bare-done:{kind}", f"{bare_namespace}:bare-failed:{kind}"
    messages: list[dramatiq.Message[Any]] = [
        dramatiq.Message(queue_name=queue_name, actor_name=actor_name, args=(), kwargs=kwargs, options={})
        for kwargs in calls
    ]
    n = len(messages)
    client = redis_client()
    broker = RedisBroker(url=REDIS_URL, namespace=bare_namespace)
    try:
        with process(bare_command(processes, threads), bare_env, log) as workers:
            wait_for_workers(bare_namespace, processes, workers, log)
            fake.reset_log()
            cpu_before = group_cpu_seconds(workers.pid)
            started, started_at = time.monotonic(), time.time()
            enqueue_many(broker, messages)
            last_progress, last_seen = time.monotonic(), -1
            while True:
                done, failed = int(client.llen(done_key)), int(client.llen(failed_key))
                if done + failed >= n:
                    break
                if done + failed != last_seen:
                    last_progress, last_seen = time.monotonic(), done + failed
                if time.monotonic() - last_progress > 60:
                    raise BenchError(f"bare workers: no progress for 60 s at {done}/{n}\n{tail(log)}")
                if time.monotonic() - started > timeout:
                    raise BenchError(f"bare workers: only {done}/{n} after {timeout:.0f}s\n{tail(log)}")
                if workers.poll() is not None:
                    raise BenchError(f"the bare workers died:\n{tail(log)}")
                time.sleep(POLL_SECONDS)
            ends = [float(value) for value in client.lrange(done_key, 0, -1)]
            worker_cpu = group_cpu_seconds(workers.pid) - cpu_before
        path_calls = Counter(r.path for r in list(fake.requests))
    finally:
        broker.close()
        client.close()
    elapsed = max(ends) - started_at if ends else float("inf")
    return BareResult(n, len(ends), failed, elapsed, worker_cpu, path_calls)


#: ours must reach at least this share of the bare worker's throughput
GOAL = 0.6


def bare_rows(bare: BareResult, ours_rate: float, unit: str, units: str) -> list[Row]:
    """The reference's rows for the results table, ending with the ``ours / bare`` goal."""
    clean = bare.done == bare.count and bare.failed == 0
    ratio = ours_rate / bare.rate if bare.rate else 0.0
    return [
        Row(f"bare worker {units}/s", f"{bare.rate:.1f}  ({bare.done:,} in {bare.elapsed:.2f} s)"),
        Row(f"bare worker calls per {unit}", f"{bare.calls_per_op:.2f}"),
        Row(f"bare worker CPU per {unit}", f"{bare.worker_cpu / max(bare.count, 1) * 1000:.1f} ms"),
        Row("bare worker done / failed", f"{bare.done:,} / {bare.failed}", f"{bare.count:,} / 0", clean),
        Row("ours / bare worker", f"{ratio:.2f}x", f">= {GOAL:.2f}x", clean and ratio >= GOAL),
    ]
