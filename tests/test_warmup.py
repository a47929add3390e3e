"""Worker warm-up (``workers.warmup``) and the idle poll of ``social-accounts worker``, for real."""

from __future__ import annotations

import os
import subprocess
import sys

import redis

from models.direct import for_engine
from tests.pipeline_support import Pipeline
from workers import runtime


def test_a_started_worker_has_its_connections_and_adapters_ready(pipeline: Pipeline) -> None:
    """The pipeline's worker (2 threads) booted through the broker's middleware, WarmUp included."""
    rt = runtime.current()
    direct = for_engine(rt.engine)
    assert direct is not None
    assert len(direct._idle) >= 2  # one database connection per worker thread, opened at boot
    assert "twitter" in rt.adapters and "youtube" in rt.adapters  # configured platforms: built
    assert "mastodon" not in rt.adapters  # its app store follows the engine: built per call
    # both worker threads opened their Redis connection: the server sees them before any message
    client = redis.Redis.from_url(pipeline.settings.broker_url or "")
    db = str(client.connection_pool.connection_kwargs.get("db", 0))
    pinged = [c for c in client.client_list() if c.get("cmd") == "ping" and str(c.get("db")) == db]
    assert len(pinged) >= 2
    client.close()


def test_the_worker_command_polls_idle_queues_every_200_ms_unless_told_otherwise() -> None:
    """Dramatiq reads ``dramatiq_worker_timeout`` once, at import: the command sets it first."""
    probe = (
        "import sys\n"
        "from service import cli\n"
        "assert 'dramatiq.worker' not in sys.modules, 'too late: dramatiq was imported with the CLI'\n"
        "cli.set_idle_poll()\n"
        "import dramatiq.worker\n"
        "print(dramatiq.worker.WORKER_TIMEOUT)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "dramatiq_worker_timeout"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "200"
    mine = subprocess.run(
        [sys.executable, "-c", probe], env={**env, "dramatiq_worker_timeout": "1000"}, capture_output=True, text=True
    )
    assert mine.stdout.strip() == "1000"  # an operator's own value wins
