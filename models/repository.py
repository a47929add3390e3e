"""What workers, the web app and the CLI call to read and write accounts (docs/design.md).

Functions take a ``Session`` and never commit: the caller owns the transaction, so a step
(save tokens, record the event, mark the attempt) commits as one unit or not at all. Writes that
race with other processes are single statements with their own guard:

* ``upsert_account`` is ONE ``INSERT ... ON CONFLICT (site_id, platform, platform_account_id)
  DO UPDATE``: two workers connecting the same account at once cannot create two rows, and an
  empty token in the new data never wipes the stored one (``COALESCE``/``CASE`` in the SET).
* ``save_refreshed_tokens`` is a compare-and-set on ``token_version``: when two refreshes race,
  the loser learns it (``False``) instead of overwriting a rotated refresh token with a dead one.

Attempts, Mastodon apps and the public JSON view live in sibling modules and are re-exported
here, so callers have one import.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, CursorResult, Engine, Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.attempts import (
    append_history,
    attempt_secret,
    connected_update,
    create_attempt,
    finish_connected,
    history_entry,
    load_attempt,
    read_token_bundle,
    store_token_bundle,
    tokens_from_json,
    tokens_to_json,
)
from models.crypto import KeyRing
from models.dialect import dialect_insert
from models.ids import account_id as make_account_id
from models.ids import new_id
from models.mastodon_apps import MastodonAppRecord, find_mastodon_app, save_mastodon_app
from models.oneshot import connect, execute, fetch_one
from models.outbox import note_written
from models.public import account_public_dict, health_reason
from models.tables import SocialAccount, SocialAccountEvent, table_of, utcnow
from social_accounts.values import AccountProfile, TokenSet

__all__ = [
    "AccountSnapshot",
    "ConnectedAccount",
    "LoadedAccount",
    "MastodonAppRecord",
    "account_public_dict",
    "append_history",
    "attempt_secret",
    "create_attempt",
    "find_mastodon_app",
    "health_reason",
    "list_accounts",
    "load_account",
    "load_attempt",
    "lock_account_version",
    "read_account",
    "read_token_bundle",
    "event_values",
    "fetch_account",
    "record_event",
    "record_events",
    "save_mastodon_app",
    "save_connected_accounts",
    "save_refresh_if_unchanged",
    "save_refreshed_tokens",
    "store_token_bundle",
    "tokens_from_json",
    "tokens_to_json",
    "upsert_account",
]

ACCOUNTS = table_of(SocialAccount)
EVENTS = table_of(SocialAccountEvent)
_T = "social_accounts"
#: a Session (ORM callers) or a Core Connection (the refresh's hot path): both ``execute``
Executor = Session | Connection


@dataclass(frozen=True)
class LoadedAccount:
    """An account row with its tokens decrypted into a ``TokenSet`` (what a worker acts with)."""

    id: str
    site_id: str
    platform: str
    platform_account_id: str
    user_id: str | None
    status: str
    health_score: int
    token_version: int
    refresh_model: str
    next_refresh_at: datetime | None
    consecutive_failures: int
    first_failure_at: datetime | None
    rate_limited_until: datetime | None
    tokens: TokenSet
    row: SocialAccount = field(repr=False, compare=False)


@dataclass(frozen=True)
class AccountSnapshot:
    """What a refresh acts on, read with one Core ``SELECT`` instead of an ORM load.

    Why not ``LoadedAccount``: building and tracking an ORM object is the costliest part of a
    refresh's own work, and a refresh only needs these facts.
    """

    id: str
    site_id: str
    platform: str
    status: str
    token_version: int
    refresh_model: str
    next_refresh_at: datetime | None
    tokens: TokenSet
    #: the health inputs as read: a refresh's write is fenced on them (``save_refresh_if_unchanged``)
    last_synced_at: datetime | None = None
    last_error_at: datetime | None = None


_c = ACCOUNTS.c
#: built once: a statement object per call would pay SQLAlchemy's cache-key walk again
_READ_ACCOUNT = sa.select(
    _c.id,
    _c.site_id,
    _c.platform,
    _c.status,
    _c.token_version,
    _c.refresh_model,
    _c.next_refresh_at,
    _c.access_token,
    _c.refresh_token,
    _c.token_expires_at,
    _c.refresh_token_expires_at,
    _c.scopes,
    _c.token_metadata,
    _c.last_synced_at,
    _c.last_error_at,
    _c.dpop_key,
).where(_c.id == sa.bindparam("account_id"))
_LOCK_VERSION = (
    sa.select(_c.status, _c.last_synced_at, _c.last_error_at, _c.site_id, _c.platform)
    .where(_c.id == sa.bindparam("account_id"), _c.token_version == sa.bindparam("version"))
    .with_for_update()
)


def read_account(conn: Connection, ring: KeyRing, account_id: str) -> AccountSnapshot | None:
    """The account's state and decrypted tokens, or ``None``. Raises ``CryptoError`` for unreadable tokens."""
    row = conn.execute(_READ_ACCOUNT, {"account_id": account_id}).first()
    return None if row is None else _snapshot(tuple(row), ring)


