"""Benchmark: ``GET /oauth/callback`` against a bare endpoint and the naive callback, same run.

Why a bare endpoint: absolute numbers say more about the machine (and about uvicorn's HTTP
parser) than about our handler. The bare route answers ``200`` from the same uvicorn process, so
the ratio isolates what the callback adds: query parsing, the state's HMAC, the code's AES-GCM
encryption, the batched Redis enqueue and the wait for it.

The naive callback (``bench/naive_callback.py``) is the other reference: an ``async`` Starlette
endpoint doing the same work that calls ``actor.send()`` per request. It runs in its own uvicorn
process, started the same way, and is loaded only while it is measured.

Setup: one uvicorn process (``--factory callback:create_bench_app``, access log off) running the
product app plus one bench-only route (added here, never in the product), a real Redis broker on
127.0.0.1 in a dedicated namespace, and ``wrk -c32 -t2 -d10s`` cycling through 20,000 distinct,
validly signed states (so every request really verifies, encrypts and enqueues).

Goals: callback throughput >= 0.5x bare, callback p99 <= 2x bare p99, callback throughput >= 2x
the naive callback's.

Run: ``.venv/bin/python bench/callback.py [--seconds 10] [--rounds 2]``
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import sys
import tempfile
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    REDIS_URL,
    VENV_BIN,
    BenchError,
    Row,
    WrkResult,
    bench_secrets,
    cpu_seconds,
    free_port,
    main_guard,
    print_table,
    process,
    python,
    redis_client,
    redis_namespace,
    run_wrk,
    tail,
    wait_for_port,
)

BARE_PATH = "/bench/bare"
#: bench-only: ``POST /bench/row/{id}`` reads one account row by primary key (the token API's reference)
ROW_PATH = "/bench/row"
STATES = 20_000


def create_bench_app() -> Any:
    """The product app (settings from the environment) plus the bench-only bare routes: ``GET
    /bench/bare`` (200, nothing else) and ``POST /bench/row/{id}`` (one row by primary key).

    The bare route is inserted into the same router, first, so both paths pay the same routing.
    Like ``social-accounts web``, the start-up heap is frozen (``BENCH_NO_GC_FREEZE=1`` to compare).
    """
    import sqlalchemy as sa
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    ROW_QUERY = sa.text("SELECT * FROM social_accounts WHERE id = :id")  # noqa: N806

    from web_callback.app import create_app, freeze_startup_heap

    async def bare(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def row(request: Request) -> Response:
        """One account row by primary key, in a worker thread like the ``/v1`` handlers."""
        engine = request.app.state.services.engine
        account_id = request.path_params["account_id"]

        def read() -> Any:
            with engine.connect() as conn:
                return conn.execute(ROW_QUERY, {"id": account_id}).first()

        found = await run_in_threadpool(read)
        if found is None:
            return JSONResponse({"error": "not_found"}, status_code=404)
        expires = found.token_expires_at.isoformat() if found.token_expires_at else None
        return JSONResponse({"id": found.id, "expires_at": expires})

    app = create_app()
    app.router.routes.insert(0, Route(BARE_PATH, bare, methods=["GET"]))
    app.router.routes.insert(1, Route(ROW_PATH + "/{account_id}", row, methods=["POST"]))
    if not os.environ.get("BENCH_NO_GC_FREEZE"):  # what `social-accounts web` does before serving
        freeze_startup_heap()
    return app


def write_paths(workdir: Path, state_secret: str, public_url: str) -> tuple[Path, Path]:
    """Two files of request paths with the same query strings: callback and bare."""
    from web_callback.state import SignedState, sign_state

    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    queries = []
    for _ in range(STATES):
        state = sign_state(SignedState(str(uuid.uuid4()), "twitter", expires, f"{public_url}/done"), state_secret)
        queries.append(f"code={secrets.token_urlsafe(30)}&state={state}")
    callback = workdir / "callback.txt"
    bare = workdir / "bare.txt"
    callback.write_text("".join(f"/oauth/callback?{q}\n" for q in queries))
    bare.write_text("".join(f"{BARE_PATH}?{q}\n" for q in queries))
    return callback, bare


def check_once(base: str, path: str, expected: int) -> None:
    import httpx

    response = httpx.get(base + path, follow_redirects=False, timeout=10)
    if response.status_code != expected:
        raise BenchError(f"{path.split('?')[0]} answered {response.status_code}, expected {expected}")


def profile(pid: int, base: str, paths: Path, out: str, seconds: int, wrk: dict[str, Any], rate: int = 100) -> None:
    """Record collapsed stacks (py-spy ``--format raw``) of the server during one callback run."""
    import shutil
    import subprocess

    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(VENV_BIN))
    if spy is None:
        raise BenchError("py-spy is not installed (.venv/bin/pip install py-spy)")
    recorder = subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--output",
            out,
            "--duration",
            str(seconds),
            "--nonblocking",
            "--rate",
            str(rate),
        ]
    )
    run_wrk(base, paths, seconds=seconds, **wrk)
    recorder.wait()


def mean(results: list[WrkResult], attr: str) -> float:
    return sum(getattr(r, attr) for r in results) / len(results)


def uvicorn_command(factory: str, port: int) -> list[str]:
    """One uvicorn worker serving ``factory`` (a module of this directory), access log off."""
    return [
        python(),
        "-m",
        "uvicorn",
        "--factory",
        factory,
        "--app-dir",
        str(Path(__file__).resolve().parent),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--no-access-log",
        "--log-level",
        "warning",
    ]


@dataclass
class CallbackResult:
    """Means over the rounds: requests per second and p99 of each endpoint; the checks."""

    bare_rps: float
    callback_rps: float
    naive_rps: float
    bare_p99_ms: float
    callback_p99_ms: float
    failures: int
    all_enqueued: bool
    rows: list[Row]


def measure(
    *,
    seconds: int = 10,
    rounds: int = 2,
    connections: int = 32,
    threads: int = 2,
    warmup: int = 2,
    py_spy: str | None = None,
    py_spy_rate: int = 100,
) -> CallbackResult:
    """Bare route, our callback and the naive callback under wrk, ``rounds`` interleaved runs each."""

    with tempfile.TemporaryDirectory(prefix="sa-bench-") as tmp, redis_namespace() as namespace:
        workdir = Path(tmp)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {
            **bench_secrets(),
            "BROKER_URL": REDIS_URL,
            "REDIS_NAMESPACE": namespace,
            "DATABASE_URL": f"sqlite:///{workdir / 'unused.db'}",  # the callback never touches it
            "PUBLIC_URL": base,
            "LOG_LEVEL": "WARNING",
        }
        callback_paths, bare_paths = write_paths(workdir, env["STATE_SECRET"], base)
        first_callback = callback_paths.read_text().split("\n", 1)[0]
        naive_port = free_port()
        naive_base = f"http://127.0.0.1:{naive_port}"
        log = workdir / "uvicorn.log"
        naive_log = workdir / "uvicorn-naive.log"
        with contextlib.ExitStack() as stack:
            server = stack.enter_context(process(uvicorn_command("callback:create_bench_app", port), env, log))
            naive = stack.enter_context(
                process(uvicorn_command("naive_callback:create_naive_app", naive_port), env, naive_log)
            )
            try:
                wait_for_port(port, server)
                wait_for_port(naive_port, naive)
                check_once(base, BARE_PATH, 200)
                check_once(base, first_callback, 303)
                check_once(naive_base, first_callback, 303)
                wrk = {"connections": connections, "threads": threads, "workdir": workdir}
                for target, paths in ((base, bare_paths), (base, callback_paths), (naive_base, callback_paths)):
                    run_wrk(target, paths, seconds=warmup, **wrk)  # warm up every path (imports, pools)
                if py_spy:
                    profile(server.pid, base, callback_paths, py_spy, seconds, wrk, py_spy_rate)
                before = int(redis_client().llen(f"{namespace}:connect"))
                bare: list[WrkResult] = []
                callback: list[WrkResult] = []
                naive_results: list[WrkResult] = []
                for i in range(rounds):  # interleaved so drift hits all alike
                    order = [
                        (bare, server, base, bare_paths),
                        (callback, server, base, callback_paths),
                        (naive_results, naive, naive_base, callback_paths),
                    ]
                    for results, proc, target, paths in order if i % 2 == 0 else reversed(order):
                        cpu = cpu_seconds(proc.pid)
                        result = run_wrk(target, paths, seconds=seconds, **wrk)
                        result.server_cpu = cpu_seconds(proc.pid) - cpu
                        results.append(result)
            except BenchError:
                print(tail(log), tail(naive_log), sep="\n", file=sys.stderr)
                raise
            if server.poll() is not None:
                raise BenchError(f"uvicorn died during the run:\n{tail(log)}")
            if naive.poll() is not None:
                raise BenchError(f"the naive callback's uvicorn died during the run:\n{tail(naive_log)}")
        client = redis_client()
        queued = int(client.llen(f"{namespace}:connect")) - before
        client.close()

    failures = sum(r.errors + r.bad_status for r in bare + callback + naive_results)
    bare_rps, cb_rps, naive_rps = mean(bare, "rps"), mean(callback, "rps"), mean(naive_results, "rps")
    bare_p99, cb_p99 = mean(bare, "p99_ms"), mean(callback, "p99_ms")
    sent = sum(r.requests for r in callback + naive_results)
    rows = [
        Row("bare   requests/s", f"{bare_rps:,.0f}"),
        Row("bare   p50 / p99 ms", f"{mean(bare, 'p50_ms'):.2f} / {bare_p99:.2f}"),
        Row("callback requests/s", f"{cb_rps:,.0f}"),
        Row("callback p50 / p99 ms", f"{mean(callback, 'p50_ms'):.2f} / {cb_p99:.2f}"),
        Row("naive  requests/s", f"{naive_rps:,.0f}"),
        Row("naive  p50 / p99 ms", f"{mean(naive_results, 'p50_ms'):.2f} / {mean(naive_results, 'p99_ms'):.2f}"),
        Row("server CPU us/request bare", f"{mean(bare, 'cpu_us_per_request'):.0f}"),
        Row("server CPU us/request callback", f"{mean(callback, 'cpu_us_per_request'):.0f}"),
        Row("server CPU us/request naive", f"{mean(naive_results, 'cpu_us_per_request'):.0f}"),
        Row("throughput ratio", f"{cb_rps / bare_rps:.2f}x", ">= 0.50x", cb_rps / bare_rps >= 0.5),
        Row("p99 ratio", f"{cb_p99 / bare_p99:.2f}x", "<= 2.00x", cb_p99 / bare_p99 <= 2.0),
        Row("ours / naive throughput", f"{cb_rps / naive_rps:.2f}x", ">= 2.00x", cb_rps / naive_rps >= 2.0),
        Row("errors / non-2xx-3xx", f"{failures}", "0", failures == 0),
        Row("messages enqueued", f"{queued:,} (>= {sent:,} answered)", "", queued >= sent),
    ]
    return CallbackResult(bare_rps, cb_rps, naive_rps, bare_p99, cb_p99, failures, queued >= sent, rows)


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2, help="measured runs of each endpoint (interleaved)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--py-spy", metavar="OUT", help="profile the server with py-spy during one callback run")
    parser.add_argument("--py-spy-rate", type=int, default=100, help="samples per second for --py-spy")
    args = parser.parse_args()
    result = measure(
        seconds=args.seconds,
        rounds=args.rounds,
        connections=args.connections,
        threads=args.threads,
        py_spy=args.py_spy,
        py_spy_rate=args.py_spy_rate,
    )
    print_table(
        f"GET /oauth/callback vs bare endpoint and naive callback: 1 uvicorn worker each, "
        f"wrk -c{args.connections} -t{args.threads} -d{args.seconds}s x {args.rounds} rounds, "
        f"{STATES:,} distinct valid states",
        result.rows,
    )


if __name__ == "__main__":
    main_guard(run)
