"""The ``social-accounts`` console script: every process and every operator command.

Why it is shaped like this:

* Modules of other packages (web app, workers, scheduler, embedded runner) are imported inside
  the command that needs them, so ``--help``, ``migrate`` and ``doctor`` work even when a
  package is broken or not built yet; a command whose code is not there says so in one line
  and exits 2.
* Errors are one line on stderr and a non-zero exit, never a traceback: an operator reading a
  container log needs "TOKEN_KEYS is required but not set", not forty lines of stack. Each
  command requires exactly the settings it uses, at start, by name.
* Output that could carry a secret (an unexpected exception's text) goes through the same
  redaction as the logs.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer import rich_utils

from social_accounts.errors import ConfigError, InputError, SocialAccountsError
from social_accounts.logs import configure_logging, redact
from social_accounts.settings import (
    GENERATED_SECRETS,
    LOCAL_SECRETS_FILE,
    Settings,
    ensure_local_secrets,
    get_settings,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from service.doctor import Check

__all__ = ["app", "boot_worker_process", "main"]

log = logging.getLogger("service.cli")

app = typer.Typer(
    name="social-accounts",
    help="Connects a multi-site dashboard's social accounts to ten platforms and keeps them connected.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
accounts_app = typer.Typer(help="Operator commands on connected accounts.", no_args_is_help=True)
keys_app = typer.Typer(help="The TOKEN_KEYS encryption key ring.", no_args_is_help=True)
app.add_typer(accounts_app, name="accounts")
app.add_typer(keys_app, name="keys")
events_app = typer.Typer(help='The public events (README "Events").', no_args_is_help=True)
webhooks_app = typer.Typer(help="Webhook endpoints and deliveries.", no_args_is_help=True)
app.add_typer(events_app, name="events")
app.add_typer(webhooks_app, name="webhooks")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

SYMBOLS = {"ok": ("✔", "green"), "fail": ("✘", "red"), "warn": ("⚠", "yellow"), "info": ("•", "cyan")}


# ---- helpers --------------------------------------------------------------------------------


def _settings() -> Settings:
    """The process settings (environment and ``.env``); a malformed value is one ConfigError line."""
    get_settings.cache_clear()
    try:
        return get_settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]).upper() if first.get("loc") else "settings"
        raise ConfigError(f"{name} is invalid: {first['msg']}") from None


def _later(module: str, attr: str, command: str) -> Any:
    """``module.attr``, or a plain "not available yet" (exit 2) when that code is not built."""
    try:
        found = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and (exc.name == module or module.startswith(exc.name + ".")):
            _not_yet(command, module)
        raise
    value = getattr(found, attr, None)
    if value is None:
        _not_yet(command, f"{module}.{attr}")
    return value


def _not_yet(command: str, what: str) -> NoReturn:
    typer.echo(f"social-accounts {command}: not available in this build yet ({what} is missing)", err=True)
    raise typer.Exit(2)


def _engine(settings: Settings) -> Engine:
    """An engine on DATABASE_URL that has answered once (ConfigError line otherwise)."""
    from models.engine import check_database, make_engine

    engine = make_engine(
        settings.database_url, pool_size=2, max_overflow=0, prepare_threshold=settings.database_prepare_threshold
    )
    try:
        check_database(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def _line(status: str, text: str) -> None:
    symbol, colour = SYMBOLS[status]
    out.print(Text.assemble((symbol, colour), " ", text))


# ---- processes ------------------------------------------------------------------------------


@app.command()
def run(demo: bool = typer.Option(False, "--demo", help="Add the built-in demo platform (local trials only).")) -> None:
    """Everything in one process: web app, worker threads and scheduler (the embedded default)."""
    settings = _settings()
    present = [name for name in GENERATED_SECRETS if getattr(settings, name.lower())]
    if len(present) < len(GENERATED_SECRETS):  # generated once into the file every entry point reads
        ensure_local_secrets(LOCAL_SECRETS_FILE, present)
        settings = _settings()
    settings = _later("service.embedded", "run_settings", "run")(settings)
    configure_logging(settings)
    run_embedded = _later("service.embedded", "run_embedded", "run")
    run_embedded(settings, demo=demo)


@app.command()
def web(
    host: str | None = typer.Option(None, help="Listen address (default HOST, 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Listen port (default PORT, 8000)."),
) -> None:
    """The HTTP app (OAuth callback, /v1 API, health and metrics) under uvicorn."""
    # the demo platform is for local trials under `run --demo` only: never served by `web`
    settings = _settings().model_copy(update={"demo_enabled": False})
    settings.require("API_TOKEN", "STATE_SECRET", "TOKEN_KEYS")
    settings.key_ring()
    configure_logging(settings)
    create_app = _later("web_callback.app", "create_app", "web")
    import uvicorn

    from workers import runtime

    application = create_app(runtime=runtime.configure(settings))
    _later("web_callback.app", "freeze_startup_heap", "web")()  # GC pauses set the callback's p99
    try:
        # log_config=None: uvicorn's loggers propagate to our redacting root handler
        uvicorn.run(application, host=host or settings.host, port=port or settings.port, log_config=None)
    finally:
        runtime.reset()


@app.command()
def worker(
    processes: int | None = typer.Option(None, "--processes", "-p", help="Worker processes (Dramatiq default: CPUs)."),
    threads: int | None = typer.Option(None, "--threads", "-t", help="Threads per process (Dramatiq default: 8)."),
) -> None:
    """Dramatiq worker for every queue (connect, refresh, sync, maintenance)."""
    settings = _settings()
    settings.require("TOKEN_KEYS")
    settings.key_ring()
    if importlib.util.find_spec("workers.actors") is None:
        _not_yet("worker", "workers.actors")
    configure_logging(settings)
    set_idle_poll()
    import dramatiq.cli

    args = ["--skip-logging"]  # each worker process configures redacting logs in boot_worker_process
    if processes is not None:
        args += ["--processes", str(processes)]
    if threads is not None:
        args += ["--threads", str(threads)]
    args.append(f"{__name__}:boot_worker_process")
    with _worker_metrics(settings):
        code = dramatiq.cli.main(dramatiq.cli.make_argument_parser().parse_args(args))
    raise typer.Exit(code or 0)


#: ms an idle worker may wait before it looks at its queues again (``worker``; env
#: ``dramatiq_worker_timeout`` overrides it)
IDLE_POLL_MS = 200


def set_idle_poll() -> None:
    """Let an idle consumer sleep at most ``IDLE_POLL_MS`` between polls of its queue.

    Dramatiq's default (1 s) is how long a user's connect could wait unnoticed in Redis after a
    quiet spell. Dramatiq reads ``dramatiq_worker_timeout`` once, when it is first imported (its
    forked processes inherit the value), so this must run before that import; an operator's own
    value wins.
    """
    os.environ.setdefault("dramatiq_worker_timeout", str(IDLE_POLL_MS))


#: set by ``worker`` for its processes: add Dramatiq's Prometheus middleware at boot
WORKER_METRICS_FLAG = "SOCIAL_ACCOUNTS_WORKER_METRICS"


@contextmanager
def _worker_metrics(settings: Settings) -> Iterator[None]:
    """Expose every worker process's metrics on ``WORKER_METRICS_HOST:WORKER_METRICS_PORT``.

    Dramatiq's Prometheus middleware forks one HTTP server that reads prometheus_client's
    multiprocess files; our own metrics (attempts, refreshes, latency...) land in the same files
    because ``PROMETHEUS_MULTIPROC_DIR`` is set here, before any worker process imports
    prometheus_client. The directory is fresh for each run (stale files of a previous run would
    be summed in) and removed afterwards. Port 0 turns the exposition off.
    """
    if not settings.worker_metrics_port:
        yield
        return
    directory = tempfile.mkdtemp(prefix="social-accounts-metrics-")
    values = {
        WORKER_METRICS_FLAG: "1",
        "PROMETHEUS_MULTIPROC_DIR": directory,
        "dramatiq_prom_db": directory,
        "dramatiq_prom_host": settings.worker_metrics_host,
        "dramatiq_prom_port": str(settings.worker_metrics_port),
    }
    saved_env = {name: os.environ.get(name) for name in values}
    os.environ.update(values)  # before the import: the module creates its directory when imported
    try:
        import dramatiq.middleware.prometheus as prom

        # an earlier import read the environment then: set what its fork function reads
        saved_module = (prom.DB_PATH, prom.HTTP_HOST, prom.HTTP_PORT)
        prom.DB_PATH, prom.HTTP_HOST = directory, settings.worker_metrics_host
        prom.HTTP_PORT = settings.worker_metrics_port
        try:
            yield
        finally:
            prom.DB_PATH, prom.HTTP_HOST, prom.HTTP_PORT = saved_module
    finally:
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(directory, ignore_errors=True)


def boot_worker_process() -> None:
    """Run by Dramatiq in each worker process (``dramatiq service.cli:boot_worker_process``):
    redacting logs first, then the process's runtime and its broker, installed, then the actors.

    Dramatiq calls this after the fork and then consumes from ``dramatiq.get_broker()``, the
    broker installed here; nothing is built or installed by importing a module.
    """
    from workers import runtime

    settings = _settings()
    configure_logging(settings)
    broker = runtime.configure(settings).install_broker()
    importlib.import_module("workers.actors")
    if os.environ.get(WORKER_METRICS_FLAG) == "1":
        from dramatiq.middleware.prometheus import Prometheus

        broker.add_middleware(Prometheus())


@app.command()
def scheduler() -> None:
    """The APScheduler process; several may run, one leader emits."""
    settings = _settings()
    settings.require("TOKEN_KEYS")
    settings.key_ring()
    configure_logging(settings)
    _later("scheduler.main", "run", "scheduler")(settings)


# ---- database -------------------------------------------------------------------------------


@app.command()
def migrate() -> None:
    """Alembic ``upgrade head`` on DATABASE_URL."""
    settings = _settings()
    settings.require("DATABASE_URL")
    configure_logging(settings)
    from models.engine import safe_url
    from models.migrate import current_revision, upgrade

    engine = _engine(settings)
    try:
        before = current_revision(engine)
        upgrade(engine)
        after = current_revision(engine)
    finally:
        engine.dispose()
    where = safe_url(settings.database_url)
    if before == after:
        _line("ok", f"{where} already at head ({after})")
    else:
        _line("ok", f"{where} migrated from {before or 'an empty schema'} to {after}")


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json", help="Print the checks as JSON.")) -> None:
    """Check database, broker, keys, scheduler leader, cooldowns and each platform's configuration."""
    from service.doctor import failed, run_checks

    settings = _settings()
    configure_logging(settings)
    checks = run_checks(settings)
    if as_json:
        _print_json([check.as_dict() for check in checks])
    else:
        _print_checks(checks)
    if failed(checks):
        raise typer.Exit(1)