def fetch_account(engine: Engine, ring: KeyRing, account_id: str) -> AccountSnapshot | None:
    """``read_account`` as one statement in autocommit (``models.oneshot``): no ``BEGIN``/``ROLLBACK``
    round trips around a read that decides nothing alone."""
    row = fetch_one(engine, _READ_ACCOUNT, {"account_id": account_id})
    return None if row is None else _snapshot(tuple(row), ring)


def _snapshot(row: tuple[Any, ...], ring: KeyRing) -> AccountSnapshot:
    """An ``AccountSnapshot`` from a row of ``_READ_ACCOUNT`` (columns in its order)."""
    (
        account_id,
        site_id,
        platform,
        status,
        token_version,
        refresh_model,
        next_refresh_at,
        access_token,
        refresh_token,
        token_expires_at,
        refresh_token_expires_at,
        scopes,
        token_metadata,
        last_synced_at,
        last_error_at,
        dpop_key,
    ) = row
    tokens = _tokens(
        ring,
        account_id,
        access_token=access_token,
        refresh_token=refresh_token,
        expires_at=token_expires_at,
        refresh_expires_at=refresh_token_expires_at,
        scopes=scopes,
        metadata=token_metadata,
        dpop_key=dpop_key,
    )
    return AccountSnapshot(
        id=account_id,
        site_id=site_id,
        platform=platform,
        status=status,
        token_version=token_version,
        refresh_model=refresh_model,
        next_refresh_at=next_refresh_at,
        tokens=tokens,
        last_synced_at=last_synced_at,
        last_error_at=last_error_at,
    )


def _tokens(
    ring: KeyRing,
    account_id: str,
    *,
    access_token: str | None,
    refresh_token: str | None,
    expires_at: datetime | None,
    refresh_expires_at: datetime | None,
    scopes: Any,
    metadata: Any,
    dpop_key: str | None = None,
) -> TokenSet:
    """The account's stored token columns as a ``TokenSet``, tokens and DPoP key decrypted."""
    return TokenSet(
        access_token=ring.decrypt_optional(access_token, table=_T, column="access_token", row_id=account_id) or "",
        refresh_token=ring.decrypt_optional(refresh_token, table=_T, column="refresh_token", row_id=account_id),
        expires_at=expires_at,
        refresh_expires_at=refresh_expires_at,
        scopes=tuple(scopes or ()),
        metadata=dict(metadata or {}),
        dpop_key=ring.decrypt_optional(dpop_key, table=_T, column="dpop_key", row_id=account_id),
    )


def lock_account_version(conn: Connection, account_id: str, version: int) -> Row[Any, Any, Any, Any, Any] | None:
    """Lock the account row for this transaction if ``token_version`` is still ``version``.

    Returns ``status, last_synced_at, last_error_at, site_id, platform`` (what the outcome policy
    needs to compute the new status and health exactly), or ``None`` when another writer moved the
    version (or the account is gone). The write that follows keeps its own ``token_version`` fence.
    """
    return conn.execute(_LOCK_VERSION, {"account_id": account_id, "version": version}).first()


def _forget(session: Executor, row_id: str) -> None:
    """Drop a cached ORM copy after a Core statement changed the row behind the session's back."""
    if not isinstance(session, Session):
        return
    cached = session.identity_map.get(session.identity_key(SocialAccount, row_id))
    if cached is not None:
        session.expire(cached)


