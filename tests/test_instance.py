"""What every entry point reads, and how ``doctor`` finds the ``run`` beside it.

No service is needed: the settings come from files in a temporary working directory, and the
doctor checks a SQLite file and the in-process broker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.doctor import run_checks
from service.instance import INSTANCE_FILE, hold, running
from social_accounts.settings import LOCAL_SECRETS_FILE, Settings, get_settings
from tests.support import new_key

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def workdir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """An empty working directory and no setting of the service in the environment."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    get_settings.cache_clear()


# ---- one configuration --------------------------------------------------------------------------


@pytest.mark.unit
def test_settings_read_the_secrets_run_generated_and_env_and_dot_env_win(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    LOCAL_SECRETS_FILE.parent.mkdir()
    key = f"k1:{new_key()}"
    LOCAL_SECRETS_FILE.write_text(
        f"# generated\nAPI_TOKEN=generated-api\nSTATE_SECRET=generated-state\nTOKEN_KEYS={key}\n"
    )
    (workdir / ".env").write_text("STATE_SECRET=from-dot-env\n")
    monkeypatch.setenv("API_TOKEN", "from-environment")

    settings = Settings()

    assert settings.token_keys == key
    assert settings.state_secret == "from-dot-env"
    assert settings.api_token == "from-environment"


# ---- the instance file --------------------------------------------------------------------------


@pytest.mark.unit
def test_a_held_instance_is_found_and_gone_once_released(workdir: Path) -> None:
    settings = Settings(_env_file=None, broker_url="memory://", public_url="http://127.0.0.1:8123")  # type: ignore[call-arg]
    assert running() is None
    with hold(settings) as held:
        assert held is not None
        found = running()
        assert found == held and found.pid == os.getpid() and found.broker == "memory://"
        assert (INSTANCE_FILE.stat().st_mode & 0o777) == 0o600
        with hold(settings) as second:  # another run in the same directory does not take it over
            assert second is None
        assert running() == held
    assert running() is None and not INSTANCE_FILE.exists()


def test_a_file_left_by_a_killed_run_is_not_a_running_instance(workdir: Path) -> None:
    code = (
        "import time; from service.instance import hold; from social_accounts.settings import Settings\n"
        "with hold(Settings(_env_file=None)):\n"
        "    print('held', flush=True); time.sleep(600)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", code], cwd=workdir, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "held\n"
        found = running()
        assert found is not None and found.pid == child.pid
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    assert INSTANCE_FILE.exists()  # nothing could clean up after kill -9 ...
    assert running() is None  # ... but the kernel released its lock


# ---- the doctor beside a run ----------------------------------------------------------------------


def _checks(settings: Settings) -> dict[str, tuple[str, str]]:
    return {check.name: (check.status, check.detail) for check in run_checks(settings)}


@pytest.mark.unit
def test_the_doctor_checks_the_running_instance_broker_and_leader(workdir: Path) -> None:
    settings = Settings(_env_file=None, database_url=f"sqlite:///{workdir / 'x.db'}", token_keys=f"k1:{new_key()}")  # type: ignore[call-arg]
    alone = _checks(settings.model_copy(update={"broker_url": "memory://"}))
    assert "instance" not in alone  # no run here: nothing to report as running
    assert alone["scheduler leader"] == ("info", "not tracked without Redis (set REDIS_URL)")

    run_like = settings.model_copy(update={"broker_url": "memory://"})  # what `run` uses by default
    with hold(run_like):
        checks = _checks(settings)  # the doctor's own settings, as a new user has them: no BROKER_URL
    pid = f"pid {os.getpid()}"
    assert checks["instance"][0] == "ok" and pid in checks["instance"][1]
    assert checks["broker"] == ("ok", f"in-process broker (memory://) of `social-accounts run` ({pid})")
    assert checks["scheduler leader"][0] == "ok" and "embedded scheduler" in checks["scheduler leader"][1]
    assert checks["cooldowns"][0] == "info"
    assert "redis" not in str(checks).lower()


@pytest.mark.unit
def test_the_doctor_says_when_its_settings_are_not_those_of_the_running_instance(workdir: Path) -> None:
    settings = Settings(_env_file=None, token_keys=f"k1:{new_key()}")  # type: ignore[call-arg]
    with hold(settings.model_copy(update={"database_url": "sqlite:///elsewhere.db", "broker_url": "memory://"})):
        status, detail = _checks(settings)["instance"]
    assert status == "warn"
    assert "sqlite:///elsewhere.db" in detail and "sqlite:///social_accounts.db" in detail
    assert not (workdir / "social_accounts.db").exists()  # nothing created on the way
