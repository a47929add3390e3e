"""One settings object, read from the environment, a ``.env`` file and the secrets ``run`` generates.

Every entry point (``run``, ``web``, ``worker``, ``scheduler``, ``doctor``...) reads the same
three sources, in this order of precedence: the environment, ``.env``, then
``.social-accounts/secrets.env`` (written once by ``run``), all relative to the working directory.
Names are the environment variables the README documents. ``get_settings()`` caches one
instance per process; tests build their own ``Settings(...)`` and pass it in (every component
takes settings as an argument).
"""

from __future__ import annotations

import base64
import binascii
import functools
import math
import os
import secrets
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from social_accounts.errors import ConfigError

__all__ = [
    "GENERATED_SECRETS",
    "LOCAL_SECRETS_FILE",
    "LOCAL_STATE_DIR",
    "MAX_HTTP_TIMEOUT_SECONDS",
    "OAUTH_PLATFORMS",
    "PLATFORMS",
    "Settings",
    "get_settings",
    "new_signing_key",
    "parse_key_ring",
    "parse_webhook_secrets",
]

#: every platform id, in the order the dashboard shows them
PLATFORMS = (
    "facebook",
    "instagram",
    "instagram_login",
    "twitter",
    "linkedin",
    "tiktok",
    "youtube",
    "pinterest",
    "threads",
    "bluesky",
    "mastodon",
)
#: platforms whose endpoints can be overridden with P_AUTHORIZE_URL / P_TOKEN_URL / P_API_URL / P_REVOKE_URL
OAUTH_PLATFORMS = tuple(p for p in PLATFORMS if p not in ("bluesky", "mastodon"))
ENDPOINT_KINDS = ("authorize_url", "token_url", "api_url", "revoke_url")

#: the longest HTTP_TIMEOUT_SECONDS accepted: the connect and refresh messages that make platform
#: calls run for 2 minutes at most, and the refresh lock (4 x the timeout + 20 s, so that it
#: outlives every call made under it) is also how long a worker that dies holding it blocks the
#: account's refreshes
MAX_HTTP_TIMEOUT_SECONDS = 120.0

#: the secrets `run` generates once when they are missing
GENERATED_SECRETS = ("API_TOKEN", "STATE_SECRET", "TOKEN_KEYS", "BLUESKY_OAUTH_KEYS")
#: what `run` keeps in the working directory: its generated secrets and its instance file
LOCAL_STATE_DIR = Path(".social-accounts")
#: where `run` keeps the secrets it generated (mode 0600); read by every entry point
LOCAL_SECRETS_FILE = LOCAL_STATE_DIR / "secrets.env"