def upsert_account(
    session: Executor,
    ring: KeyRing,
    *,
    site_id: str,
    platform: str,
    user_id: str | None,
    profile: AccountProfile,
    next_refresh_at: datetime | None,
    now: datetime,
    next_sync_at: datetime | None = None,
    savepoint: bool = True,
) -> tuple[str, bool]:
    """Insert or update the account for ``profile``; returns ``(account_id, inserted)``.

    The account comes back ``active`` with health 100 and its failure counters cleared (a fresh
    connect proves the grant works); ``token_version`` goes up by one on update.
    ``next_sync_at`` only fills an empty turn: an account that has one keeps it.

    ``savepoint=False`` (a Core connection's caller that retries its whole transaction once on
    ``IntegrityError``, like the connect worker) saves the SAVEPOINT/RELEASE round trips; the
    race described below then surfaces to that caller instead of being retried here.
    """
    values = upsert_values(
        ring,
        site_id=site_id,
        platform=platform,
        user_id=user_id,
        profile=profile,
        next_refresh_at=next_refresh_at,
        now=now,
        next_sync_at=next_sync_at,
    )
    acc_id = values["id"]
    dialect = session.dialect.name if isinstance(session, Connection) else session.get_bind().dialect.name
    stmt = _upsert_statement(dialect, bool(profile.tokens.scopes))
    if not savepoint:
        version = session.execute(stmt, values).scalar_one()
        _forget(session, acc_id)
        return acc_id, version == 0
    try:
        # A savepoint, so the retry below does not abort the caller's transaction.
        with session.begin_nested():
            version = session.execute(stmt, values).scalar_one()
    except IntegrityError:
        # Two connects of the same account at the same instant: the account has two equivalent
        # unique keys (the deterministic id and the contract's triple), and PostgreSQL's ON CONFLICT
        # arbitrates only one; the other one raises when the concurrent insert commits first. By
        # now that row is committed, so the second try takes the DO UPDATE branch.
        with session.begin_nested():
            version = session.execute(stmt, values).scalar_one()
    _forget(session, acc_id)
    return acc_id, version == 0


def upsert_values(
    ring: KeyRing,
    *,
    site_id: str,
    platform: str,
    user_id: str | None,
    profile: AccountProfile,
    next_refresh_at: datetime | None,
    now: datetime,
    next_sync_at: datetime | None = None,
) -> dict[str, Any]:
    """The column values ``upsert_account`` inserts for ``profile`` (tokens encrypted)."""
    acc_id = make_account_id(site_id, platform, profile.platform_account_id)
    tokens, stats = profile.tokens, profile.stats
    has_stats = any(v is not None for v in (stats.followers, stats.following, stats.posts, stats.engagement_rate))
    return {
        "id": acc_id,
        "site_id": site_id,
        "platform": platform,
        "platform_account_id": profile.platform_account_id,
        "account_name": profile.name,
        "account_handle": profile.handle,
        "account_avatar": profile.avatar_url,
        "access_token": ring.encrypt_optional(tokens.access_token, table=_T, column="access_token", row_id=acc_id),
        "refresh_token": ring.encrypt_optional(tokens.refresh_token, table=_T, column="refresh_token", row_id=acc_id),
        "dpop_key": ring.encrypt_optional(tokens.dpop_key, table=_T, column="dpop_key", row_id=acc_id),
        "token_expires_at": tokens.expires_at,
        "refresh_token_expires_at": tokens.refresh_expires_at,
        "scopes": list(tokens.scopes),
        "followers_count": stats.followers,
        "following_count": stats.following,
        "posts_count": stats.posts,
        "engagement_rate": stats.engagement_rate,
        "last_synced_at": now if has_stats else None,
        "status": "active",
        "health_score": 100,
        "token_metadata": dict(tokens.metadata),
        "created_at": now,
        "updated_at": now,
        "token_version": 0,
        "next_refresh_at": next_refresh_at,
        "consecutive_failures": 0,
        "user_id": user_id,
        "refresh_model": profile.refresh_model,
        "next_sync_at": next_sync_at,
    }


@functools.lru_cache(maxsize=8)
def _upsert_statement(dialect: str, with_scopes: bool) -> Any:
    """The account upsert, built once per backend and shape; the values come as parameters.

    Building ``insert().values().on_conflict_do_update()`` per call (coercions, annotations, the
    cache-key walk) would cost more than running it.
    """
    return _on_conflict_update(dialect_insert(dialect, ACCOUNTS), with_scopes)


