"""Two real ``social-accounts scheduler`` processes: one emits, and the other takes over on kill -9.

The processes run the installed console script against a real PostgreSQL database and a real
Redis broker, with a 1 s refresh scan and a 2 s leader TTL. What is checked is what an operator
relies on: every due account gets exactly one refresh message while both run, the standby takes
over within a few seconds of the leader dying, and no account is ever emitted twice.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from models.tables import SocialAccount, table_of
from scheduler.leader import leader_key

ACCOUNTS = table_of(SocialAccount)
CLI = Path(sys.executable).with_name("social-accounts")
LEADER_TTL = 2.0


def add_due_accounts(engine: Engine, count: int) -> list[str]:
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = [
        {
            "id": str(uuid.uuid4()),
            "site_id": "site-1",
            "platform": "twitter",
            "platform_account_id": uuid.uuid4().hex,
            "scopes": [],
            "token_metadata": {},
            "refresh_model": "rotate",
            "token_expires_at": now + timedelta(minutes=5),
            "next_refresh_at": now - timedelta(seconds=1),
            "created_at": now,
            "updated_at": now,
        }
        for _ in range(count)
    ]
    with engine.begin() as conn:
        conn.execute(sa.insert(ACCOUNTS), rows)
    return [r["id"] for r in rows]


def refresh_ids(client: redis.Redis, namespace: str) -> list[str]:
    """The account id of every refresh message in the queue, duplicates kept."""
    payloads = client.hvals(f"{namespace}:refresh.msgs")
    assert client.llen(f"{namespace}:refresh") == len(payloads)
    return [json.loads(p)["kwargs"]["account_id"] for p in payloads]


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, f"{what}: not within {seconds} s"
        time.sleep(0.05)
    return time.monotonic() - started


def test_two_scheduler_processes_one_emits_and_the_other_takes_over(
    engine: Engine, pg_url: str, sched_redis_url: str, tmp_path: Path
) -> None:
    assert CLI.exists(), f"console script missing: {CLI}"
    namespace = f"sched-test-proc-{uuid.uuid4().hex[:8]}"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "DATABASE_URL": pg_url,
        "BROKER_URL": sched_redis_url,
        "TOKEN_KEYS": "k1:" + base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "REDIS_NAMESPACE": namespace,
        "REFRESH_SCAN_SECONDS": "1",
        "LEADER_TTL_SECONDS": str(LEADER_TTL),
    }
    client = redis.Redis.from_url(sched_redis_url)
    procs: dict[int, subprocess.Popen[Any]] = {}
    logs: dict[int, Path] = {}

    def start(n: int) -> None:
        log = tmp_path / f"scheduler-{n}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([str(CLI), "scheduler"], cwd=tmp_path, env=env, stdout=out, stderr=out)
        procs[proc.pid] = proc
        logs[proc.pid] = log

    def leader_pid() -> int | None:
        value = client.get(leader_key(namespace))  # "hostname:pid:random"
        return int(str(value, "utf-8").split(":")[1]) if isinstance(value, bytes) else None

    first = add_due_accounts(engine, 8)
    try:
        start(1)
        start(2)
        wait_for(lambda: leader_pid() in procs, 20, "a process became leader")
        wait_for(lambda: len(refresh_ids(client, namespace)) >= len(first), 10, "first accounts emitted")
        time.sleep(2.5)  # both keep ticking; the lease keeps every account single
        assert sorted(refresh_ids(client, namespace)) == sorted(first)

        leader = leader_pid()
        assert leader is not None
        (standby,) = [pid for pid in procs if pid != leader]
        assert procs[standby].poll() is None, logs[standby].read_text()
        assert b"job=refresh_ahead outcome=ok" not in logs[standby].read_bytes(), "the standby emitted"
        assert b"job=refresh_ahead outcome=ok" in logs[leader].read_bytes()

        os.kill(leader, signal.SIGKILL)
        procs[leader].wait(5)
        second = add_due_accounts(engine, 8)
        took = wait_for(
            lambda: len(refresh_ids(client, namespace)) >= len(first) + len(second), 10, "the standby took over"
        )
        # lock expiry + one leadership try + one refresh tick, with room for a loaded CI machine
        assert took < LEADER_TTL + 1 + 1 + 3
        assert leader_pid() == standby
        time.sleep(1.5)
        ids = refresh_ids(client, namespace)
        assert len(ids) == len(set(ids)), "an account was emitted twice"
        assert sorted(ids) == sorted(first + second)

        procs[standby].send_signal(signal.SIGTERM)
        assert procs[standby].wait(10) == 0, logs[standby].read_text()
        assert client.exists(leader_key(namespace)) == 0, "a stopping leader resigns"
    except BaseException:
        for pid, log in logs.items():
            print(f"---- scheduler {pid} ----\n{log.read_text()}")
        raise
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        client.close()