class Settings(BaseSettings):
    """Every environment variable of the contract (plus a few operational knobs)."""

    # later files win: a value in .env is never shadowed by a generated one
    model_config = SettingsConfigDict(env_file=(LOCAL_SECRETS_FILE, ".env"), extra="ignore", case_sensitive=False)

    database_url: str = "sqlite:///social_accounts.db"
    #: PostgreSQL: executions of a statement on one connection before psycopg prepares it on the
    #: server (psycopg's default, 5); 0 prepares at once, ``off`` never (PgBouncer in transaction
    #: mode older than 1.21, or without ``max_prepared_statements``)
    database_prepare_threshold: int | None = Field(5, ge=0)
    broker_url: str | None = None  # None: redis://127.0.0.1:6379/0, or memory:// under `run`
    #: Redis for locks, cooldowns and the scheduler leader; defaults to BROKER_URL when that is Redis
    redis_url: str | None = None
    public_url: str = "http://127.0.0.1:8000"
    api_token: str | None = None
    state_secret: str | None = None
    token_keys: str | None = None
    return_to_allowed: str | None = None
    allow_private_network: bool = False
    refresh_scan_seconds: int = Field(60, ge=1)
    sync_every_seconds: int = Field(21600, ge=1)
    health_every_seconds: int = Field(900, ge=1)
    host: str = "127.0.0.1"
    port: int = 8000
    log_format: str = "text"
    log_level: str = "INFO"
    redis_namespace: str = "social-accounts"
    #: `worker`: Prometheus exposition of every worker process (Dramatiq's middleware); 0 turns it off
    worker_metrics_port: int = Field(9191, ge=0, le=65535)
    #: loopback by default: metrics name platforms and queues, not for the open internet
    worker_metrics_host: str = "127.0.0.1"
    #: the one Graph API version of every Meta call (platforms/versions.py: expiry dates, doctor warns)
    meta_graph_version: str = "v27.0"
    #: LinkedIn-Version header of /rest calls (YYYYMM, a published one); sunset after about a year
    linkedin_api_version: str = "202607"
    #: LinkedIn scopes, space-separated; add r_member_profileAnalytics for member follower counts
    linkedin_scopes: str = "openid profile email w_member_social"
    #: read and write timeout of every platform call (connect: at most 3 s); 0 < value <= 120
    http_timeout_seconds: float = 10.0
    #: a connect attempt still pending after this long (lost message, Redis restart) ends as failed/timeout
    attempt_timeout_seconds: int = Field(1800, ge=10)
    #: how far a claim pushes next_refresh_at / next_sync_at: the message's lease before it is due again
    refresh_lease_seconds: int = Field(300, ge=5)
    #: how often the reconciler looks for stuck attempts and lost refreshes
    reconcile_every_seconds: int = Field(60, ge=1)
    #: how often expired states and old attempts are removed
    cleanup_every_seconds: int = Field(3600, ge=1)
    #: finished attempts are kept this long for the dashboard and support
    attempt_retention_days: int = Field(30, ge=1)
    #: a disconnected account (no tokens) is kept this long, so a reconnect finds its history;
    #: then its row and events are erased (``accounts purge`` erases at once)
    disconnected_retention_days: int = Field(30, ge=0)
    #: an account turns `error` only after this many failures in a row ...
    error_after_failures: int = Field(3, ge=1)
    #: ... that span at least this many seconds (a blip never marks an account as failing)
    error_after_seconds: int = Field(3600, ge=0)
    #: the scheduler leader lock expires this long after its holder stops extending it
    leader_ttl_seconds: float = Field(10.0, ge=1)
    #: webhook receivers, comma-separated (more can be added with ``social-accounts webhooks add``)
    webhook_urls: str | None = None
    #: ``whsec_<base64>`` secrets, comma-separated: the first signs, every one is a valid signature
    webhook_secrets: str | None = None
    #: an endpoint whose deliveries keep failing this long is marked failing (doctor, page, metrics)
    webhook_failing_after_seconds: int = Field(86400, ge=1)
    #: how often the scheduler publishes outbox rows a crash left behind and re-sends lost deliveries
    events_sweep_seconds: int = Field(10, ge=1)
    #: also put every event on the broker's queue ``events``; off by default, since a queue that
    #: no module consumes only grows (Redis keeps every message until it is read)
    events_on_broker: bool = False
    #: the built-in demo platform (``social-accounts run --demo`` sets it; off everywhere else)
    demo_enabled: bool = False

    meta_app_id: str | None = None
    meta_app_secret: str | None = None
    #: the Instagram app of "Instagram API with Instagram Login" (platform ``instagram_login``)
    instagram_app_id: str | None = None
    instagram_app_secret: str | None = None
    threads_app_id: str | None = None
    threads_app_secret: str | None = None
    twitter_client_id: str | None = None
    twitter_client_secret: str | None = None
    linkedin_client_id: str | None = None
    linkedin_client_secret: str | None = None
    tiktok_client_key: str | None = None
    tiktok_client_secret: str | None = None
    google_client_id: str | None = None
    google_client_secret: str | None = None
    pinterest_app_id: str | None = None
    pinterest_app_secret: str | None = None

    bluesky_service_url: str = "https://bsky.social"
    bluesky_plc_url: str = "https://plc.directory"
    #: AT Protocol OAuth client signing keys ``kid:base64url(P-256 private scalar)``, comma-separated;
    #: the first signs client assertions, all are published in the JWKS (rotation, as TOKEN_KEYS)
    bluesky_oauth_keys: str | None = None
    #: the scopes the Bluesky OAuth client asks for (space-separated)
    bluesky_oauth_scope: str = "atproto transition:generic"

    facebook_authorize_url: str | None = None
    facebook_token_url: str | None = None
    facebook_api_url: str | None = None
    facebook_revoke_url: str | None = None
    instagram_authorize_url: str | None = None
    instagram_token_url: str | None = None
    instagram_api_url: str | None = None
    instagram_revoke_url: str | None = None
    instagram_login_authorize_url: str | None = None
    instagram_login_token_url: str | None = None
    instagram_login_api_url: str | None = None
    instagram_login_revoke_url: str | None = None
    twitter_authorize_url: str | None = None
    twitter_token_url: str | None = None
    twitter_api_url: str | None = None
    twitter_revoke_url: str | None = None
    linkedin_authorize_url: str | None = None
    linkedin_token_url: str | None = None
    linkedin_api_url: str | None = None
    linkedin_revoke_url: str | None = None
    tiktok_authorize_url: str | None = None
    tiktok_token_url: str | None = None
    tiktok_api_url: str | None = None
    tiktok_revoke_url: str | None = None
    youtube_authorize_url: str | None = None
    youtube_token_url: str | None = None
    youtube_api_url: str | None = None
    youtube_revoke_url: str | None = None
    pinterest_authorize_url: str | None = None
    pinterest_token_url: str | None = None
    pinterest_api_url: str | None = None
    pinterest_revoke_url: str | None = None
    threads_authorize_url: str | None = None
    threads_token_url: str | None = None
    threads_api_url: str | None = None
    threads_revoke_url: str | None = None

    @field_validator("database_prepare_threshold", mode="before")
    @classmethod
    def _prepare_off(cls, value: object) -> object:
        """``off`` (or ``none``, or empty) turns server-side prepared statements off (``None``)."""
        if isinstance(value, str) and value.strip().lower() in {"off", "none", ""}:
            return None
        return value

    @field_validator("http_timeout_seconds")
    @classmethod
    def _bounded_http_timeout(cls, value: float) -> float:
        """A timeout the refresh lock's TTL can be derived from (``workers.coordination``): a
        number of seconds, above 0 (0 turns sockets non-blocking), finite and not absurd (an
        infinite one makes the lock's TTL impossible to set in Redis)."""
        if not (math.isfinite(value) and 0 < value <= MAX_HTTP_TIMEOUT_SECONDS):
            raise ValueError(
                f"HTTP_TIMEOUT_SECONDS must be more than 0 and at most {MAX_HTTP_TIMEOUT_SECONDS:g} seconds "
                f"(got {value!r}); the refresh lock is held 4 x this + 20 s so that it outlives every "
                "platform call made under it"
            )
        return value

    # ---- derived values -------------------------------------------------------------------

    def endpoint(self, platform: str, kind: str) -> str | None:
        """The override for ``P_<KIND>`` (``kind`` in authorize_url/token_url/api_url/revoke_url)."""
        if kind not in ENDPOINT_KINDS:
            raise ValueError(f"unknown endpoint kind {kind!r}")
        value = getattr(self, f"{platform}_{kind}", None)
        return value or None

    @property
    def redirect_uri(self) -> str:
        return self.public_url.rstrip("/") + "/oauth/callback"

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or "redis://127.0.0.1:6379/0"

    @property
    def coordination_redis_url(self) -> str | None:
        """Where locks and cooldowns live: REDIS_URL, else a Redis BROKER_URL, else nowhere (one process)."""
        if self.redis_url:
            return self.redis_url
        broker = self.effective_broker_url
        return broker if broker.startswith(("redis://", "rediss://", "unix://")) else None

    @property
    def allowed_return_origins(self) -> list[str]:
        raw = self.return_to_allowed or _origin(self.public_url)
        return [_origin(item.strip()) for item in raw.split(",") if item.strip()]

    def require(self, *names: str) -> None:
        """Fail with one line naming the first required variable that is missing."""
        for name in names:
            if not getattr(self, name.lower(), None):
                raise ConfigError(f"{name} is required but not set (see .env.example)")

    @property
    def webhook_url_list(self) -> list[str]:
        return [u.strip() for u in (self.webhook_urls or "").split(",") if u.strip()]

    def webhook_keys(self) -> list[bytes]:
        """``WEBHOOK_SECRETS`` decoded, signing key first (:func:`parse_webhook_secrets`)."""
        return parse_webhook_secrets(self.webhook_secrets)

    def key_ring(self) -> list[tuple[str, bytes]]:
        """TOKEN_KEYS parsed into ``[(kid, key)]``, newest (encrypting) key first."""
        self.require("TOKEN_KEYS")
        assert self.token_keys is not None
        return parse_key_ring(self.token_keys)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        raise ConfigError(f"not an absolute URL: {url!r}")
    return f"{parts.scheme}://{parts.netloc}".lower()


