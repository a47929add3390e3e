"""The embedded default end to end: the real ``social-accounts run --demo`` on SQLite.

Nothing here needs PostgreSQL, Redis or a browser. The console script runs as a subprocess in a
temporary working directory, with a temporary SQLite ``DATABASE_URL`` and every setting of the
service removed from its environment, so it generates its own secrets
(``.social-accounts/secrets.env``) and uses the in-process broker, exactly as on a newcomer's
machine. The test then does over plain HTTP what the accounts page and a browser do: ``POST
/v1/connect/demo`` with the generated API token, the demo platform's consent page, Allow, the
redirect to ``/oauth/callback`` and on to ``return_to``; then it polls the attempt and reads the
account, looks into the SQLite file itself (the account row is there, no token in clear) and
stops the process the way a terminal or a container runtime does.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from social_accounts.settings import Settings
from tests.waiting import wait_until
from web_callback.state import SignedState, sign_state

SITE = "demo-site"
USER = "u-embedded"
STOP_SECONDS = 10
#: every demo token (code, access, refresh) is ``demo.`` + base64url of a JSON object (``{"`` -> ``eyJ``)
DEMO_TOKEN_MARK = b"demo.eyJ"
#: environment variables that configure the service without being one of its settings
EXTRA_SERVICE_ENV = ("PROMETHEUS_MULTIPROC_DIR", "DRAMATIQ_PROM_DB", "DRAMATIQ_WORKER_TIMEOUT")


def _console_script() -> list[str]:
    """The installed ``social-accounts`` console script of this interpreter's environment."""
    beside = Path(sys.executable).parent / "social-accounts"
    found = str(beside) if beside.exists() else shutil.which("social-accounts")
    if found is None:
        pytest.fail("the social-accounts console script is not installed (pip install -e .)")
    return [found]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _clean_env(database_url: str, base: str, port: int) -> dict[str, str]:
    """This process's environment without any setting of the service (no PostgreSQL, no Redis,
    no secrets, no platform credentials), plus the few values this run needs."""
    settings_names = {name.upper() for name in Settings.model_fields}
    env = {
        name: value
        for name, value in os.environ.items()
        if name.upper() not in settings_names
        and name.upper() not in EXTRA_SERVICE_ENV
        and not name.upper().startswith(("TEST_", "SOCIAL_ACCOUNTS_"))
    }
    env.update(DATABASE_URL=database_url, PUBLIC_URL=base, HOST="127.0.0.1", PORT=str(port))
    return env


class Embedded:
    """One ``social-accounts run --demo`` process and the files it works with."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.db_path = workdir / "x.db"
        self.log_path = workdir / "service.log"
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = _clean_env(f"sqlite:///{self.db_path}", self.base, self.port)
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [*_console_script(), "run", "--demo"], cwd=workdir, env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.http = httpx.Client(base_url=self.base, timeout=10, trust_env=False)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"`run --demo` exited early ({self.proc.returncode}):\n{self.log()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                return self.http.get("/readyz", timeout=1).status_code == 200
            return False

        try:
            wait_until(ready, what="/readyz to answer 200", every=0.1)
        except AssertionError as exc:
            pytest.fail(f"{exc}:\n{self.log()[-3000:]}")

    def api_token(self) -> str:
        """The API token ``run`` generated into the working directory (mode 0600)."""
        secrets_file = self.workdir / ".social-accounts" / "secrets.env"
        assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
        values = dict(
            line.split("=", 1) for line in secrets_file.read_text().splitlines() if "=" in line and line[0] != "#"
        )
        assert {"API_TOKEN", "STATE_SECRET", "TOKEN_KEYS"} <= values.keys()
        token = values["API_TOKEN"].strip()
        assert len(token) >= 32
        return token

    def doctor(self) -> tuple[int, dict[str, dict[str, Any]]]:
        """``social-accounts doctor --json`` as a new user runs it: same directory, same environment."""
        result = subprocess.run(
            [*_console_script(), "doctor", "--json"],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.stdout, result.stderr
        return result.returncode, {check["name"]: check for check in json.loads(result.stdout)}

    def stop(self, sig: signal.Signals) -> int:
        """Send ``sig`` and wait for the exit; fail when it takes longer than ``STOP_SECONDS``."""
        self.http.close()
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`run --demo` did not exit within {STOP_SECONDS} s of {sig.name}:\n{self.log()[-3000:]}")

    def close(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    def assert_stopped_cleanly(self, sig: signal.Signals) -> None:
        code = self.stop(sig)
        log = self.log()
        assert code == 0, f"`run --demo` exited with {code} on {sig.name}:\n{log[-3000:]}"
        assert "Worker has been shut down" in log  # the worker threads were stopped, not cut off
        assert "Traceback" not in log, log[-3000:]


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[Embedded]:
    service = Embedded(tmp_path)
    try:
        service.wait_ready()
        yield service
    finally:
        service.close()


def _sqlite(path: Path) -> contextlib.closing[sqlite3.Connection]:
    return contextlib.closing(sqlite3.connect(path, timeout=10))


def _snapshot(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of the SQLite file."""
    with _sqlite(path) as conn:
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {table: sorted(conn.execute(f'SELECT * FROM "{table}"').fetchall(), key=repr) for table in tables}


