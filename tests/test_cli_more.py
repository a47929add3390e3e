"""More of the console script: ``accounts sync --all``, the ``accounts list`` table, progress bars,
and the worker processes' metrics exposition.

In the style of ``tests/test_cli.py`` (the ``env`` fixture is conftest's, the helpers are in
``tests/cli_support.py``): commands run in-process through ``cli.main``; the worker runs as the
installed script, as an operator starts it.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import sqlalchemy as sa
from rich.console import Console

from models.crypto import KeyRing
from models.engine import make_engine
from service import cli
from social_accounts.settings import Settings
from tests.cli_support import error_lines, run_cli, seed_account
from tests.support import new_key, stop_process_group
from tests.waiting import wait_until

SCRIPT = Path(sys.executable).with_name("social-accounts")


def _seeded(env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], pg_url: str) -> tuple[KeyRing, str]:
    key = new_key()
    env.setenv("DATABASE_URL", pg_url)
    env.setenv("TOKEN_KEYS", f"k1:{key}")
    assert run_cli(capsys, "migrate")[0] == 0
    return KeyRing.from_settings(Settings(_env_file=None, token_keys=f"k1:{key}")), key  # type: ignore[call-arg]


def _set(pg_url: str, row_id: str, **values: Any) -> None:
    engine = make_engine(pg_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE social_accounts SET " + ", ".join(f"{k} = :{k}" for k in values) + " WHERE id = :id"),
                {**values, "id": row_id},
            )
    finally:
        engine.dispose()


def _terminal(env: pytest.MonkeyPatch) -> io.StringIO:
    """Make stderr a (fake) terminal so rich draws its progress bars; returns what it drew."""
    buffer = io.StringIO()
    env.setattr(cli, "err", Console(file=buffer, force_terminal=True, width=120, highlight=False))
    return buffer


def _queued(redis_url: str, namespace: str, queue: str) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return [json.loads(p) for p in client.hvals(f"{namespace}:{queue}.msgs")]
    finally:
        client.close()


def _clear(redis_url: str, namespace: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        client.delete(f"{namespace}:sync", f"{namespace}:sync.msgs")
    finally:
        client.close()


# ---- accounts sync --all --------------------------------------------------------------------------


def test_sync_all_enqueues_one_message_per_syncable_account_with_a_progress_bar(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], pg_url: str, redis_url: str, redis_namespace: str
) -> None:
    ring, _ = _seeded(env, capsys, pg_url)
    namespace = redis_namespace
    env.setenv("BROKER_URL", redis_url)
    env.setenv("REDIS_NAMESPACE", namespace)
    a = seed_account(pg_url, ring, site_id="site-1", handle="alice")
    b = seed_account(pg_url, ring, site_id="site-1", handle="bob")
    c = seed_account(pg_url, ring, site_id="site-1", handle="carol")
    d = seed_account(pg_url, ring, site_id="site-2", handle="dave")
    _set(pg_url, c, status="expired")  # the person must reconnect: a sync would do nothing
    _set(pg_url, b, status="error")  # still has tokens: a sync may be what brings it back
    drawn = _terminal(env)

    code, out, err = run_cli(capsys, "accounts", "sync", "--all", "--site", "site-1", "--batch-size", "1")

    assert code == 0, err
    assert "sync enqueued for 2 account(s) of site site-1" in out
    payloads = _queued(redis_url, namespace, "sync")
    assert sorted(p["kwargs"]["account_id"] for p in payloads) == sorted([a, b])
    assert {p["actor_name"] for p in payloads} == {"sync_account"}
    assert "sync_account enqueued" in drawn.getvalue() and "2/2" in drawn.getvalue()
    _clear(redis_url, namespace)

    code, out, _ = run_cli(capsys, "accounts", "sync", "--all")
    assert code == 0 and "sync enqueued for 3 account(s)" in out
    ids = [p["kwargs"]["account_id"] for p in _queued(redis_url, namespace, "sync")]
    assert sorted(ids) == sorted([a, b, d])


def test_sync_all_with_no_account_enqueues_nothing(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], pg_url: str, redis_url: str, redis_namespace: str
) -> None:
    _seeded(env, capsys, pg_url)
    namespace = redis_namespace
    env.setenv("BROKER_URL", redis_url)
    env.setenv("REDIS_NAMESPACE", namespace)

    code, out, _ = run_cli(capsys, "accounts", "sync", "--all", "--site", "nobody")

    assert code == 0 and "sync enqueued for 0 account(s) of site nobody" in out
    assert _queued(redis_url, namespace, "sync") == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["accounts", "sync"], "error: give either an account ID or --all"),
        (["accounts", "sync", "some-id", "--all"], "error: give either an account ID or --all"),
        (["accounts", "sync", "some-id", "--site", "s"], "error: --site only goes with --all"),
    ],
)
def test_sync_needs_exactly_one_target(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = run_cli(capsys, *argv)
    assert code == 1 and error_lines(err) == [message]


def test_sync_all_with_the_broker_down_is_one_line(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], pg_url: str
) -> None:
    ring, _ = _seeded(env, capsys, pg_url)
    seed_account(pg_url, ring)
    env.setenv("BROKER_URL", "redis://127.0.0.1:1/0")

    code, out, err = run_cli(capsys, "accounts", "sync", "--all")

    assert code == 1 and "enqueued" not in out
    (line,) = error_lines(err)
    assert "ConnectionError" in line


# ---- accounts list / show -------------------------------------------------------------------------


def test_list_shows_site_platform_handle_status_health_expiry_and_last_sync(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], pg_url: str
) -> None:
    ring, _ = _seeded(env, capsys, pg_url)
    first = seed_account(pg_url, ring, handle="alice")
    _set(pg_url, first, token_expires_at="2031-05-04T03:02:01+00:00", last_synced_at="2030-01-02T03:04:05+00:00")
    seed_account(pg_url, ring, handle="bob")
    env.setattr(cli, "out", Console(width=250, highlight=False, soft_wrap=True))

    code, out, _ = run_cli(capsys, "accounts", "list")

    assert code == 0
    header = next(line for line in out.splitlines() if "platform" in line)
    for column in ("id", "site", "platform", "handle", "status", "health", "expires", "last sync"):
        assert column in header
    alice = next(line for line in out.splitlines() if "@alice" in line)
    assert "2031-05-04" in alice and "2030-01-02" in alice and "mastodon" in alice and "site-1" in alice
    bob = next(line for line in out.splitlines() if "@bob" in line)
    assert bob.count("never") == 2  # no expiry, never synced

    code, out, _ = run_cli(capsys, "accounts", "list", "--json")
    rows = json.loads(out)
    by_handle = {r["account_handle"]: r for r in rows}
    assert set(by_handle) == {"@alice", "@bob"}
    assert by_handle["@alice"]["token_expires_at"].startswith("2031-05-04")
    assert by_handle["@bob"]["token_expires_at"] is None
    code, out, _ = run_cli(capsys, "accounts", "show", first, "--json")
    assert code == 0 and json.loads(out)["last_synced_at"].startswith("2030-01-02")


# ---- keys rotate draws its progress ---------------------------------------------------------------


def test_keys_rotate_shows_a_progress_bar_per_table(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], pg_url: str
) -> None:
    ring, old = _seeded(env, capsys, pg_url)
    for handle in ("a1", "a2", "a3"):
        seed_account(pg_url, ring, handle=handle)
    env.setenv("TOKEN_KEYS", f"k2:{new_key()},k1:{old}")
    drawn = _terminal(env)

    code, out, err = run_cli(capsys, "keys", "rotate", "--batch-size", "2")

    assert code == 0, err
    assert "6 value(s) re-encrypted" in out
    assert "social_accounts → k2" in drawn.getvalue() and "3/3" in drawn.getvalue()


# ---- worker processes expose their metrics ----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_worker_metrics_env_is_set_for_the_processes_and_removed_afterwards(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[dict[str, str | None]] = []

    def fake_main(args: Any) -> int:
        names = (cli.WORKER_METRICS_FLAG, "PROMETHEUS_MULTIPROC_DIR", "dramatiq_prom_host", "dramatiq_prom_port")
        seen.append({name: os.environ.get(name) for name in names})
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        seen[-1]["exists"] = str(bool(directory and Path(directory).is_dir()))
        return 0

    env.setenv("TOKEN_KEYS", f"k1:{new_key()}")
    env.setenv("WORKER_METRICS_PORT", "9555")
    env.setattr("dramatiq.cli.main", fake_main)
    assert run_cli(capsys, "worker")[0] == 0
    env.setenv("WORKER_METRICS_PORT", "0")
    assert run_cli(capsys, "worker")[0] == 0

    on, off = seen
    assert (on[cli.WORKER_METRICS_FLAG], on["dramatiq_prom_host"], on["dramatiq_prom_port"]) == (
        "1",
        "127.0.0.1",
        "9555",
    )
    assert on["exists"] == "True"
    assert off[cli.WORKER_METRICS_FLAG] is None and off["PROMETHEUS_MULTIPROC_DIR"] is None
    assert os.environ.get("PROMETHEUS_MULTIPROC_DIR") is None and not Path(str(on["PROMETHEUS_MULTIPROC_DIR"])).exists()


def test_a_worker_process_exposes_dramatiq_and_our_metrics_on_loopback(
    pg_url: str, redis_url: str, redis_namespace: str, tmp_path: Path
) -> None:
    from models.migrate import upgrade
    from workers.broker import build_broker
    from workers.publish import request_sync

    if not SCRIPT.exists():
        pytest.fail(f"{SCRIPT} is missing: install the project (pip install -e .)")
    upgrade(pg_url)
    port = _free_port()
    namespace = redis_namespace
    values = {
        "DATABASE_URL": pg_url,
        "BROKER_URL": redis_url,
        "REDIS_NAMESPACE": namespace,
        "TOKEN_KEYS": f"k1:{new_key()}",
        "LOG_LEVEL": "WARNING",
        "WORKER_METRICS_PORT": str(port),
        "TMPDIR": str(tmp_path),
    }
    base = {k: v for k, v in os.environ.items() if k.upper() not in {n.upper() for n in Settings.model_fields}}
    worker = subprocess.Popen(
        [str(SCRIPT), "worker", "--processes", "1", "--threads", "1"],
        env={**base, **values},
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    settings = Settings(_env_file=None, broker_url=redis_url, redis_namespace=namespace)  # type: ignore[call-arg]
    broker = build_broker(settings)
    try:
        request_sync("no-such-account", broker=broker)  # ends as "missing": no platform call
        expected = (  # ours, written by the worker process, and Dramatiq's own
            'social_accounts_message_latency_seconds_count{queue="sync"} 1.0',
            'dramatiq_messages_total{actor_name="sync_account",queue_name="sync"} 1.0',
        )

        def both_series() -> str:
            assert worker.poll() is None, worker.stderr.read().decode() if worker.stderr else ""
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except httpx.HTTPError:
                return ""
            return text if all(series in text for series in expected) else ""

        wait_until(both_series, what="both series on the worker's /metrics")
    finally:
        broker.close()
        stop_process_group(worker)
        if worker.stderr:
            worker.stderr.close()
    assert list(tmp_path.glob("social-accounts-metrics-*")) == []  # the run's metric files are gone
