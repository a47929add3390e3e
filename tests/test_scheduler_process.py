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
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from models.tables import SocialAccount, table_of
from scheduler.leader import leader_key
from tests.waiting import wait_until

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


def ticks(log: Path) -> int:
    """How many refresh scans a scheduler process has logged as its leader's."""
    return log.read_bytes().count(b"job=refresh_ahead outcome=ok")


def test_two_scheduler_processes_one_emits_and_the_other_takes_over(
    engine: Engine, pg_url: str, redis_url: str, redis_namespace: str, tmp_path: Path
) -> None:
    assert CLI.exists(), f"console script missing: {CLI}"
    namespace = redis_namespace
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "DATABASE_URL": pg_url,
        "BROKER_URL": redis_url,
        "TOKEN_KEYS": "k1:" + base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "REDIS_NAMESPACE": namespace,
        "REFRESH_SCAN_SECONDS": "1",
        "LEADER_TTL_SECONDS": str(LEADER_TTL),
    }
    client = redis.Redis.from_url(redis_url)
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
        wait_until(lambda: leader_pid() in procs, what="a process became leader")
        wait_until(lambda: len(refresh_ids(client, namespace)) >= len(first), what="first accounts emitted")
        leader = leader_pid()
        assert leader is not None
        # the leader keeps ticking (two more scans at least); the lease keeps every account single
        wait_until(lambda: ticks(logs[leader]) >= 3, what="the leader scanned twice more")
        assert sorted(refresh_ids(client, namespace)) == sorted(first)

        (standby,) = [pid for pid in procs if pid != leader]
        assert procs[standby].poll() is None, logs[standby].read_text()
        assert b"job=refresh_ahead outcome=ok" not in logs[standby].read_bytes(), "the standby emitted"
        assert b"job=refresh_ahead outcome=ok" in logs[leader].read_bytes()

        os.kill(leader, signal.SIGKILL)
        procs[leader].wait(5)
        second = add_due_accounts(engine, 8)
        wait_until(
            lambda: len(refresh_ids(client, namespace)) >= len(first) + len(second), what="the standby took over"
        )
        assert leader_pid() == standby
        scans = ticks(logs[standby])
        wait_until(lambda: ticks(logs[standby]) >= scans + 2, what="the new leader scanned twice more")
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