def parse_webhook_secrets(raw: str | None) -> list[bytes]:
    """``whsec_<base64>`` keys, comma-separated (Standard Webhooks); the first signs.

    Raises:
      ConfigError: an entry without the prefix, not base64, or shorter than 24 bytes (never echoed).
    """
    keys = []
    for item in (raw or "").split(","):
        item = item.strip()
        if not item:
            continue
        if not item.startswith("whsec_"):
            raise ConfigError("WEBHOOK_SECRETS entries must start with whsec_ (Standard Webhooks secrets)")
        try:
            key = base64.b64decode(item[len("whsec_") :], validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError("a WEBHOOK_SECRETS entry is not valid base64 after whsec_") from None
        if len(key) < 24:
            raise ConfigError("a WEBHOOK_SECRETS key must be at least 24 bytes")
        keys.append(key)
    return keys


def parse_key_ring(raw: str) -> list[tuple[str, bytes]]:
    """Parse ``kid:base64key,kid:base64key``. Each key must be 32 bytes (AES-256)."""
    ring: list[tuple[str, bytes]] = []
    seen: set[str] = set()
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        kid, sep, encoded = item.partition(":")
        kid = kid.strip()
        if not sep or not kid or not encoded.strip():
            raise ConfigError("TOKEN_KEYS is malformed: expected kid:base64key[,kid:base64key...]")
        if not kid.replace("-", "").replace("_", "").isalnum() or len(kid) > 32:
            raise ConfigError(f"TOKEN_KEYS key id {kid!r} must be letters, digits, - or _ (at most 32)")
        if kid in seen:
            raise ConfigError(f"TOKEN_KEYS names key id {kid!r} twice")
        try:
            key = base64.urlsafe_b64decode(encoded.strip() + "=" * (-len(encoded.strip()) % 4))
        except (binascii.Error, ValueError):
            raise ConfigError(f"TOKEN_KEYS key {kid!r} is not valid base64") from None
        if len(key) != 32:
            raise ConfigError(f"TOKEN_KEYS key {kid!r} is {len(key)} bytes; it must be 32 (AES-256)")
        seen.add(kid)
        ring.append((kid, key))
    if not ring:
        raise ConfigError("TOKEN_KEYS is empty: expected kid:base64key")
    return ring


def new_token_key(kid: str = "k1") -> str:
    """A fresh ``kid:base64key`` entry for TOKEN_KEYS."""
    return f"{kid}:{base64.urlsafe_b64encode(os.urandom(32)).decode()}"


def new_signing_key(kid: str | None = None) -> str:
    """A fresh ``kid:key`` entry for BLUESKY_OAUTH_KEYS: a P-256 private scalar, base64url.

    The key id defaults to a dated one, so a rotation's new key never repeats an old id.
    """
    from cryptography.hazmat.primitives.asymmetric import ec

    scalar = ec.generate_private_key(ec.SECP256R1()).private_numbers().private_value.to_bytes(32, "big")
    kid = kid or "b" + datetime.now(UTC).strftime("%Y%m%d") + "-" + secrets.token_hex(3)
    return f"{kid}:{base64.urlsafe_b64encode(scalar).rstrip(b'=').decode()}"


def ensure_local_secrets(path: Path, present: Collection[str] = ()) -> dict[str, str]:
    """For `run`: create missing secrets once in ``path`` (mode 0600) and return them.

    Values already set win (in the environment, or named in ``present``: set in ``.env``); the
    file is only written when something is missing, and never rewritten afterwards, so tokens
    encrypted under its key stay readable.
    """
    existing: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            name, sep, value = line.partition("=")
            if sep and name.strip():
                existing[name.strip()] = value.strip()
    changed = False
    for name in GENERATED_SECRETS:
        if name in present or os.environ.get(name) or existing.get(name):
            continue
        if name == "TOKEN_KEYS":
            existing[name] = new_token_key()
        elif name == "BLUESKY_OAUTH_KEYS":
            existing[name] = new_signing_key()
        else:
            existing[name] = secrets.token_urlsafe(32)
        changed = True
    if changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("# generated once by `social-accounts run`; keep it private\n")
            for name, value in existing.items():
                fh.write(f"{name}={value}\n")
    os.chmod(path, 0o600)
    return existing


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
