"""Deployment files: .env.example, docker-compose.yml, Dockerfile.

The compose file is validated by docker-compose itself (offline, ``config -q``) and read with
PyYAML to check the production shape: durable non-evicting Redis, health checks, a one-shot
migration the services wait for, scalable workers. docker-compose is required in CI and skipped
locally when it is not installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from service.cli import app
from social_accounts.settings import Settings
from tests.support import unavailable

ROOT = Path(__file__).resolve().parent.parent
APP_SERVICES = ("migrate", "web", "worker", "scheduler")


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def _env_example() -> list[str]:
    return (ROOT / ".env.example").read_text().splitlines()


# ---- .env.example -------------------------------------------------------------------------


@pytest.mark.unit
def test_env_example_lists_every_setting_with_a_comment() -> None:
    lines = _env_example()
    names: dict[str, int] = {}
    for index, line in enumerate(lines):
        match = re.match(r"^([A-Z][A-Z0-9_]*)=", line)
        if match:
            names[match.group(1)] = index
    missing = sorted(name.upper() for name in Settings.model_fields if name.upper() not in names)
    assert missing == []
    uncommented = [name for name, index in names.items() if not lines[index - 1].startswith("# ")]
    assert uncommented == []


@pytest.mark.unit
def test_env_example_loads_as_settings_with_no_secret_filled_in() -> None:
    settings = Settings(_env_file=str(ROOT / ".env.example"))  # type: ignore[call-arg]
    assert settings.public_url == "http://127.0.0.1:8000"
    assert not settings.api_token and not settings.state_secret and not settings.token_keys
    assert settings.effective_broker_url == "redis://127.0.0.1:6379/0"


# ---- docker-compose.yml -------------------------------------------------------------------


@pytest.mark.unit
def test_compose_has_the_production_services() -> None:
    services = _compose()["services"]
    assert set(services) == {"postgres", "redis", *APP_SERVICES}
    assert {"postgres-data", "redis-data"} <= set(_compose()["volumes"])


@pytest.mark.unit
def test_redis_is_durable_and_never_evicts() -> None:
    redis = _compose()["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    assert "redis-cli" in redis["healthcheck"]["test"]
    assert any(volume.endswith(":/data") for volume in redis["volumes"])


@pytest.mark.unit
def test_postgres_has_a_healthcheck_and_a_volume() -> None:
    postgres = _compose()["services"]["postgres"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert any(volume.endswith(":/var/lib/postgresql/data") for volume in postgres["volumes"])
    assert postgres["environment"]["POSTGRES_PASSWORD"] == "${POSTGRES_PASSWORD:-}"  # never a default password


@pytest.mark.unit
def test_migrate_runs_once_after_postgres_and_the_services_wait_for_it() -> None:
    services = _compose()["services"]
    migrate = services["migrate"]
    assert migrate["command"] == ["migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("web", "worker", "scheduler"):
        depends = services[name]["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}, name
        assert depends["redis"] == {"condition": "service_healthy"}, name


@pytest.mark.unit
def test_app_services_share_one_image_and_point_at_the_compose_databases() -> None:
    services = _compose()["services"]
    images = {services[name]["image"] for name in APP_SERVICES}
    assert len(images) == 1
    for name in APP_SERVICES:
        service = services[name]
        assert service["build"] == "."
        assert "env_file" not in service  # a clean clone has no .env; settings are substituted
        for secret in ("API_TOKEN", "STATE_SECRET", "TOKEN_KEYS"):
            assert service["environment"][secret] == "${" + secret + ":-}"
        assert service["environment"]["BROKER_URL"] == "redis://redis:6379/0"
        assert "@postgres:5432/" in service["environment"]["DATABASE_URL"]


@pytest.mark.unit
def test_workers_scale_and_only_web_publishes_a_port() -> None:
    services = _compose()["services"]
    for name in APP_SERVICES:
        assert "container_name" not in services[name], name
    assert [name for name in APP_SERVICES if "ports" in services[name]] == ["web"]
    assert services["web"]["environment"]["HOST"] == "0.0.0.0"


@pytest.mark.unit
def test_every_service_command_is_a_cli_command() -> None:
    commands = set(typer.main.get_group(app).commands)
    services = _compose()["services"]
    assert {services[name]["command"][0] for name in APP_SERVICES} <= commands
    assert services["worker"]["command"][1:3] == ["--processes", "${WORKER_PROCESSES:-2}"]


def _compose_config(
    tmp_path: Path, *args: str, password: str | None, dotenv: bool = True
) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        unavailable("docker-compose")
    shutil.copy(ROOT / "docker-compose.yml", tmp_path / "docker-compose.yml")
    shutil.copy(ROOT / "Dockerfile", tmp_path / "Dockerfile")
    if dotenv:
        shutil.copy(ROOT / ".env.example", tmp_path / ".env")  # what an operator starts from
    env = {k: v for k, v in os.environ.items() if k != "POSTGRES_PASSWORD"}
    if password is not None:
        env["POSTGRES_PASSWORD"] = password
    return subprocess.run(
        [str(binary), "--project-directory", str(tmp_path), "-f", str(tmp_path / "docker-compose.yml"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_docker_compose_accepts_the_file(tmp_path: Path) -> None:
    result = _compose_config(tmp_path, "config", "-q", password="s3cure")
    assert result.returncode == 0, result.stderr
    services = _compose_config(tmp_path, "config", "--services", password="s3cure")
    assert set(services.stdout.split()) == {"postgres", "redis", *APP_SERVICES}


def test_docker_compose_accepts_the_file_on_a_clean_clone_with_no_env(tmp_path: Path) -> None:
    result = _compose_config(tmp_path, "config", "-q", password=None, dotenv=False)
    assert result.returncode == 0, result.stderr


def test_settings_from_the_shell_reach_the_app_services(tmp_path: Path) -> None:
    result = _compose_config(tmp_path, "config", password="s3cure")
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)["services"]["worker"]["environment"]
    assert rendered["DATABASE_URL"] == "postgresql+psycopg://social:s3cure@postgres:5432/social_accounts"


# ---- Dockerfile ---------------------------------------------------------------------------


@pytest.mark.unit
def test_dockerfile_builds_one_non_root_image_with_the_cli_entrypoint() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    assert "FROM python:3.11-slim" in lines
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}
    assert 'ENTRYPOINT ["social-accounts"]' in lines
    assert any(re.search(r"\bpip install (--no-deps )?\.(\s|$)", line) for line in lines)
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ".env" in ignored and ".venv" in ignored