def _on_conflict_update(stmt: Any, with_scopes: bool) -> Any:
    """``stmt`` (an ``INSERT`` into social_accounts) made the account upsert: ``DO UPDATE`` that
    never overwrites a value with an empty one, ``RETURNING token_version`` (0: inserted)."""
    new, cur = stmt.excluded, ACCOUNTS.c

    def keep(name: str) -> Any:  # the new value, unless it is NULL
        return sa.func.coalesce(new[name], cur[name])

    def with_token(token: str, name: str) -> Any:  # an expiry belongs to its token
        return sa.case((new[token].is_(None), cur[name]), else_=new[name])

    set_: dict[str, Any] = {
        **{name: keep(name) for name in ("account_name", "account_handle", "account_avatar", "user_id")},
        **{name: keep(name) for name in ("followers_count", "following_count", "posts_count", "engagement_rate")},
        "access_token": keep("access_token"),
        "refresh_token": keep("refresh_token"),
        # a reconnect by app password leaves no key: the key of tokens that are replaced goes with them
        "dpop_key": sa.case((new.access_token.is_(None), cur.dpop_key), else_=new.dpop_key),
        "token_expires_at": with_token("access_token", "token_expires_at"),
        "refresh_token_expires_at": with_token("refresh_token", "refresh_token_expires_at"),
        "last_synced_at": keep("last_synced_at"),
        "token_metadata": new.token_metadata,
        "status": "active",
        "health_score": 100,
        "last_error": sa.null(),
        "last_error_at": sa.null(),
        "consecutive_failures": 0,
        "first_failure_at": sa.null(),
        "rate_limited_until": sa.null(),
        "next_refresh_at": new.next_refresh_at,
        "next_sync_at": sa.func.coalesce(cur.next_sync_at, new.next_sync_at),  # a turn already set stays
        "refresh_model": new.refresh_model,
        "token_version": cur.token_version + 1,
        "updated_at": new.updated_at,
    }
    if with_scopes:  # an answer without scopes keeps the granted ones
        set_["scopes"] = new.scopes
    return stmt.on_conflict_do_update(
        index_elements=[cur.site_id, cur.platform, cur.platform_account_id], set_=set_
    ).returning(cur.token_version)


@dataclass(frozen=True)
class ConnectedAccount:
    """One account a connect saves: its profile and its first refresh and sync turns."""

    profile: AccountProfile
    next_refresh_at: datetime | None
    next_sync_at: datetime | None


def save_connected_accounts(
    engine: Engine,
    ring: KeyRing,
    *,
    attempt_id: str,
    site_id: str,
    platform: str,
    user_id: str | None,
    accounts: list[ConnectedAccount],
    now: datetime,
) -> tuple[list[tuple[str, bool]], bool]:
    """Upsert every account, record a ``connected`` event for each (reason ``connected`` or
    ``reconnected``) and mark the attempt connected, as one transaction.

    Returns ``([(account_id, inserted)...], finished)``; ``finished`` is False when the attempt was
    no longer pending (the accounts are saved all the same). On PostgreSQL it is ONE statement in
    autocommit: the upserts, the events and the attempt's ``UPDATE`` as data-modifying CTEs, one
    round trip instead of five. SQLite has no data-modifying CTEs
    (https://www.sqlite.org/lang_with.html), so there it is the same work statement by statement
    in one transaction. A racing insert of the same account raises
    ``IntegrityError`` with nothing written (see ``upsert_account``): the caller runs it again.
    """
    rows = [
        upsert_values(
            ring,
            site_id=site_id,
            platform=platform,
            user_id=user_id,
            profile=account.profile,
            next_refresh_at=account.next_refresh_at,
            now=now,
            next_sync_at=account.next_sync_at,
        )
        for account in accounts
    ]
    events = [
        event_values(
            kind="connected",
            account_id=row["id"],
            site_id=site_id,
            platform=platform,
            # the upsert makes the account active and healthy (``upsert_values``)
            data={"attempt_id": attempt_id, "to": "active", "health_score": 100, "health_reason": "Healthy."},
            now=now,
        )
        for row in rows
    ]
    ids = [str(row["id"]) for row in rows]
    if not (rows and _writable_ctes(engine)):
        with connect(engine) as conn, conn.begin():
            saved = []
            for row, event, account in zip(rows, events, accounts, strict=True):
                stmt = _upsert_statement(conn.dialect.name, bool(account.profile.tokens.scopes))
                inserted = conn.execute(stmt, row).scalar_one() == 0
                event["reason"] = "connected" if inserted else "reconnected"
                saved.append((str(row["id"]), inserted))
            record_events(conn, events)
            finished = finish_connected(conn, attempt_id, ids, now)
        return saved, finished
    shape = tuple(bool(account.profile.tokens.scopes) for account in accounts)
    params: dict[str, Any] = {"w_id": attempt_id, "account_ids": ids, "now": now}
    params["h_entry"] = history_entry("connected", ", ".join(ids), now)
    for i, (row, event) in enumerate(zip(rows, events, strict=True)):
        params.update({f"p{i}_{name}": value for name, value in row.items()})
        params.update({f"e{i}_{name}": event[name] for name in ("id", "data", "created_at")})
    columns = tuple(rows[0])  # what ``upsert_values`` fills, the same for every account
    found = fetch_one(engine, _connect_save(shape, columns), params)
    assert found is not None
    note_written(["connected"])
    *versions, finished, _logged = found
    return [(account_id, version == 0) for account_id, version in zip(ids, versions, strict=True)], bool(finished)


