"""``scripts/two-nodes drill``, end to end, on both brokers: two network namespaces each running
``web``, ``worker`` and ``scheduler``, node A killed with SIGKILL under load (``tests/two_nodes.py``
says what is checked). Needs root and ``ip netns``; skips without them locally, fails in CI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import unavailable

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "two-nodes"
RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
#: the checks the drill runs (``tests.two_nodes.Drill.run``)
CHECKS = 6

pytestmark = [pytest.mark.slow, pytest.mark.two_nodes, pytest.mark.timeout(900)]


def _netns_usable() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    return subprocess.run(["ip", "netns", "list"], capture_output=True).returncode == 0


def _rabbitmq_answers() -> bool:
    import pika

    params = pika.URLParameters(RABBITMQ_URL)
    params.socket_timeout = 2
    params.connection_attempts = 1
    try:
        pika.BlockingConnection(params).close()
    except Exception:  # any failure to connect means "not available here"
        return False
    return shutil.which("rabbitmqctl") is not None  # the drill makes a vhost of its own


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_two_node_drill(broker: str) -> None:
    if not _netns_usable():
        unavailable("root with ip netns (the two-node drill)")
    if broker == "rabbitmq" and not _rabbitmq_answers():
        unavailable("RabbitMQ with rabbitmqctl")
    proc = subprocess.Popen(
        [str(SCRIPT), "drill", "--broker", broker], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=840)
    except subprocess.TimeoutExpired:
        proc.terminate()  # SIGTERM: the drill tears its namespaces, database and keys down first
        stdout, stderr = proc.communicate(timeout=120)
    print(stdout)
    lines = stdout.strip().splitlines()
    assert proc.returncode == 0, stdout + stderr[-3000:]
    assert lines[-1] == f"two-nodes: {CHECKS}/{CHECKS} checks passed"
    assert sum(line.startswith("[ok] ") for line in lines) == CHECKS