def _database_bytes(path: Path) -> bytes:
    """The SQLite file and whatever journal or WAL lies beside it."""
    return b"".join(p.read_bytes() for p in sorted(path.parent.glob(path.name + "*")) if p.is_file())


def _location(response: httpx.Response) -> str:
    assert response.status_code in (302, 303), (response.status_code, response.text[:500])
    return str(response.headers["location"])


def _callbacks_counted(http: httpx.Client) -> dict[str, float]:
    """``social_accounts_callbacks_total`` by outcome, read from the instance's ``/metrics``."""
    answer = http.get("/metrics")
    assert answer.status_code == 200, answer.text[:500]
    counted = re.findall(r'^social_accounts_callbacks_total\{outcome="([^"]+)"\} (\S+)$', answer.text, re.M)
    return {outcome: float(value) for outcome, value in counted if float(value)}


def _wait_for_attempt(http: httpx.Client, headers: dict[str, str], attempt_id: str) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        answer = http.get(f"/v1/attempts/{attempt_id}", headers=headers)
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body if body["status"] != "pending" else None

    return wait_until(finished, what=f"attempt {attempt_id} to leave pending")


def test_run_demo_on_sqlite_connects_an_account_end_to_end(embedded: Embedded) -> None:
    http, base = embedded.http, embedded.base
    headers = {"Authorization": f"Bearer {embedded.api_token()}"}
    return_to = f"{base}/sites/{SITE}/accounts"

    # the dashboard asks for a connect
    answer = http.post(
        "/v1/connect/demo", headers=headers, json={"site_id": SITE, "user_id": USER, "return_to": return_to}
    )
    assert answer.status_code == 201, answer.text
    attempt_id, authorization_url = answer.json()["attempt_id"], answer.json()["authorization_url"]
    assert authorization_url.startswith(f"{base}/demo/authorize?")

    # the browser: the consent page, Allow, the platform's redirect to our callback
    consent = http.get(authorization_url)
    assert consent.status_code == 200, consent.text[:500]
    assert 'id="demo-consent"' in consent.text
    ticket = re.search(r'name="ticket" value="([^"]+)"', consent.text)
    assert ticket is not None
    callback_url = _location(
        http.post("/demo/authorize", data={"ticket": ticket.group(1), "persona": "cafe", "decision": "allow"})
    )
    assert callback_url.startswith(f"{base}/oauth/callback?")
    back = _location(http.get(callback_url))
    assert back == f"{return_to}?{urlencode({'attempt': attempt_id})}"
    page = http.get(back)  # the accounts page: without a session cookie, its sign-in form
    assert page.status_code == 401 and 'id="api_token"' in page.text, page.text[:500]

    # the worker threads finish the connect
    attempt = _wait_for_attempt(http, headers, attempt_id)
    assert attempt["status"] == "connected", attempt
    assert len(attempt["account_ids"]) == 1
    account_id = attempt["account_ids"][0]

    answer = http.get(f"/v1/accounts/{account_id}", headers=headers)
    assert answer.status_code == 200, answer.text
    account = answer.json()
    assert (account["status"], account["health_score"]) == ("active", 100), account
    assert (account["platform"], account["site_id"], account["account_handle"]) == ("demo", SITE, "corner_cafe")
    assert account["followers_count"] >= 1234
    assert "demo." not in answer.text  # the account view never carries a token

    # the service hands the token out on purpose: we now know what must never be stored in clear
    answer = http.post(f"/v1/accounts/{account_id}/token", headers=headers)
    assert answer.status_code == 200, answer.text
    access_token = answer.json()["access_token"]
    assert access_token.startswith("demo.")

    # the account row is in the SQLite file, its tokens encrypted
    assert embedded.db_path.is_file()
    with _sqlite(embedded.db_path) as conn:
        row = conn.execute(
            "SELECT platform, site_id, status, health_score, access_token, refresh_token"
            " FROM social_accounts WHERE id = ?",
            (account_id,),
        ).fetchone()
    assert row is not None
    platform, site_id, status, health, stored_access, stored_refresh = row
    assert (platform, site_id, status, health) == ("demo", SITE, "active", 100)
    for stored in (stored_access, stored_refresh):
        assert stored and "demo." not in stored and access_token not in stored

    embedded.assert_stopped_cleanly(signal.SIGTERM)  # what `docker stop` and systemd send

    # after a clean stop the account is still there, and no token is in any byte of the database
    with _sqlite(embedded.db_path) as conn:
        assert conn.execute("SELECT status FROM social_accounts WHERE id = ?", (account_id,)).fetchone() == ("active",)
    raw = _database_bytes(embedded.db_path)
    assert access_token.encode() not in raw
    assert DEMO_TOKEN_MARK not in raw  # nor the refresh token, nor the code
    assert access_token not in embedded.log()  # the logs never carry it either


