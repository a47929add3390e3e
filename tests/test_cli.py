"""The console script: one clear line per error, and the commands that must work now do.

Most tests call ``service.cli.main`` in-process (fast); a few run the installed
``social-accounts`` script in a subprocess to prove what an operator sees, tracebacks included.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from rich.console import Console

from models.crypto import KeyRing
from service import cli
from social_accounts.settings import Settings
from tests.cli_support import error_lines, run_cli, seed_account
from tests.support import new_key

SCRIPT = Path(sys.executable).with_name("social-accounts")
DEAD_DB = "postgresql+psycopg://postgres@127.0.0.1:1/x"


def _script(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    if not SCRIPT.exists():
        pytest.fail(f"{SCRIPT} is missing: install the project (pip install -e .)")
    base = {k: v for k, v in os.environ.items() if k.upper() not in {n.upper() for n in Settings.model_fields}}
    return subprocess.run(
        [str(SCRIPT), *args], env={**base, **env}, cwd=cwd, capture_output=True, text=True, timeout=60
    )


# ---- one clear line -----------------------------------------------------------------------


def test_web_without_api_token_names_it_in_one_line(tmp_path: Path) -> None:
    result = _script(["web"], {"STATE_SECRET": "s", "TOKEN_KEYS": f"k1:{new_key()}"}, tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == ["error: API_TOKEN is required but not set (see .env.example)"]
    assert "Traceback" not in result.stdout + result.stderr


def test_an_unreachable_database_is_one_line(tmp_path: Path) -> None:
    result = _script(["migrate"], {"DATABASE_URL": DEAD_DB}, tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: database postgresql+psycopg://postgres@127.0.0.1:1/x does not answer")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("token_keys", "expected"),
    [
        ("not-a-ring", "TOKEN_KEYS is malformed"),
        ("k1:c2hvcnQ", "TOKEN_KEYS key 'k1' is 5 bytes; it must be 32"),
        ("k1:@@@notbase64@@@", "TOKEN_KEYS key 'k1' is not valid base64"),
    ],
)
def test_malformed_token_keys_is_one_clear_line(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], token_keys: str, expected: str
) -> None:
    env.setenv("API_TOKEN", "api-token-value")
    env.setenv("STATE_SECRET", "state-secret-value")
    env.setenv("TOKEN_KEYS", token_keys)
    code, _, err = run_cli(capsys, "web")
    assert code == 1
    assert len(error_lines(err)) == 1 and expected in error_lines(err)[0]
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["worker", "scheduler"])
def test_worker_and_scheduler_require_token_keys(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    code, _, err = run_cli(capsys, command)
    assert code == 1
    assert error_lines(err) == ["error: TOKEN_KEYS is required but not set (see .env.example)"]


def test_a_malformed_setting_is_named_without_echoing_its_value(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env.setenv("ALLOW_PRIVATE_NETWORK", "hunter2-looks-like-a-password")
    code, out, err = run_cli(capsys, "doctor")
    assert code == 1
    assert error_lines(err) == [
        "error: ALLOW_PRIVATE_NETWORK is invalid: Input should be a valid boolean, unable to interpret input"
    ]
    assert "hunter2" not in out + err


def test_an_unexpected_error_is_one_redacted_line(env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def explode(settings: Settings) -> list[Any]:
        raise RuntimeError("platform said access_token=leaked-token-value\nsecond line")

    env.setattr("service.doctor.run_checks", explode)
    code, out, err = run_cli(capsys, "doctor")
    assert code == 1
    assert err.strip().splitlines() == ["error: RuntimeError: platform said access_token=[REDACTED]"]
    assert "leaked-token-value" not in out + err


def test_a_command_whose_code_is_missing_says_so_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as exc_info:
        cli._later("social_accounts.not_built_yet", "run", "thing")
    assert exc_info.value.exit_code == 2
    assert capsys.readouterr().err.strip() == (
        "social-accounts thing: not available in this build yet (social_accounts.not_built_yet is missing)"
    )


def test_a_missing_dependency_inside_existing_code_is_not_disguised_as_not_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sa_half_built.py").write_text("import sa_dependency_that_is_absent\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError):
        cli._later("sa_half_built", "run", "thing")


def test_usage_errors_exit_2(env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "accounts", "show")
    assert code == 2
    assert "Missing argument 'ID'" in err


# ---- process commands hand over correctly -------------------------------------------------


def test_worker_passes_processes_and_threads_through_to_dramatiq(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[Any] = []

    def fake_main(args: Any) -> int:
        seen.append(args)
        return 3

    env.setenv("TOKEN_KEYS", f"k1:{new_key()}")
    env.setattr("dramatiq.cli.main", fake_main)
    code, _, _ = run_cli(capsys, "worker", "--processes", "3", "--threads", "2")
    assert code == 3  # Dramatiq's own exit code is the command's
    (args,) = seen
    assert (args.processes, args.threads, args.skip_logging) == (3, 2, True)
    assert args.broker == "service.cli:boot_worker_process"


def test_web_serves_the_app_built_from_the_settings(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    served: list[tuple[Any, dict[str, Any]]] = []
    env.setenv("API_TOKEN", "api-token-value")
    env.setenv("STATE_SECRET", "state-secret-value")
    env.setenv("TOKEN_KEYS", f"k1:{new_key()}")
    env.setenv("PORT", "8123")
    env.setattr("uvicorn.run", lambda application, **kw: served.append((application, kw)))
    code, _, err = run_cli(capsys, "web")
    assert code == 0, err
    (application, options) = served[0]
    assert application.state.services.settings.api_token == "api-token-value"
    assert (options["host"], options["port"], options["log_config"]) == ("127.0.0.1", 8123, None)


# ---- run ----------------------------------------------------------------------------------


def test_run_generates_local_secrets_once_and_uses_the_memory_broker(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    seen: list[tuple[Settings, bool]] = []
    env.setattr("service.embedded.run_embedded", lambda settings, demo=False: seen.append((settings, demo)))
    (tmp_path / ".env").write_text("STATE_SECRET=from-dot-env-file\n")

    assert run_cli(capsys, "run")[0] == 0
    assert run_cli(capsys, "run", "--demo")[0] == 0

    first, second = seen[0][0], seen[1][0]
    secrets_file = tmp_path / ".social-accounts" / "secrets.env"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    assert first.broker_url == "memory://"
    assert first.state_secret == "from-dot-env-file"  # .env wins over generating one
    assert first.api_token and len(first.api_token) >= 32
    assert KeyRing.from_settings(first).current_kid == "k1"
    assert (second.api_token, second.token_keys) == (first.api_token, first.token_keys)  # generated once
    # the Bluesky OAuth client's signing key too: one usable P-256 key, kept across runs
    from platforms.bluesky_oauth import parse_signing_keys

    assert len(parse_signing_keys(first.bluesky_oauth_keys)) == 1
    assert second.bluesky_oauth_keys == first.bluesky_oauth_keys
    assert [demo for _, demo in seen] == [False, True]
    assert "from-dot-env-file" not in secrets_file.read_text()


# ---- against real PostgreSQL and Redis ----------------------------------------------------


def _where(column: str, row_id: str) -> dict[str, str]:
    return {"table": "social_accounts", "column": column, "row_id": row_id}


def _stored_tokens(url: str, row_id: str) -> tuple[str, str]:
    import sqlalchemy as sa

    from models.engine import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                sa.text("SELECT access_token, refresh_token FROM social_accounts WHERE id = :id"), {"id": row_id}
            ).one()
    finally:
        engine.dispose()
    return row[0], row[1]


def _doctor(capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, dict[str, Any]]]:
    code, out, _ = run_cli(capsys, "doctor", "--json")
    return code, {check["name"]: check for check in json.loads(out)}


def test_migrate_then_doctor_passes(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], pg_url: str, redis_url: str
) -> None:
    env.setenv("DATABASE_URL", pg_url)
    env.setenv("BROKER_URL", redis_url)
    env.setenv("TOKEN_KEYS", f"k1:{new_key()}")

    code, checks = _doctor(capsys)
    assert code == 1
    assert checks["database"]["status"] == "fail" and "no schema" in checks["database"]["detail"]

    code, out, err = run_cli(capsys, "migrate")
    assert code == 0, err
    assert "migrated from an empty schema to" in out
    code, out, _ = run_cli(capsys, "migrate")
    assert code == 0 and "already at head" in out

    code, checks = _doctor(capsys)
    failures = [check for check in checks.values() if check["status"] == "fail"]
    assert code == 0 and failures == []
    assert checks["database"]["status"] == "ok"
    assert checks["keys"]["status"] == "ok"
    assert checks["broker"]["status"] == "ok"
    assert checks["scheduler leader"]["detail"].startswith("none")
    assert checks["cooldowns"]["detail"] == "none"
    assert checks["platform twitter"]["detail"] == "not configured: set TWITTER_CLIENT_ID, TWITTER_CLIENT_SECRET"

    code, out, _ = run_cli(capsys, "doctor")
    assert code == 0
    assert "✔ database:" in out and "✔ keys:" in out and "• platform twitter: not configured" in out


def test_doctor_reports_leader_and_cooldowns_from_redis(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], pg_url: str, redis_url: str, redis_namespace: str
) -> None:
    import redis

    from scheduler.leader import leader_key
    from workers.cooldowns import set_cooldown

    env.setenv("DATABASE_URL", pg_url)
    env.setenv("BROKER_URL", redis_url)
    env.setenv("TOKEN_KEYS", f"k1:{new_key()}")
    client = redis.Redis.from_url(redis_url)
    client.set(leader_key(redis_namespace), "host-a:42:abcd", px=9000)
    set_cooldown(client, redis_namespace, "twitter", 120, reason="rate_limited")
    client.close()

    _, checks = _doctor(capsys)
    assert checks["scheduler leader"]["status"] == "ok"
    assert checks["scheduler leader"]["detail"].startswith("host-a:42:abcd (lease ")
    assert checks["cooldowns"]["detail"] == "1 active"
    # 120 s set just before; the doctor reads it a moment later (2m00s, or 1m59s on a busy machine)
    assert re.match(r"twitter \(app\): (2m00s|1m59s) left, rate_limited$", checks["cooldowns"]["items"][0])


def test_doctor_fails_when_the_broker_does_not_answer(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env.setenv("BROKER_URL", "redis://127.0.0.1:1/0")
    code, checks = _doctor(capsys)
    assert code == 1
    assert checks["broker"]["status"] == "fail"
    assert "ConnectionError" in checks["broker"]["detail"]


def test_doctor_without_redis_or_a_database_file(env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    env.setenv("BROKER_URL", "memory://")
    env.setenv("TOKEN_KEYS", f"k1:{new_key()}")
    code, checks = _doctor(capsys)
    assert code == 1
    assert checks["database"]["detail"] == "social_accounts.db does not exist: run `social-accounts migrate`"
    assert not Path("social_accounts.db").exists()  # the doctor never creates an empty database
    assert checks["keys"]["status"] == "ok" and "not checked" in checks["keys"]["detail"]
    assert checks["broker"]["status"] == "ok" and "memory://" in checks["broker"]["detail"]
    assert checks["scheduler leader"]["status"] == "info"


def test_keys_rotate_end_to_end_with_doctor_before_and_after(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], pg_url: str, redis_url: str
) -> None:
    old_key, new = new_key(), new_key()
    env.setenv("DATABASE_URL", pg_url)
    env.setenv("BROKER_URL", redis_url)
    env.setenv("TOKEN_KEYS", f"k0:{old_key}")
    assert run_cli(capsys, "migrate")[0] == 0
    row_id = seed_account(pg_url, KeyRing.from_settings(Settings(_env_file=None, token_keys=f"k0:{old_key}")))  # type: ignore[call-arg]

    # the new key alone cannot read what k0 wrote: a failure, named
    env.setenv("TOKEN_KEYS", f"k1:{new}")
    code, checks = _doctor(capsys)
    assert code == 1 and checks["keys"]["status"] == "fail"
    assert checks["keys"]["items"] == ["2 value(s) under key 'k0', which TOKEN_KEYS does not hold"]

    # new key first, old one still present: rotation pending, not a failure
    env.setenv("TOKEN_KEYS", f"k1:{new},k0:{old_key}")
    code, checks = _doctor(capsys)
    assert checks["keys"]["status"] == "warn" and "rotation pending for 2 of 2" in checks["keys"]["detail"]

    code, out, err = run_cli(capsys, "keys", "rotate")
    assert code == 0, err
    assert "2 value(s) re-encrypted" in out

    ring = KeyRing.from_settings(Settings(_env_file=None, token_keys=f"k1:{new}"))  # type: ignore[call-arg]
    access, refresh = _stored_tokens(pg_url, row_id)
    assert ring.decrypt(access, table="social_accounts", column="access_token", row_id=row_id) == "plain-access"
    assert ring.decrypt(refresh, table="social_accounts", column="refresh_token", row_id=row_id) == "plain-refresh"

    code, checks = _doctor(capsys)
    assert checks["keys"]["status"] == "ok" and "all 2 stored value(s) under k1" in checks["keys"]["detail"]
    code, out, _ = run_cli(capsys, "keys", "rotate")
    assert code == 0 and "already under it" in out


def test_accounts_list_and_show_never_print_a_token(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], pg_url: str
) -> None:
    key = new_key()
    env.setenv("DATABASE_URL", pg_url)
    env.setenv("TOKEN_KEYS", f"k1:{key}")
    assert run_cli(capsys, "migrate")[0] == 0
    ring = KeyRing.from_settings(Settings(_env_file=None, token_keys=f"k1:{key}"))  # type: ignore[call-arg]
    first = seed_account(pg_url, ring, site_id="site-1", handle="alice")
    seed_account(pg_url, ring, site_id="site-2", handle="bob[/x]")  # not rich markup

    code, out, _ = run_cli(capsys, "accounts", "list", "--site", "site-1", "--json")
    assert code == 0
    rows = json.loads(out)
    assert [row["id"] for row in rows] == [first]
    assert "access_token" not in rows[0] and "token_metadata" not in rows[0]
    assert rows[0]["health_reason"]

    env.setattr(cli, "out", Console(width=200, highlight=False, soft_wrap=True))  # a wide terminal
    code, out, _ = run_cli(capsys, "accounts", "list")
    assert code == 0 and "@alice" in out and "@bob[/x]" in out and "2 account(s)" in out
    assert "v1:k1:" not in out and "plain-access" not in out

    code, out, _ = run_cli(capsys, "accounts", "show", first, "--json")
    assert code == 0 and json.loads(out)["account_handle"] == "@alice"
    assert "v1:k1:" not in out

    code, _, err = run_cli(capsys, "accounts", "show", "no-such-id")
    assert code == 1 and error_lines(err) == ["error: no account with id 'no-such-id'"]


def test_accounts_refresh_enqueues_on_redis(pg_url: str, redis_url: str, redis_namespace: str, tmp_path: Path) -> None:
    """In a fresh process, as an operator runs it: the message lands on the refresh queue."""
    import redis

    from models.migrate import upgrade

    key = new_key()
    upgrade(pg_url)
    ring = KeyRing.from_settings(Settings(_env_file=None, token_keys=f"k1:{key}"))  # type: ignore[call-arg]
    row_id = seed_account(pg_url, ring)
    namespace = redis_namespace
    env = {
        "DATABASE_URL": pg_url,
        "BROKER_URL": redis_url,
        "TOKEN_KEYS": f"k1:{key}",
        "LOG_LEVEL": "WARNING",
        "REDIS_NAMESPACE": namespace,
    }

    result = _script(["accounts", "refresh", row_id], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"refresh of {row_id} enqueued" in result.stdout

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        payloads = [json.loads(p) for p in client.hvals(f"{namespace}:refresh.msgs")]
    finally:
        client.close()
    assert [(p["actor_name"], p["kwargs"]["account_id"]) for p in payloads] == [("refresh_account", row_id)]

    missing = _script(["accounts", "sync", "no-such-id"], env, tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "error: no account with id 'no-such-id'"
