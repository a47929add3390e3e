"""`social-accounts doctor`: is this deployment able to work, and if not, what is wrong?

Each check returns :class:`Check` rows instead of printing, so the CLI can render them as
✔/✘ lines or as JSON, and tests can assert on them. A check never raises: whatever goes wrong
becomes a failed row with one readable line (redacted, like every log line).

Statuses: ``ok`` and ``fail`` are verdicts (any ``fail`` makes the command exit non-zero);
``warn`` is something an operator should act on that does not stop the service (key rotation
pending, no scheduler leader right now); ``info`` is plain information (a platform that is not
configured, an active cooldown).

Run beside a ``social-accounts run`` (same working directory), the doctor checks that instance:
the same settings (``.env`` and the secrets file ``run`` generated, which every entry point reads),
the broker ``run`` uses (in-process unless BROKER_URL says otherwise: no Redis to check then), and
its embedded scheduler as the leader. ``service.instance`` is how it knows one is running.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from social_accounts.errors import ConfigError, SocialAccountsError
from social_accounts.logs import redact
from social_accounts.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from service.instance import Instance

__all__ = ["Check", "failed", "run_checks", "safe_url"]

Status = Literal["ok", "fail", "warn", "info"]


@dataclass
class Check:
    name: str
    status: Status
    detail: str
    items: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def safe_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for display)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _failure(name: str, exc: BaseException) -> Check:
    if isinstance(exc, SocialAccountsError):
        return Check(name, "fail", redact(str(exc)))
    first = next((line for line in str(exc).splitlines() if line.strip()), "")
    return Check(name, "fail", redact(f"{type(exc).__name__}: {first}"[:300]))


@contextlib.contextmanager
def _guard(name: str, out: list[Check]) -> Iterator[None]:
    """Turn any exception inside the block into one failed row."""
    try:
        yield
    except Exception as exc:  # the doctor reports, it never crashes
        out.append(_failure(name, exc))


# ---- database and keys ----------------------------------------------------------------------


def check_database(settings: Settings, out: list[Check]) -> Engine | None:
    """Connect, then compare the schema revision with the newest migration shipped.

    Returns the engine when the schema is at head, so the keys check can scan it.
    """
    from models.engine import check_database as ping
    from models.engine import make_engine
    from models.migrate import current_revision, head_revision

    engine = None
    with _guard("database", out):
        missing = _missing_sqlite_file(settings.database_url)
        if missing:  # connecting would create an empty file: say what is wrong instead
            out.append(Check("database", "fail", f"{missing} does not exist: run `social-accounts migrate`"))
            return None
        engine = make_engine(
            settings.database_url, pool_size=1, max_overflow=0, prepare_threshold=settings.database_prepare_threshold
        )
        ping(engine)
        current, head = current_revision(engine), head_revision()
        where = safe_url(settings.database_url)
        if current is None:
            out.append(Check("database", "fail", f"{where} answers but has no schema: run `social-accounts migrate`"))
        elif current != head:
            out.append(
                Check(
                    "database",
                    "fail",
                    f"{where} is at {current}, the code expects {head}: run `social-accounts migrate`",
                )
            )
        else:
            out.append(Check("database", "ok", f"{where} answers, schema at head ({head})"))
            return engine
    if engine is not None:
        engine.dispose()
    return None


def _missing_sqlite_file(url: str) -> str | None:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    path = parsed.database
    if parsed.get_backend_name() != "sqlite" or not path or path == ":memory:" or path.startswith("file:"):
        return None
    return None if Path(path).exists() else path


def _stored_kids(engine: Engine) -> tuple[collections.Counter[str], int]:
    """How many stored ciphertexts name each key id, and how many are not ciphertexts at all."""
    import sqlalchemy as sa

    from models.crypto import KeyRing
    from models.tables import ENCRYPTED_COLUMNS
    from social_accounts.errors import DecryptError

    kids: collections.Counter[str] = collections.Counter()
    unreadable = 0
    with engine.connect() as conn:
        for table, columns in ENCRYPTED_COLUMNS.items():
            for column in columns:
                # only the prefix is needed: "v1:<kid>:" with a kid of at most 32 characters
                query = sa.text(f"SELECT substr({column}, 1, 40) FROM {table} WHERE {column} IS NOT NULL")
                for (prefix,) in conn.execution_options(stream_results=True).execute(query):
                    try:
                        kids[KeyRing.kid_of(prefix)] += 1
                    except DecryptError:
                        unreadable += 1
    return kids, unreadable


def check_keys(settings: Settings, engine: Engine | None, out: list[Check]) -> None:
    """TOKEN_KEYS parses; every stored ciphertext names a key of the ring; say if rotation is pending."""
    from models.crypto import KeyRing

    with _guard("keys", out):
        ring = KeyRing.from_settings(settings)
        summary = f"TOKEN_KEYS holds {len(ring.kids)} key(s), {ring.current_kid} encrypts"
        if engine is None:
            out.append(Check("keys", "ok", f"{summary}; stored values not checked (database unavailable)"))
            return
        kids, unreadable = _stored_kids(engine)
        unknown = {kid: n for kid, n in kids.items() if kid not in ring.kids}
        old = {kid: n for kid, n in kids.items() if kid in ring.kids and kid != ring.current_kid}
        total = sum(kids.values()) + unreadable
        if unknown or unreadable:
            items = [f"{n} value(s) under key {kid!r}, which TOKEN_KEYS does not hold" for kid, n in unknown.items()]
            if unreadable:
                items.append(f"{unreadable} value(s) that are not ciphertexts")
            out.append(Check("keys", "fail", f"{summary}; some stored values cannot be decrypted", items))
        elif old:
            items = [f"{n} value(s) under older key {kid!r}" for kid, n in sorted(old.items())]
            out.append(
                Check(
                    "keys",
                    "warn",
                    f"{summary}; rotation pending for {sum(old.values())} of {total} stored value(s): "
                    "run `social-accounts keys rotate`",
                    items,
                )
            )
        else:
            out.append(Check("keys", "ok", f"{summary}; all {total} stored value(s) under {ring.current_kid}"))


# ---- broker, leader, cooldowns --------------------------------------------------------------


def _redis_client(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3, decode_responses=True)


def _is_redis(url: str) -> bool:
    return url.startswith(("redis://", "rediss://", "unix://"))


def _run_name(instance: Instance) -> str:
    return f"`social-accounts run` (pid {instance.pid})"


def check_instance(settings: Settings, instance: Instance | None, out: list[Check]) -> None:
    """The ``run`` serving from this directory, and whether these settings are the ones it uses."""
    if instance is None:
        return
    detail = f"{_run_name(instance)} serving {instance.public_url} since {instance.started_at}"
    mine = (safe_url(settings.database_url), safe_url(settings.effective_broker_url))
    if mine != (instance.database, instance.broker):
        out.append(
            Check(
                "instance",
                "warn",
                f"{detail}, on {instance.database} and {instance.broker}; these settings name "
                f"{mine[0]} and {mine[1]}: run the doctor with the environment `run` was started with",
            )
        )
    else:
        out.append(Check("instance", "ok", detail))


def check_broker(settings: Settings, out: list[Check], instance: Instance | None = None) -> None:
    url = settings.effective_broker_url
    with _guard("broker", out):
        if _is_redis(url):
            import redis

            client = _redis_client(url)
            try:
                client.ping()
                try:
                    policy = client.config_get("maxmemory-policy").get("maxmemory-policy")
                except redis.ResponseError:  # managed Redis that forbids CONFIG: reachable is enough
                    policy = None
            finally:
                client.close()
            detail = f"Redis {safe_url(url)} answers"
            if policy and policy != "noeviction":
                out.append(
                    Check("broker", "warn", f"{detail}, but maxmemory-policy is {policy}: messages can be evicted")
                )
            else:
                out.append(Check("broker", "ok", detail))
        elif url.startswith(("amqp://", "amqps://")):
            import pika

            params = pika.URLParameters(url)
            params.connection_attempts = 1
            params.socket_timeout = 3
            connection = pika.BlockingConnection(params)
            connection.close()
            out.append(Check("broker", "ok", f"RabbitMQ {safe_url(url)} answers"))
        elif url.startswith("memory://") and instance is not None:
            out.append(Check("broker", "ok", f"in-process broker (memory://) of {_run_name(instance)}"))
        elif url.startswith("memory://"):
            out.append(Check("broker", "ok", "in-process broker (memory://): only for `social-accounts run`"))
        else:
            out.append(Check("broker", "fail", f"BROKER_URL {safe_url(url)}: expected redis://, amqp:// or memory://"))


def _format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def check_redis_state(settings: Settings, out: list[Check], instance: Instance | None = None) -> None:
    """The scheduler leader and the platform cooldowns, both kept in Redis (REDIS_URL or BROKER_URL);
    without Redis, a running ``run`` leads alone and keeps its cooldowns in its memory."""
    url = settings.coordination_redis_url
    if url is None and instance is not None:
        out.append(Check("scheduler leader", "ok", f"the embedded scheduler of {_run_name(instance)}"))
        out.append(Check("cooldowns", "info", f"kept in the memory of {_run_name(instance)}: not visible from here"))
        return
    if url is None:
        out.append(Check("scheduler leader", "info", "not tracked without Redis (set REDIS_URL)"))
        out.append(Check("cooldowns", "info", "not tracked without Redis (set REDIS_URL)"))
        return
    ns = settings.redis_namespace
    client = _redis_client(url)
    try:
        with _guard("scheduler leader", out):
            from scheduler.leader import leader_key

            key = leader_key(ns)
            holder = client.get(key)
            if holder:
                ttl = client.pttl(key)
                left = f" (lease {_format_seconds(ttl / 1000)} left)" if ttl and ttl > 0 else ""
                out.append(Check("scheduler leader", "ok", f"{redact(str(holder))}{left}"))
            else:
                out.append(Check("scheduler leader", "warn", "none: no scheduler is emitting jobs right now"))
        with _guard("cooldowns", out):
            from workers.cooldowns import active_cooldowns

            items = [
                f"{c.platform} ({c.scope}): {_format_seconds(c.seconds_left)} left, {redact(c.reason)}"
                for c in active_cooldowns(client, ns)
            ]
            out.append(Check("cooldowns", "info", f"{len(items)} active" if items else "none", items))
    finally:
        client.close()


# ---- platforms ------------------------------------------------------------------------------


def check_platforms(settings: Settings, out: list[Check]) -> None:
    """Each platform configured, or the env vars it lacks (informational, never a failure)."""
    from platforms.registry import platform_statuses

    with _guard("platforms", out):
        for status in platform_statuses(settings):
            if status.configured:
                out.append(Check(f"platform {status.platform}", "ok", "configured"))
            else:
                missing = ", ".join(status.missing_env)
                out.append(Check(f"platform {status.platform}", "info", f"not configured: set {missing}"))


def check_bluesky_oauth(settings: Settings, out: list[Check]) -> None:
    """What "Sign in with Bluesky" (AT Protocol OAuth) still needs: an https PUBLIC_URL and
    BLUESKY_OAUTH_KEYS for the confidential client; a loopback PUBLIC_URL uses the development
    client, which only works on this machine (README, "Bluesky by OAuth")."""
    from platforms.bluesky_oauth import ClientIdentity

    name = "bluesky oauth"
    with _guard(name, out):
        client = ClientIdentity(settings)
        if client.loopback:
            out.append(
                Check(
                    name,
                    "info",
                    "loopback development client (PUBLIC_URL is loopback): sign-in works on this machine only; "
                    "set an https PUBLIC_URL and BLUESKY_OAUTH_KEYS for production",
                )
            )
            return
        if missing := client.missing():
            out.append(Check(name, "info", f"not configured: set {', '.join(missing)}", missing))
            return
        keys = client.keys  # ConfigError (a malformed key) becomes a failed row
        detail = f"client {client.client_id}; signing key {keys[0].kid}, {len(keys)} key(s) published"
        out.append(Check(name, "ok", detail, [client.metadata_url, client.public_url + "/oauth/bluesky/jwks.json"]))


def check_api_versions(settings: Settings, out: list[Check], today: date | None = None) -> None:
    """META_GRAPH_VERSION near its published expiry, LINKEDIN_API_VERSION unpublished or over a
    year old (``platforms/versions.py`` holds the published tables and their sources)."""
    from platforms.versions import graph_version_warning, linkedin_version_warning
    from social_accounts.clock import utcnow

    with _guard("api versions", out):
        day = today or utcnow().date()
        items = [
            warning
            for warning in (
                graph_version_warning(settings.meta_graph_version, day),
                linkedin_version_warning(settings.linkedin_api_version, day),
            )
            if warning
        ]
        if items:
            out.append(Check("api versions", "warn", f"{len(items)} API version setting(s) need attention", items))
        else:
            detail = f"Graph API {settings.meta_graph_version}, LinkedIn-Version {settings.linkedin_api_version}"
            out.append(Check("api versions", "ok", detail))


# ---- all of it ------------------------------------------------------------------------------


def check_webhooks(settings: Settings, engine: Engine | None, out: list[Check]) -> None:
    """Webhook endpoints: how many, which have failed for WEBHOOK_FAILING_AFTER_SECONDS (warn)
    or were disabled by a 410, and the outbox backlog."""
    from datetime import timedelta

    from models import outbox
    from social_accounts.clock import utcnow

    if engine is None:
        return
    try:
        settings.webhook_keys()
    except ConfigError as exc:
        out.append(Check("webhooks", "fail", str(exc)))
        return
    with _guard("webhooks", out):
        endpoints = outbox.list_endpoints(engine, settings.webhook_url_list)
        backlog = outbox.unpublished_count(engine)
        if not endpoints:
            out.append(
                Check("webhooks", "info", f"no endpoint (WEBHOOK_URLS or `webhooks add`); outbox backlog {backlog}")
            )
            return
        after, now = timedelta(seconds=settings.webhook_failing_after_seconds), utcnow()
        failing = [e for e in endpoints if e.disabled_at is None and e.failing(now, after)]
        disabled = [e for e in endpoints if e.disabled_at is not None]
        items = [f"failing since {e.failing_since}: {safe_url(e.url)}" for e in failing]
        items += [f"disabled ({e.disabled_reason}): {safe_url(e.url)}" for e in disabled]
        if not settings.webhook_keys():
            items.append("WEBHOOK_SECRETS is empty: deliveries go out unsigned")
        detail = (
            f"{len(endpoints)} endpoint(s), {len(failing)} failing, {len(disabled)} disabled; outbox backlog {backlog}"
        )
        out.append(Check("webhooks", "warn" if items else "ok", detail, items))


def run_checks(settings: Settings) -> list[Check]:
    """Every check, in the order an operator reads them; of the ``run`` beside, when one is."""
    from service.embedded import run_settings
    from service.instance import running

    out: list[Check] = []
    instance = running()
    if instance is not None:
        settings = run_settings(settings)
        check_instance(settings, instance, out)
    engine = check_database(settings, out)
    try:
        check_keys(settings, engine, out)
        check_webhooks(settings, engine, out)
    finally:
        if engine is not None:
            engine.dispose()
    check_broker(settings, out, instance)
    with _guard("redis", out):
        check_redis_state(settings, out, instance)
    check_platforms(settings, out)
    check_bluesky_oauth(settings, out)
    check_api_versions(settings, out)
    return out


def failed(checks: list[Check]) -> bool:
    return any(check.status == "fail" for check in checks)