def test_a_forged_state_at_the_callback_is_refused_and_creates_nothing(embedded: Embedded) -> None:
    http, base = embedded.http, embedded.base
    headers = {"Authorization": f"Bearer {embedded.api_token()}"}
    expires = datetime.now(UTC) + timedelta(minutes=10)

    def forged(attempt_id: str) -> str:
        state = SignedState(attempt_id, "demo", expires, f"{base}/sites/{SITE}/accounts")
        return sign_state(state, "not-the-state-secret-of-this-service")

    def callback(state: str) -> httpx.Response:
        return http.get("/oauth/callback", params={"state": state, "code": "demo.eyJmb3JnZWQiOjF9.x"})

    # on an empty database: a well-formed state signed with another secret, and plain garbage
    before = _snapshot(embedded.db_path)
    assert not before["social_accounts"] and not before["social_oauth_states"]
    made_up = str(uuid.uuid4())
    for state in (forged(made_up), "forged-state"):
        answer = callback(state)
        assert answer.status_code == 400, answer.text
        assert "not valid" in answer.text and "location" not in answer.headers
    assert http.get(f"/v1/attempts/{made_up}", headers=headers).status_code == 404

    # a forged state naming a real, pending attempt does not touch it either
    answer = http.post("/v1/connect/demo", headers=headers, json={"site_id": SITE, "user_id": USER})
    assert answer.status_code == 201, answer.text
    attempt_id = answer.json()["attempt_id"]
    with_attempt = _snapshot(embedded.db_path)
    assert len(with_attempt["social_oauth_states"]) == 1
    answer = callback(forged(attempt_id))
    assert answer.status_code == 400, answer.text

    # the callback counts every answer: three refusals, and not one message handed to the broker
    assert _callbacks_counted(http) == {"state_invalid": 3.0}
    assert _snapshot(embedded.db_path) == with_attempt
    assert {**with_attempt, "social_oauth_states": []} == before  # only the connect wrote
    answer = http.get(f"/v1/attempts/{attempt_id}", headers=headers)
    assert answer.json()["status"] == "pending", answer.text

    embedded.assert_stopped_cleanly(signal.SIGINT)  # Ctrl-C in a terminal


def test_doctor_beside_a_running_instance_reports_that_instance(embedded: Embedded) -> None:
    code, checks = embedded.doctor()

    pid = f"pid {embedded.proc.pid}"
    assert code == 0, checks
    assert checks["instance"]["status"] == "ok", checks["instance"]
    assert pid in checks["instance"]["detail"] and embedded.base in checks["instance"]["detail"]
    # the generated secrets are found: TOKEN_KEYS is set, its one key encrypts
    assert checks["keys"]["status"] == "ok" and "k1 encrypts" in checks["keys"]["detail"], checks["keys"]
    assert checks["database"]["status"] == "ok", checks["database"]
    # the broker `run` uses, not a Redis it never talks to
    assert checks["broker"]["status"] == "ok"
    assert "memory://" in checks["broker"]["detail"] and pid in checks["broker"]["detail"]
    assert "redis" not in json.dumps(checks).lower()
    # its embedded scheduler leads
    assert checks["scheduler leader"]["status"] == "ok"
    assert "embedded scheduler" in checks["scheduler leader"]["detail"] and pid in checks["scheduler leader"]["detail"]

    embedded.assert_stopped_cleanly(signal.SIGTERM)
    _, after = embedded.doctor()
    assert "instance" not in after  # a stopped run is not reported as running
    assert not (embedded.workdir / ".social-accounts" / "run.json").exists()