def _writable_ctes(engine: Engine) -> bool:
    """Whether the backend runs ``INSERT``/``UPDATE`` inside ``WITH`` (PostgreSQL does, SQLite not)."""
    return engine.dialect.name == "postgresql"


@functools.lru_cache(maxsize=64)
def _connect_save(shape: tuple[bool, ...], columns: tuple[str, ...]) -> sa.Select[Any]:
    """``WITH a0 AS (<upsert> RETURNING id, token_version), …, ev AS (INSERT INTO events …),
    fin AS (<attempt connected> RETURNING id) SELECT <each token_version>, <fin's count>``.

    One upsert per account with its own parameters (``p<i>_<column>``); the event's reason is
    read from the upsert (``token_version`` 0: inserted). PostgreSQL runs every data-modifying
    CTE to completion whether or not the final ``SELECT`` reads it.
    """
    upserts = []
    for i, with_scopes in enumerate(shape):
        values = {name: sa.bindparam(f"p{i}_{name}", type_=ACCOUNTS.c[name].type) for name in columns}
        insert = _on_conflict_update(postgresql.insert(ACCOUNTS).values(values), with_scopes)
        upserts.append(insert.returning(ACCOUNTS.c.id, ACCOUNTS.c.site_id, ACCOUNTS.c.platform).cte(f"a{i}"))
    rows = [
        sa.select(
            sa.bindparam(f"e{i}_id", type_=EVENTS.c.id.type),
            up.c.id,
            up.c.site_id,
            up.c.platform,
            sa.literal("connected", EVENTS.c.kind.type),
            sa.case((up.c.token_version == 0, "connected"), else_="reconnected"),
            sa.bindparam(f"e{i}_data", type_=EVENTS.c.data.type),
            sa.bindparam(f"e{i}_created_at", type_=EVENTS.c.created_at.type),
        ).select_from(up)
        for i, up in enumerate(upserts)
    ]
    source = rows[0] if len(rows) == 1 else sa.union_all(*rows)
    logged = (
        sa.insert(EVENTS)
        .from_select(list(_EVENT_COLUMNS), source, include_defaults=False)
        .returning(EVENTS.c.id)
        .cte("ev")
    )
    finished = connected_update("postgresql").returning(sa.literal_column("1")).cte("fin")
    return sa.select(
        *(sa.select(up.c.token_version).scalar_subquery() for up in upserts),
        sa.select(sa.func.count()).select_from(finished).scalar_subquery(),
        sa.select(sa.func.count()).select_from(logged).scalar_subquery(),
    )


def load_account(session: Session, ring: KeyRing, account_id: str) -> LoadedAccount | None:
    """The account with decrypted tokens, or ``None``. Raises ``CryptoError`` for unreadable tokens."""
    row = session.get(SocialAccount, account_id, populate_existing=True)
    if row is None:
        return None
    tokens = _tokens(
        ring,
        row.id,
        access_token=row.access_token,
        refresh_token=row.refresh_token,
        expires_at=row.token_expires_at,
        refresh_expires_at=row.refresh_token_expires_at,
        scopes=row.scopes,
        metadata=row.token_metadata,
        dpop_key=row.dpop_key,
    )
    return LoadedAccount(
        id=row.id,
        site_id=row.site_id,
        platform=row.platform,
        platform_account_id=row.platform_account_id,
        user_id=row.user_id,
        status=row.status,
        health_score=row.health_score,
        token_version=row.token_version,
        refresh_model=row.refresh_model,
        next_refresh_at=row.next_refresh_at,
        consecutive_failures=row.consecutive_failures,
        first_failure_at=row.first_failure_at,
        rate_limited_until=row.rate_limited_until,
        tokens=tokens,
        row=row,
    )


