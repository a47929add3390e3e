"""Every line ``social-accounts run`` writes goes through the one redacting handler.

uvicorn configures its own handlers unless told not to (``log_config=None``); its access and
error lines then bypass the redaction filter and the JSON format. The real ``run`` is started as
a subprocess with ``LOG_FORMAT=json`` and asked for a URL that carries a token in its path (a
404): its stderr must be JSON lines only, with uvicorn's own lines among them, and not one piece
of the token.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from social_accounts.settings import Settings

START_SECONDS = 30
STOP_SECONDS = 15
SECRET = "tWq8.Zr-91_xyLm~Pk"


def console_script() -> str:
    beside = Path(sys.executable).parent / "social-accounts"
    found = str(beside) if beside.exists() else shutil.which("social-accounts")
    if found is None:
        pytest.fail("the social-accounts console script is not installed (pip install -e .)")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


Running = tuple[subprocess.Popen[bytes], httpx.Client, Path]


@pytest.fixture
def run_json(tmp_path: Path) -> Iterator[Running]:
    port = free_port()
    names = {name.upper() for name in Settings.model_fields}
    env = {
        k: v
        for k, v in os.environ.items()
        if k.upper() not in names and not k.upper().startswith(("TEST_", "SOCIAL_ACCOUNTS_"))
    }
    env.update(
        DATABASE_URL=f"sqlite:///{tmp_path / 'x.db'}",
        PUBLIC_URL=f"http://127.0.0.1:{port}",
        HOST="127.0.0.1",
        PORT=str(port),
        LOG_FORMAT="json",
        LOG_LEVEL="INFO",
    )
    stderr = tmp_path / "stderr.log"
    with stderr.open("wb") as sink:
        proc = subprocess.Popen([console_script(), "run"], cwd=tmp_path, env=env, stdout=sink, stderr=sink)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5, trust_env=False)
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            if proc.poll() is not None:
                pytest.fail(f"`run` exited early:\n{stderr.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get("/readyz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"`run` was not ready within {START_SECONDS} s:\n{stderr.read_text()[-3000:]}")
            time.sleep(0.1)
        yield proc, client, stderr
    finally:
        client.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_uvicorn_lines_under_run_are_redacted_json(run_json: Running) -> None:
    proc, client, stderr = run_json
    answer = client.get(f"/oauth/callback/access_token={SECRET}/more")
    assert answer.status_code == 404
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=STOP_SECONDS) == 0
    text = stderr.read_text()
    lines: list[dict[str, Any]] = []
    for raw in text.splitlines():
        if raw.strip():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                pytest.fail(f"a line that is not JSON (it went around the redacting handler): {raw!r}")
    loggers = {line["logger"] for line in lines}
    assert {"uvicorn.error", "uvicorn.access"} <= loggers, loggers
    access = [line["message"] for line in lines if line["logger"] == "uvicorn.access"]
    # httpx sends the "=" percent-encoded; the whole rest of the path segment is redacted
    redacted = "/oauth/callback/access_token%3D[REDACTED]"
    assert any(redacted in message and "404" in message for message in access), access
    left = [SECRET[i : i + 4] for i in range(len(SECRET) - 3) if SECRET[i : i + 4] in text]
    assert not left, left
