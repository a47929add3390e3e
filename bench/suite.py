"""Every benchmark in one go, on one machine: one table of ratios and ``bench/results.json``.

Why one suite: each figure only means something beside its reference measured in the same run,
on the same machine, under the same load. The suite runs the parts below one after another,
prints each part's own table, then one table of every goal: the figure, its reference, their
ratio, the goal and ``ok`` or ``MISSED``. It exits 1 when any goal is missed, correctness rows
included (exact platform call counts, no revoked grant, no failure), and 2 when it could not run
at all. A part that fails to run marks its goals MISSED and the suite goes on with the next.

References count platform calls per operation from the design (``CALLS_PER_REFRESH``,
``CALLS_PER_CONNECT``), never from what the run observed: an extra call per operation then
shows up as a missed check instead of lowering the ideal.

Parts (``--parts`` picks some): ``callback`` (``bench/callback.py``), ``refresh``
(``bench/refresh.py``), ``connect`` (``bench/pipeline.py``), ``latency`` (``bench/latency.py``:
connect latency idle and at 50/s, the token API at 200/s, worker memory), ``latency-rabbitmq``
(the connect latencies with web and workers on RabbitMQ), ``tick``
(``bench/scheduler_tick.py``) and ``events`` (``bench/events.py``: webhook deliveries of 10,000
status changes beside a bare Dramatiq worker making the same signed POSTs). Every part makes its
own database (``sa_bench_<hex>``), Redis namespace (``sa-bench-<hex>``) and RabbitMQ virtual
host, and every server listens on a free port, so two runs at once do not clobber each other
(give the second one its own ``--out``).

Run: ``.venv/bin/python bench/suite.py [--quick] [--parts callback,refresh,...] [--out FILE]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bare_reference  # noqa: E402
import callback  # noqa: E402
import events  # noqa: E402
import latency  # noqa: E402
import pipeline  # noqa: E402
import refresh  # noqa: E402
import scheduler_tick  # noqa: E402
from common import BenchError, Row, machine, main_guard, print_table, rabbitmq_vhost  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results.json"


@dataclass
class Goal:
    """One line of ``results.json`` (``CONTRACT``'s shape): a figure beside its reference."""

    name: str
    value: float
    reference: float
    ratio: float
    goal: str
    ok: bool


def ratio_of(value: float, reference: float) -> float:
    return value / reference if reference else (1.0 if value == reference else math.inf)


def at_least(name: str, value: float, reference: float, factor: float) -> Goal:
    r = ratio_of(value, reference)
    return Goal(name, value, reference, r, f">= {factor:g}x", r >= factor)


def at_most(name: str, value: float, reference: float, factor: float) -> Goal:
    r = ratio_of(value, reference)
    return Goal(name, value, reference, r, f"<= {factor:g}x", r <= factor)


def exactly(name: str, value: float, reference: float) -> Goal:
    """A correctness row: the count the design gives, no more and no less."""
    return Goal(name, value, reference, ratio_of(value, reference), "== reference", value == reference)


def plus_at_most(name: str, value_ms: float, reference_ms: float, extra_ms: float) -> Goal:
    ok = value_ms - reference_ms <= extra_ms
    return Goal(name, value_ms, reference_ms, ratio_of(value_ms, reference_ms), f"<= +{extra_ms:g} ms", ok)


@dataclass(frozen=True)
class Plan:
    """How much each part does; ``--quick`` runs each for a few seconds."""

    callback_seconds: int
    callback_rounds: int
    refreshes: int
    connects: int
    tick_accounts: int
    tick_due: int
    ticks: int
    latency: latency.Sizes
    events: int


FULL = Plan(10, 2, 10_000, 2_000, 1_000_000, 10_000, 20, latency.Sizes.full(), 10_000)
QUICK = Plan(2, 1, 800, 300, 100_000, 10_000, 5, latency.Sizes.quick(), 1_000)


def part_callback(plan: Plan) -> list[Goal]:
    quick = plan.callback_seconds < 5
    r = callback.measure(seconds=plan.callback_seconds, rounds=plan.callback_rounds, warmup=1 if quick else 2)
    print_table("callback: GET /oauth/callback, bare route and naive actor.send() callback (wrk -c32)", r.rows)
    return [
        at_least("callback throughput vs bare route (req/s)", r.callback_rps, r.bare_rps, 0.5),
        at_most("callback p99 vs bare route (ms)", r.callback_p99_ms, r.bare_p99_ms, 2.0),
        at_least("callback throughput vs naive actor.send() (req/s)", r.callback_rps, r.naive_rps, 2.0),
        exactly("callback errors and answers not enqueued", r.failures + (0 if r.all_enqueued else 1), 0),
    ]


def bare_ok(bare: bare_reference.BareResult | None) -> bool:
    return bare is not None and bare.done == bare.count and bare.failed == 0


def part_refresh(plan: Plan) -> list[Goal]:
    r = refresh.measure(plan.refreshes)
    print_table(f"refresh: {r.n:,} due accounts, ours then the bare Dramatiq worker", r.rows)
    bare_rate = r.bare.rate if bare_ok(r.bare) and r.bare is not None else 0.0
    return [
        at_least("refresh throughput vs bare Dramatiq worker (refreshes/s)", r.rate, bare_rate, 0.6),
        exactly(
            "refresh platform calls (1 per refresh)", r.token_calls + r.other_calls, r.n * refresh.CALLS_PER_REFRESH
        ),
        exactly("refresh grants revoked", r.revoked, 0),
        exactly("refresh failures (failed + not refreshed)", r.failed + (r.n - r.refreshed), 0),
    ]


def part_connect(plan: Plan) -> list[Goal]:
    r = pipeline.measure(plan.connects)
    print_table(f"connect: {r.n:,} callbacks through the workers, ours then the bare Dramatiq worker", r.rows)
    bare_rate = r.bare.rate if bare_ok(r.bare) and r.bare is not None else 0.0
    return [
        at_least("connect throughput vs bare Dramatiq worker (connects/s)", r.rate, bare_rate, 0.6),
        exactly("connect platform calls (2 per connect)", r.calls, r.n * pipeline.CALLS_PER_CONNECT),
        exactly("connect code exchanges (1 per connect)", r.exchanges, r.n),
        exactly("connect failures (failed, not connected or replayed)", r.n - r.connected if r.clean else r.n, 0),
    ]


def part_latency(plan: Plan) -> list[Goal]:
    r = latency.measure(plan.latency, progress=lambda s: print(f"... {s}", flush=True))
    print_table("latency: callback to connected, the token API, worker memory", r.rows)
    ref = r.reference_ms
    p = latency.percentile
    rss_ratio = ratio_of(r.rss_end, r.rss_start)
    return [
        plus_at_most("Redis: callback -> connected, idle, p50 (ms)", p(r.idle_ms, 0.5), ref, 30),
        plus_at_most("Redis: callback -> connected, idle, p99 (ms)", p(r.idle_ms, 0.99), ref, 150),
        plus_at_most("Redis: callback -> connected, 50 connects/s, p50 (ms)", p(r.load_ms, 0.5), ref, 30),
        plus_at_most("Redis: callback -> connected, 50 connects/s, p99 (ms)", p(r.load_ms, 0.99), ref, 150),
        exactly("latency connects not connected or with extra calls", 0 if r.connects_ok else 1, 0),
        at_most("token API 200 req/s vs bare row read, p50 (ms)", p(r.token_ms, 0.5), p(r.row_ms, 0.5), 2.0),
        at_most("token API 200 req/s vs bare row read, p99 (ms)", p(r.token_ms, 0.99), p(r.row_ms, 0.99), 2.0),
        exactly("token API errors or platform calls (token not due)", 0 if r.token_ok else 1, 0),
        Goal(
            f"worker memory across {r.refreshes:,} refreshes (MiB)",
            r.rss_end,
            r.rss_start,
            rss_ratio,
            "within +-5%",
            abs(rss_ratio - 1) <= 0.05,
        ),
        exactly("memory run: extra platform calls, revoked grants or failures", 0 if r.memory_ok else 1, 0),
    ]


def part_latency_rabbitmq(plan: Plan) -> list[Goal]:
    """The connect latencies again with web and workers on RabbitMQ: push delivery, no idle poll
    (``bench/README.md``, "Idle connect latency and the broker")."""
    with rabbitmq_vhost() as url:
        r = latency.measure(
            plan.latency, progress=lambda s: print(f"... {s}", flush=True), broker_url=url, connects_only=True
        )
    print_table("latency on RabbitMQ: callback to connected", r.rows[:4])
    ref = r.reference_ms
    p = latency.percentile
    return [
        plus_at_most("RabbitMQ: callback -> connected, idle, p50 (ms)", p(r.idle_ms, 0.5), ref, 30),
        plus_at_most("RabbitMQ: callback -> connected, idle, p99 (ms)", p(r.idle_ms, 0.99), ref, 150),
        plus_at_most("RabbitMQ: callback -> connected, 50 connects/s, p50 (ms)", p(r.load_ms, 0.5), ref, 30),
        plus_at_most("RabbitMQ: callback -> connected, 50 connects/s, p99 (ms)", p(r.load_ms, 0.99), ref, 150),
        exactly("RabbitMQ: connects not connected or with extra calls", 0 if r.connects_ok else 1, 0),
    ]


def part_tick(plan: Plan) -> list[Goal]:
    r = scheduler_tick.measure(plan.tick_accounts, plan.tick_due, plan.ticks, explain=False)
    rows = [Row(name, value) for name, value in r.rows]
    print_table(f"tick: refresh_ahead, {plan.tick_due:,} due of {plan.tick_accounts:,}, beside the bare claim", rows)
    return [
        at_most(f"refresh-ahead tick p95, {plan.tick_due:,} due of {plan.tick_accounts:,}, vs bare claim (s)",
                r.p95, r.bare_p95, 2.0),
        Goal("refresh-ahead tick p95 under 1 s (s)", r.p95, 1.0, r.p95, "< 1 s", r.p95 < 1.0),
        exactly("claim walks the partial index (1 = yes)", 1 if r.uses_index else 0, 1),
    ]  # fmt: skip


def part_events(plan: Plan) -> list[Goal]:
    r = events.measure(plan.events)
    print_table(f"events: webhook delivery of {r.events:,} status changes, ours then the bare Dramatiq worker", r.rows)
    return [at_least("webhook deliveries vs bare Dramatiq worker POSTs (events/s)", r.ours_rate, r.bare_rate, 0.75)]


PARTS: dict[str, Callable[[Plan], list[Goal]]] = {
    "callback": part_callback,
    "refresh": part_refresh,
    "connect": part_connect,
    "latency": part_latency,
    "latency-rabbitmq": part_latency_rabbitmq,
    "tick": part_tick,
    "events": part_events,
}


def fmt(x: float) -> str:
    if math.isinf(x) or math.isnan(x):
        return str(x)
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.2f}"