def save_refreshed_tokens(
    session: Executor,
    ring: KeyRing,
    account_id: str,
    *,
    expected_version: int,
    tokens: TokenSet,
    next_refresh_at: datetime | None,
    now: datetime,
    also: dict[str, Any] | None = None,
) -> bool:
    """Store refreshed tokens if ``token_version`` is still ``expected_version``; ``False`` otherwise.

    Status and failure counters are left to the caller's policy, which may pass the columns it
    sets as ``also`` so tokens and outcome are one ``UPDATE``; an empty refresh token in
    ``tokens`` keeps the stored one (platforms that do not rotate omit it).
    """
    values = _token_values(ring, account_id, tokens=tokens, next_refresh_at=next_refresh_at, now=now, also=also)
    stmt = _fenced_update(tuple(sorted(values)))
    params = {f"v_{name}": value for name, value in values.items()}
    params["w_id"], params["w_version"] = account_id, expected_version
    result = cast(CursorResult[Any], session.execute(stmt, params))
    _forget(session, account_id)
    return result.rowcount == 1


def save_refresh_if_unchanged(
    engine: Engine,
    ring: KeyRing,
    seen: AccountSnapshot,
    *,
    tokens: TokenSet,
    next_refresh_at: datetime | None,
    now: datetime,
    also: dict[str, Any],
    events: list[dict[str, Any]],
) -> bool:
    """Store a refresh's outcome if the row is still exactly as ``seen``; ``False`` otherwise.

    The fence is ``token_version`` plus what the outcome was computed from (status and the health
    inputs), so a row nobody touched since it was read under the refresh lock needs no row lock
    and no second read: on PostgreSQL the tokens, the outcome and the events (at least one) are
    ONE statement in autocommit, an ``UPDATE … RETURNING`` feeding the events' ``INSERT`` (one
    round trip). SQLite has no data-modifying CTEs, so there it is the ``UPDATE`` and, if it
    matched, the ``INSERT``, in one transaction. On ``False`` nothing was
    written and the caller falls back to locking the row (``lock_account_version``) and
    recomputing.
    """
    if not events:
        raise ValueError("a refresh always records at least one event")
    values = _token_values(ring, seen.id, tokens=tokens, next_refresh_at=next_refresh_at, now=now, also=also)
    columns = tuple(sorted(values))
    params: dict[str, Any] = {f"v_{name}": value for name, value in values.items()}
    params.update(w_id=seen.id, w_version=seen.token_version, w_status=seen.status)
    params.update(w_synced=seen.last_synced_at, w_error=seen.last_error_at)
    if not _writable_ctes(engine):
        with connect(engine) as conn, conn.begin():
            result = cast(CursorResult[Any], conn.execute(_fenced_update(columns, exact=True), params))
            if result.rowcount != 1:
                return False
            record_events(conn, events)
            return True
    for i, event in enumerate(events):
        params.update({f"e{i}_{name}": event.get(name) for name in _EVENT_COLUMNS})
    n = len(events)
    saved = execute(engine, _update_and_log(columns, n), params) == n
    if saved:
        note_written([event["kind"] for event in events])
    return saved


_EVENT_COLUMNS = ("id", "account_id", "site_id", "platform", "kind", "reason", "data", "created_at")


@functools.lru_cache(maxsize=64)
def _update_and_log(columns: tuple[str, ...], n_events: int) -> sa.Insert:
    """``WITH refreshed AS (<exact fenced UPDATE> RETURNING id) INSERT INTO social_account_events
    SELECT <event 0> FROM refreshed UNION ALL …``: the events exist only if the update matched."""
    updated = _fenced_update(columns, exact=True).returning(ACCOUNTS.c.id).cte("refreshed")
    rows = [
        sa.select(*(sa.bindparam(f"e{i}_{name}", type_=EVENTS.c[name].type) for name in _EVENT_COLUMNS)).select_from(
            updated
        )
        for i in range(n_events)
    ]
    source = rows[0] if n_events == 1 else sa.union_all(*rows)
    return sa.insert(EVENTS).from_select(list(_EVENT_COLUMNS), source, include_defaults=False)