@app.command()
def platforms(as_json: bool = typer.Option(False, "--json", help="Print the list as GET /v1/platforms does.")) -> None:
    """Each platform: configured, or the env vars it still lacks (reads only the settings)."""
    from platforms.registry import platform_statuses
    from service.doctor import check_platforms

    settings = _settings()
    if as_json:
        _print_json([status.as_dict() for status in platform_statuses(settings)])
        return
    checks: list[Check] = []
    check_platforms(settings, checks)
    _print_checks(checks)


def _print_checks(checks: list[Check]) -> None:
    for check in checks:
        _line(check.status, f"{check.name}: {check.detail}")
        for item in check.items:
            out.print(f"    {item}", markup=False)


# ---- accounts -------------------------------------------------------------------------------


def _load_account(engine: Engine, account_id: str) -> dict[str, Any]:
    from sqlmodel import Session

    from models.public import account_public_dict
    from models.tables import SocialAccount

    with Session(engine) as session:
        row = session.get(SocialAccount, account_id)
        if row is None:
            raise InputError(f"no account with id {account_id[:64]!r}", code="not_found")
        return account_public_dict(row)


@accounts_app.command("list")
def accounts_list(
    site: str | None = typer.Option(None, "--site", help="Only this site's accounts."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Connected accounts (never a token)."""
    from sqlmodel import Session, select

    from models.public import account_public_dict
    from models.tables import SocialAccount

    settings = _settings()
    configure_logging(settings)
    engine = _engine(settings)
    try:
        query = select(SocialAccount).order_by(SocialAccount.site_id, SocialAccount.platform, SocialAccount.id)
        if site is not None:
            query = query.where(SocialAccount.site_id == site)
        with Session(engine) as session:
            rows = [account_public_dict(row) for row in session.exec(query)]
    finally:
        engine.dispose()
    if as_json:
        _print_json(rows)
        return
    table = Table("id", "site", "platform", "handle", "status", "health", "expires", "last sync")
    for row in rows:
        cells = (
            row["id"],
            row["site_id"],
            row["platform"],
            row["account_handle"] or row["account_name"] or row["platform_account_id"],
            row["status"],
            row["health_score"],
            row["token_expires_at"] or "never",
            row["last_synced_at"] or "never",
        )
        table.add_row(*(Text(str(cell)) for cell in cells))  # Text: a name is never read as markup
    out.print(table)
    out.print(f"{len(rows)} account(s)")


@accounts_app.command("show")
def accounts_show(
    account_id: str = typer.Argument(..., metavar="ID"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """One account in full (never a token)."""
    settings = _settings()
    configure_logging(settings)
    engine = _engine(settings)
    try:
        account = _load_account(engine, account_id)
    finally:
        engine.dispose()
    if as_json:
        _print_json(account)
        return
    table = Table(show_header=False, box=None)
    for key, value in account.items():
        table.add_row(key, Text("" if value is None else str(value)))
    out.print(table)


def _publish(command: str, function: str, account_id: str, *args: Any) -> None:
    """Check the account exists, then enqueue the message for it."""
    publish = _later("workers.publish", function, f"accounts {command}")
    settings = _settings()
    configure_logging(settings)
    engine = _engine(settings)
    try:
        _load_account(engine, account_id)
    finally:
        engine.dispose()
    message_id = publish(account_id, *args)
    _line("ok", f"{command} of {account_id} enqueued (message {message_id})")


@accounts_app.command("refresh")
def accounts_refresh(account_id: str = typer.Argument(..., metavar="ID")) -> None:
    """Enqueue a token refresh for one account."""
    _publish("refresh", "request_refresh", account_id, "operator")


@accounts_app.command("sync")
def accounts_sync(
    account_id: str | None = typer.Argument(None, metavar="[ID]"),
    every: bool = typer.Option(False, "--all", help="Every account that can sync (not expired or disconnected)."),
    site: str | None = typer.Option(None, "--site", help="With --all: only this site's accounts."),
    batch_size: int = typer.Option(500, "--batch-size", min=1, help="With --all: messages per broker round trip."),
) -> None:
    """Enqueue a stats sync for one account, or for every account with ``--all``."""
    if every == (account_id is not None):
        raise InputError("give either an account ID or --all")
    if site is not None and not every:
        raise InputError("--site only goes with --all")
    if account_id is not None:
        _publish("sync", "request_sync", account_id)
        return
    _sync_all(site, batch_size)


#: statuses a sync would skip anyway (the person must reconnect, or has left)
NOT_SYNCABLE = ("expired", "disconnected")


def _sync_all(site: str | None, batch_size: int) -> None:
    """Enqueue ``sync_account`` for every syncable account, in batches, with a progress bar.

    Ids are read in keyset pages (``id > last``) so a large table is never loaded at once and
    accounts added meanwhile do not shift the pages.
    """
    import sqlalchemy as sa
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from models.tables import SocialAccount
    from workers import messages
    from workers.broker import build_broker
    from workers.bulk import enqueue_many

    settings = _settings()
    configure_logging(settings)
    engine = _engine(settings)
    table = SocialAccount.__table__  # type: ignore[attr-defined]
    where = [table.c.status.not_in(NOT_SYNCABLE)]
    if site is not None:
        where.append(table.c.site_id == site)
    broker = None
    sent = 0
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with engine.connect() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar_one()
        broker = build_broker(settings)
        broker.declare_queue(messages.QUEUE_SYNC)
        with Progress(*columns, console=err) as progress:
            task = progress.add_task("sync_account enqueued", total=total)
            last = ""
            while True:
                with engine.connect() as conn:
                    ids = list(
                        conn.execute(
                            sa.select(table.c.id)
                            .where(*where, table.c.id > last)
                            .order_by(table.c.id)
                            .limit(batch_size)
                        ).scalars()
                    )
                if not ids:
                    break
                batch = (messages.build_message(messages.SYNC_ACCOUNT, account_id=i) for i in ids)
                sent += enqueue_many(broker, batch)
                last = ids[-1]
                progress.update(task, completed=sent, total=max(total, sent))
    finally:
        engine.dispose()
        if broker is not None:
            broker.close()
    where_text = f" of site {site}" if site is not None else ""
    _line("ok", f"sync enqueued for {sent} account(s){where_text}")


@accounts_app.command("disconnect")
def accounts_disconnect(account_id: str = typer.Argument(..., metavar="ID")) -> None:
    """Enqueue a disconnect: revoke at the platform where it can, then remove the account."""
    _publish("disconnect", "request_disconnect", account_id)


@accounts_app.command("purge")
def accounts_purge(account_id: str = typer.Argument(..., metavar="ID")) -> None:
    """Revoke at the platform where it can, then erase the account and every trace of it, now.

    Runs here, not in a worker, through the worker's own functions (``workers.disconnect``). A
    revocation that must wait or be retried is handed to the workers, which erase afterwards.
    """
    purge_at_once = _later("workers.disconnect", "purge_at_once", "accounts purge")
    from workers.runtime import Runtime

    settings = _settings()
    configure_logging(settings)
    rt = Runtime(settings=settings, _engine=_engine(settings))
    try:
        _load_account(rt.engine, account_id)
        outcome, erased = purge_at_once(rt, account_id)
    finally:
        rt.close()
    if outcome == "enqueued":
        _line("info", f"the revocation of {account_id} must wait; a worker revokes, then erases it")
    elif not erased:
        _line("warn", f"{account_id} was reconnected meanwhile; disconnected, not erased ({outcome})")
    elif outcome in ("revoke_failed", "revoke_uncertain"):
        _line("warn", f"{account_id} erased; the revocation failed ({outcome}): revoke it at the platform")
    else:
        _line("ok", f"{account_id} erased ({outcome})")


# ---- keys -----------------------------------------------------------------------------------


@keys_app.command("rotate")
def keys_rotate(
    batch_size: int = typer.Option(200, "--batch-size", min=1, help="Rows re-encrypted per transaction."),
) -> None:
    """Re-encrypt every stored secret under the newest key of TOKEN_KEYS, with progress."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    from models.crypto import KeyRing

    settings = _settings()
    ring = KeyRing.from_settings(settings)
    configure_logging(settings)
    rotate_keys = _later("models.keys", "rotate_keys", "keys rotate")
    engine = _engine(settings)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=err) as progress:
            tasks: dict[str, TaskID] = {}

            def report(table: str, done: int, total: int) -> None:
                if table not in tasks:
                    tasks[table] = progress.add_task(f"{table} → {ring.current_kid}", total=total)
                progress.update(tasks[table], completed=done, total=total)

            counts = rotate_keys(engine, ring, batch_size=batch_size, progress=report)
    finally:
        engine.dispose()
    _line("ok", f"key rotation to {ring.current_kid} done: {_describe_counts(counts)}")


# ---- events and webhooks ----------------------------------------------------------------------


def _event_line(event: dict[str, Any]) -> str:
    data = event["data"]
    who = data.get("account_id") or f"attempt {data.get('attempt_id')}"
    change = f" {data['status_from']} → {data['status_to']}" if data.get("status_from") else ""
    code = f" ({data['error_code']})" if data.get("error_code") else ""
    return f"{event['cursor']:>8}  {event['timestamp']}  {event['type']:<24} {data['platform']} {who}{change}{code}"


@events_app.command("tail")
def events_tail(
    after: int | None = typer.Option(None, "--after", min=0, help="Start after this cursor (default: the last 10)."),
    follow: bool = typer.Option(True, "--follow/--no-follow", help="Keep printing new events as they come."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    every: float = typer.Option(1.0, "--every", min=0.1, help="Seconds between two looks when following."),
) -> None:
    """Print the public events in order, and follow them (Ctrl-C stops)."""
    from models import outbox

    settings = _settings()
    engine = _engine(settings)
    try:
        cursor = after if after is not None else max(0, outbox.last_cursor(engine) - 10)
        while True:
            for event in outbox.list_events(engine, after=cursor, limit=500):
                typer.echo(json.dumps(event) if as_json else _event_line(event))
                cursor = int(event["cursor"])
            if not follow:
                return
            time.sleep(every)
    except KeyboardInterrupt:
        return
    finally:
        engine.dispose()


def _endpoint_row(endpoint: Any, failing: bool) -> dict[str, Any]:
    state = "disabled" if endpoint.disabled_at else ("failing" if failing else "ok")
    return {
        "id": endpoint.id,
        "url": endpoint.url,
        "source": endpoint.source,
        "state": state,
        "event_types": endpoint.event_types,
        "site_ids": endpoint.site_ids,
        "disabled_reason": endpoint.disabled_reason,
        "failing_since": endpoint.failing_since,
        "last_success_at": endpoint.last_success_at,
    }


@webhooks_app.command("add")
def webhooks_add(
    url: str = typer.Argument(..., metavar="URL"),
    types: list[str] = typer.Option([], "--type", help="Only this event type (repeatable; default: all)."),
    sites: list[str] = typer.Option([], "--site", help="Only this site's events (repeatable; default: all)."),
) -> None:
    """Add a webhook endpoint (or change its filters and enable it again)."""
    from models import outbox
    from platforms.netguard import NetGuard
    from social_accounts.clock import utcnow

    unknown = sorted(set(types) - set(outbox.EVENT_TYPES))
    if unknown:
        raise InputError(f"unknown event type {unknown[0]} (one of: {', '.join(outbox.EVENT_TYPES)})")
    settings = _settings()
    NetGuard(allow_private=settings.allow_private_network, platform="webhook").check_url(url)
    engine = _engine(settings)
    try:
        endpoint = outbox.add_endpoint(engine, url, event_types=types, site_ids=sites, now=utcnow())
    finally:
        engine.dispose()
    _line("ok", f"webhook endpoint {endpoint.id} added: {endpoint.url}")


@webhooks_app.command("list")
def webhooks_list(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Every endpoint (WEBHOOK_URLS and added ones): ok, failing or disabled."""
    from datetime import timedelta

    from models import outbox
    from social_accounts.clock import utcnow

    settings = _settings()
    engine = _engine(settings)
    try:
        endpoints = outbox.list_endpoints(engine, settings.webhook_url_list)
    finally:
        engine.dispose()
    after, now = timedelta(seconds=settings.webhook_failing_after_seconds), utcnow()
    rows = [_endpoint_row(e, e.failing(now, after)) for e in endpoints]
    if as_json:
        _print_json(rows)
        return
    for row in rows:
        status = {"ok": "ok", "failing": "fail", "disabled": "warn"}[row["state"]]
        filters = " ".join([*(f"type={t}" for t in row["event_types"]), *(f"site={s}" for s in row["site_ids"])])
        _line(status, f"{row['id']}  {row['url']}  {row['state']} ({row['source']}) {filters}".rstrip())


@webhooks_app.command("remove")
def webhooks_remove(ref: str = typer.Argument(..., metavar="ID|URL")) -> None:
    """Remove an added endpoint; its pending deliveries are dropped."""
    from models import outbox

    engine = _engine(_settings())
    try:
        removed = outbox.remove_endpoint(engine, ref)
    finally:
        engine.dispose()
    if not removed:
        raise InputError(f"no webhook endpoint {ref}")
    _line("ok", f"webhook endpoint {ref} removed")


def _since(value: str) -> datetime:
    """An ISO 8601 time, or a duration back from now: ``90s``, ``15m``, ``2h``, ``3d``."""
    from datetime import UTC, timedelta

    from social_accounts.clock import utcnow

    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = value.strip()
    if text[:-1].isdigit() and text[-1:] in units:
        return utcnow() - timedelta(seconds=int(text[:-1]) * units[text[-1]])
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InputError("--since takes an ISO 8601 time or a duration such as 2h or 3d") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@webhooks_app.command("redeliver")
def webhooks_redeliver(
    since: str = typer.Option(..., "--since", help="ISO 8601 time, or a duration back from now (2h, 3d)."),
) -> None:
    """Send every event since then again to every enabled endpoint (same webhook-id)."""
    from models import outbox
    from social_accounts.clock import utcnow
    from workers.events import enqueue_deliveries
    from workers.runtime import Runtime

    settings = _settings()
    start = _since(since)
    engine = _engine(settings)
    rt = Runtime(settings=settings, _engine=engine)
    try:
        ids = outbox.redeliver(engine, since=start, urls=settings.webhook_url_list, now=utcnow())
        enqueue_deliveries(rt.broker, ids)
    finally:
        client = getattr(rt.broker, "client", None)  # Dramatiq's RedisBroker.close leaves its pool open
        rt.close()
        if client is not None:
            client.connection_pool.disconnect()
    _line("ok", f"{len(ids)} deliveries enqueued (events since {start.isoformat()})")


def _describe_counts(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    if not total:
        return "every stored value was already under it"
    changed = ", ".join(f"{key} {value}" for key, value in counts.items() if value)
    return f"{total} value(s) re-encrypted ({changed})"


# ---- entry point ----------------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(redact(text).split())


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; every error is one line on stderr and a non-zero exit code."""
    try:
        result = app(args=argv, prog_name="social-accounts", standalone_mode=False)
    except SocialAccountsError as exc:
        typer.echo(f"error: {_one_line(str(exc))}", err=True)
        return 1
    except typer.TyperException as exc:  # usage errors (Typer's Click exceptions), shown as Typer shows them
        rich_utils.rich_format_error(exc)  # type: ignore[arg-type]  # annotated with Typer's vendored Click class
        return exc.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 130
    except Exception as exc:  # the promise: one line, no traceback, nothing secret
        log.debug("unexpected error", exc_info=True)
        first = next((line for line in str(exc).splitlines() if line.strip()), "")
        typer.echo(f"error: {type(exc).__name__}: {_one_line(first)[:300]}", err=True)
        return 1
    return result if isinstance(result, int) else 0