def summary(goals: list[Goal]) -> None:
    head = ("goal", "value", "reference", "ratio", "target", "")
    lines = [
        (g.name, fmt(g.value), fmt(g.reference), f"{g.ratio:.2f}x", g.goal, "ok" if g.ok else "MISSED") for g in goals
    ]
    widths = [max(len(row[i]) for row in [head, *lines]) for i in range(len(head))]
    print(f"\nsuite: every goal, each figure beside its reference in this run\n{machine()}")
    for row in [head, *lines]:
        cells = zip(row, widths, strict=True)
        print("  " + "  ".join(c.ljust(w) if i in (0, 4) else c.rjust(w) for i, (c, w) in enumerate(cells)))
    missed = sum(1 for g in goals if not g.ok)
    print(f"\n{len(goals) - missed}/{len(goals)} goals ok" + (f", {missed} MISSED" if missed else ""))


def write_results(path: Path, goals: list[Goal]) -> None:
    """``{"machine", "date", "goals": [...]}``, written whole or not at all (rename into place)."""

    def finite(x: float) -> float | None:
        return None if math.isinf(x) or math.isnan(x) else round(x, 4)

    data = {
        "machine": machine(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "goals": [
            {**asdict(g), "value": finite(g.value), "reference": finite(g.reference), "ratio": finite(g.ratio)}
            for g in goals
        ],
    }
    fd, tmp = tempfile.mkstemp(prefix=".results-", suffix=".json", dir=path.parent)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out, indent=2)
        out.write("\n")
    os.replace(tmp, path)


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="each part for a few seconds: checks that it works")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of: {', '.join(PARTS)}")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the results (JSON)")
    args = parser.parse_args()
    names = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [n for n in names if n not in PARTS]
    if unknown:
        parser.error(f"unknown parts: {', '.join(unknown)}")
    plan = QUICK if args.quick else FULL
    goals: list[Goal] = []
    for name in names:
        began = time.monotonic()
        print(f"\n=== {name} ===", flush=True)
        try:
            goals += PARTS[name](plan)
        except (BenchError, SystemExit, Exception) as exc:  # the other parts still run
            if isinstance(exc, SystemExit) and not isinstance(exc.code, str):
                raise  # SIGTERM (main_guard) or a plain exit: stop; a part's message (str) is a failure
            traceback.print_exc()
            print(f"{name}: could not run: {exc}", file=sys.stderr)
            goals.append(Goal(f"{name}: ran to the end", 0, 1, 0.0, "== reference", False))
        print(f"=== {name}: {time.monotonic() - began:.0f} s ===", flush=True)
    summary(goals)
    write_results(args.out, goals)
    print(f"written: {args.out}")
    if not all(g.ok for g in goals):
        sys.exit(1)


if __name__ == "__main__":
    main_guard(run)