def _token_values(
    ring: KeyRing,
    account_id: str,
    *,
    tokens: TokenSet,
    next_refresh_at: datetime | None,
    now: datetime,
    also: dict[str, Any] | None,
) -> dict[str, Any]:
    """The columns a refresh writes: ``also`` plus the tokens, encrypted (an empty refresh token
    keeps the stored one)."""
    values: dict[str, Any] = {
        **(also or {}),
        "token_expires_at": tokens.expires_at,
        "token_metadata": dict(tokens.metadata),
        "next_refresh_at": next_refresh_at,
        "updated_at": now,
    }
    if tokens.access_token:
        values["access_token"] = ring.encrypt(tokens.access_token, table=_T, column="access_token", row_id=account_id)
    if tokens.refresh_token:
        values["refresh_token"] = ring.encrypt(
            tokens.refresh_token, table=_T, column="refresh_token", row_id=account_id
        )
        values["refresh_token_expires_at"] = tokens.refresh_expires_at
    elif tokens.refresh_expires_at is not None:
        values["refresh_token_expires_at"] = tokens.refresh_expires_at
    if tokens.scopes:
        values["scopes"] = list(tokens.scopes)
    if tokens.dpop_key:
        values["dpop_key"] = ring.encrypt(tokens.dpop_key, table=_T, column="dpop_key", row_id=account_id)
    return values


@functools.lru_cache(maxsize=64)
def _fenced_update(columns: tuple[str, ...], exact: bool = False) -> sa.Update:
    """``UPDATE … SET <columns>, token_version + 1 WHERE id = :w_id AND token_version = :w_version``
    (``exact``: also ``status = :w_status`` and the health inputs unchanged).

    One statement object per set of columns, reused: building ``update().values()`` per call
    and walking it for SQLAlchemy's cache key would cost more than running it.
    """
    values: dict[str, Any] = {name: sa.bindparam(f"v_{name}", type_=ACCOUNTS.c[name].type) for name in columns}
    values["token_version"] = ACCOUNTS.c.token_version + 1
    fence = [_c.id == sa.bindparam("w_id"), _c.token_version == sa.bindparam("w_version")]
    if exact:
        fence += [
            _c.status == sa.bindparam("w_status"),
            _c.last_synced_at.is_not_distinct_from(sa.bindparam("w_synced", type_=_c.last_synced_at.type)),
            _c.last_error_at.is_not_distinct_from(sa.bindparam("w_error", type_=_c.last_error_at.type)),
        ]
    return sa.update(ACCOUNTS).where(*fence).values(values)


def event_values(
    *,
    kind: str,
    account_id: str | None = None,
    site_id: str | None = None,
    platform: str | None = None,
    reason: str = "",
    data: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """One audit event's column values (``record_events`` writes several in one statement)."""
    return {
        "id": new_id(),
        "account_id": account_id,
        "site_id": site_id,
        "platform": platform,
        "kind": kind,
        "reason": reason,
        "data": dict(data or {}),
        "created_at": now or utcnow(),
    }


_INSERT_EVENT = sa.insert(EVENTS)


def record_events(conn: Executor, events: list[dict[str, Any]]) -> None:
    """Append events built by ``event_values`` in one ``INSERT``. ``data`` must never hold a secret."""
    if events:
        conn.execute(_INSERT_EVENT, events)
        note_written([event["kind"] for event in events])


def record_event(
    session: Executor,
    *,
    kind: str,
    account_id: str | None = None,
    site_id: str | None = None,
    platform: str | None = None,
    reason: str = "",
    data: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> str:
    """Append one audit event and return its id. ``data`` must never hold a secret."""
    values = event_values(
        kind=kind, account_id=account_id, site_id=site_id, platform=platform, reason=reason, data=data, now=now
    )
    session.execute(_INSERT_EVENT, values)
    note_written([kind])
    return str(values["id"])


def list_accounts(session: Session, *, site_id: str | None = None) -> list[SocialAccount]:
    """Accounts (of one site, or all), oldest first: for the API and ``accounts list``."""
    query = sa.select(SocialAccount).order_by(ACCOUNTS.c.created_at, ACCOUNTS.c.id)
    if site_id is not None:
        query = query.where(ACCOUNTS.c.site_id == site_id)
    return list(session.execute(query).scalars())
