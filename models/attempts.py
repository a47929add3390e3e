"""Connect attempts (``social_oauth_states``): creation, loading, and their encrypted fields.

The PKCE verifier, a Bluesky app password and the exchanged token bundle are secrets, so they
are stored encrypted and bound to the attempt row. The token bundle exists so that a retried
connect step continues from the tokens it already has instead of exchanging the single-use
code a second time. ``history`` is a JSON list that shows every retry of the attempt.

The connect worker's hot path reads and writes attempts with Core statements built once per
backend (:func:`read_attempt`, :func:`claim_state`, :func:`store_tokens`, :func:`finish_connected`,
:func:`append_event`): one ``UPDATE`` with a guard in its ``WHERE`` instead of an ORM
load-modify-flush per stage change, which costs a read and object tracking. Those statements
append to ``history`` inside the database (JSONB ``||`` on PostgreSQL, ``json_insert`` on
SQLite), so no read is needed before a write and two writers never lose each other's entries.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection, CursorResult, Engine
from sqlalchemy.orm import Session

from models.crypto import KeyRing
from models.ids import new_id
from models.oneshot import execute, fetch_one
from models.outbox import note_written
from models.tables import SocialAccountEvent, SocialOAuthState, table_of
from social_accounts.values import TokenSet

__all__ = [
    "SECRET_COLUMNS",
    "AttemptSnapshot",
    "append_event",
    "append_history",
    "attempt_secret",
    "claim_state",
    "create_attempt",
    "fail_pending",
    "finish_connected",
    "load_attempt",
    "read_attempt",
    "read_token_bundle",
    "set_stage",
    "store_tokens",
    "store_token_bundle",
    "tokens_from_json",
    "tokens_to_json",
]

_T = "social_oauth_states"
_EVENTS = table_of(SocialAccountEvent)
SECRET_COLUMNS = ("code_verifier", "app_password", "token_bundle", "dpop_key")


def create_attempt(
    session: Session,
    ring: KeyRing,
    *,
    platform: str,
    site_id: str,
    user_id: str,
    expires_at: datetime,
    now: datetime,
    attempt_id: str | None = None,
    return_to: str | None = None,
    instance: str | None = None,
    code_verifier: str | None = None,
    app_password: str | None = None,
    dpop_key: str | None = None,
) -> str:
    """Write a new pending attempt and return its id (``attempt_id`` when the caller chose one)."""
    row_id = attempt_id or new_id()
    row = SocialOAuthState(
        id=row_id,
        platform=platform,
        site_id=site_id,
        user_id=user_id,
        return_to=return_to,
        instance=instance,
        code_verifier=ring.encrypt_optional(code_verifier, table=_T, column="code_verifier", row_id=row_id),
        app_password=ring.encrypt_optional(app_password, table=_T, column="app_password", row_id=row_id),
        dpop_key=ring.encrypt_optional(dpop_key, table=_T, column="dpop_key", row_id=row_id),
        status="pending",
        stage="created",
        account_ids=[],
        history=[{"at": now.isoformat(), "event": "created", "detail": ""}],
        expires_at=expires_at,
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    session.flush()
    return row_id


def load_attempt(session: Session, attempt_id: str, *, for_update: bool = False) -> SocialOAuthState | None:
    """The attempt row (``for_update`` locks it on PostgreSQL until the transaction ends)."""
    return session.get(SocialOAuthState, attempt_id, populate_existing=True, with_for_update=for_update or None)


def attempt_secret(ring: KeyRing, row: SocialOAuthState | AttemptSnapshot, column: str) -> str | None:
    """Decrypt ``code_verifier``, ``app_password`` or ``dpop_key`` of an attempt (``None`` when not set)."""
    if column not in ("code_verifier", "app_password", "dpop_key"):
        raise ValueError(f"{column!r} is not a secret column of an attempt")
    value: str | None = getattr(row, column)
    return ring.decrypt_optional(value, table=_T, column=column, row_id=row.id)


def append_history(row: SocialOAuthState, event: str, detail: str = "", *, now: datetime) -> None:
    """Add ``{at, event, detail}`` to the attempt's history (tracked in place by MutableList)."""
    row.history.append({"at": now.isoformat(), "event": event, "detail": detail})
    row.updated_at = now


# ---- the token bundle ---------------------------------------------------------------------------


def tokens_to_json(tokens: TokenSet) -> str:
    """A ``TokenSet`` as JSON text (to be encrypted before it is stored anywhere)."""
    return json.dumps(
        {
            "access_token": tokens.access_token,
            "refresh_token": tokens.refresh_token,
            "expires_at": tokens.expires_at.isoformat() if tokens.expires_at else None,
            "refresh_expires_at": tokens.refresh_expires_at.isoformat() if tokens.refresh_expires_at else None,
            "scopes": list(tokens.scopes),
            "metadata": tokens.metadata,
            "dpop_key": tokens.dpop_key,
        },
        separators=(",", ":"),
    )


def tokens_from_json(text: str) -> TokenSet:
    data: dict[str, Any] = json.loads(text)

    def when(key: str) -> datetime | None:
        value = data.get(key)
        return datetime.fromisoformat(value) if value else None

    return TokenSet(
        access_token=data["access_token"],
        refresh_token=data.get("refresh_token"),
        expires_at=when("expires_at"),
        refresh_expires_at=when("refresh_expires_at"),
        scopes=tuple(data.get("scopes") or ()),
        metadata=dict(data.get("metadata") or {}),
        dpop_key=data.get("dpop_key"),
    )


def store_token_bundle(ring: KeyRing, row: SocialOAuthState, tokens: TokenSet) -> None:
    """Put the exchanged tokens on the attempt, encrypted (the caller commits at once)."""
    row.token_bundle = encrypt_token_bundle(ring, row.id, tokens)


def encrypt_token_bundle(ring: KeyRing, attempt_id: str, tokens: TokenSet) -> str:
    """The ``token_bundle`` column value for ``tokens`` (encrypted, bound to the attempt row)."""
    return ring.encrypt(tokens_to_json(tokens), table=_T, column="token_bundle", row_id=attempt_id)


def read_token_bundle(ring: KeyRing, row: SocialOAuthState | AttemptSnapshot) -> TokenSet | None:
    """The tokens stored by ``store_token_bundle``, or ``None`` when the code was not exchanged yet."""
    text = ring.decrypt_optional(row.token_bundle, table=_T, column="token_bundle", row_id=row.id)
    return tokens_from_json(text) if text is not None else None


# ---- Core reads and writes (the connect worker's hot path) ---------------------------------------

_S = SocialOAuthState.__table__  # type: ignore[attr-defined]
_c = _S.c


@dataclass(frozen=True)
class AttemptSnapshot:
    """What a connect step needs of an attempt, read with one Core ``SELECT`` (secrets still encrypted)."""

    id: str
    platform: str
    site_id: str
    user_id: str
    instance: str | None
    status: str
    stage: str
    consumed_by: str | None
    code_verifier: str | None
    app_password: str | None
    token_bundle: str | None
    dpop_key: str | None = None


_READ = sa.select(
    _c.id,
    _c.platform,
    _c.site_id,
    _c.user_id,
    _c.instance,
    _c.status,
    _c.stage,
    _c.consumed_by,
    _c.code_verifier,
    _c.app_password,
    _c.token_bundle,
    _c.dpop_key,
).where(_c.id == sa.bindparam("attempt_id"))
_READ_LOCKED = _READ.with_for_update()


def read_attempt(db: Database, attempt_id: str, *, for_update: bool = False) -> AttemptSnapshot | None:
    """The attempt, or ``None``.

    In a transaction (``Connection``), ``for_update`` locks the row on PostgreSQL until it ends.
    Given an ``Engine``, one read in autocommit (``models.oneshot``): no ``BEGIN``/``ROLLBACK``
    round trips around a read that decides nothing alone.
    """
    params = {"attempt_id": attempt_id}
    if isinstance(db, Engine):
        if for_update:
            raise ValueError("a locking read needs the transaction it locks for")
        found = fetch_one(db, _READ, params)
    else:
        found = db.execute(_READ_LOCKED if for_update else _READ, params).first()
    return AttemptSnapshot(*found) if found is not None else None


def history_entry(event: str, detail: str, now: datetime) -> str:
    """One ``history`` element as JSON text, exactly what :func:`append_history` appends."""
    return json.dumps({"at": now.isoformat(), "event": event, "detail": detail})


def _history_plus_entry(dialect: str) -> Any:
    """``history`` with the JSON object bound as ``:h_entry`` appended, computed by the database."""
    entry = sa.bindparam("h_entry", type_=sa.Text())
    if dialect == "postgresql":
        return _c.history.op("||")(sa.func.jsonb_build_array(sa.cast(entry, JSONB)))
    if dialect == "sqlite":
        return sa.func.json_insert(_c.history, sa.literal_column("'$[#]'"), sa.func.json(entry))
    raise RuntimeError(f"unsupported database backend {dialect!r}")


def _param(name: str, column: str) -> Any:
    return sa.bindparam(name, type_=_c[column].type)


@functools.lru_cache(maxsize=32)
def _statement(dialect: str, kind: str) -> Any:
    """The attempt ``UPDATE`` of ``kind``, built once per backend (values come as parameters).

    Building ``update().values()`` per call, and SQLAlchemy's cache-key walk of a new statement
    object, cost more than running it.
    """
    by_id = _c.id == sa.bindparam("w_id")
    touch = {"history": _history_plus_entry(dialect), "updated_at": _param("now", "updated_at")}
    # how an attempt ends, connected or failed: no secret outlives it
    ended = {**{column: sa.null() for column in SECRET_COLUMNS}, **touch}
    if kind == "claim":
        return (
            sa.update(_S)
            .where(by_id, _c.stage == "created")
            .values(
                stage=_param("stage", "stage"),
                consumed_at=_param("now", "consumed_at"),
                consumed_by=_param("message_id", "consumed_by"),
                **touch,
            )
        )
    if kind == "stage":
        return (
            sa.update(_S)
            .where(by_id, _c.stage == sa.bindparam("expected"), _c.status == "pending")
            .values(stage=_param("stage", "stage"), updated_at=_param("now", "updated_at"))
        )
    if kind == "tokens":
        return (
            sa.update(_S)
            .where(by_id)
            .values(token_bundle=_param("bundle", "token_bundle"), app_password=sa.null(), stage="exchanged", **touch)
        )
    if kind == "connected":
        return (
            sa.update(_S)
            .where(by_id, _c.status == "pending")
            .values(
                status="connected",
                stage="connected",
                account_ids=_param("account_ids", "account_ids"),
                **ended,
            )
        )
    if kind == "failed":
        return (
            sa.update(_S)
            .where(by_id, _c.status == "pending")
            .values(
                status="failed",
                stage="failed",
                error_code=_param("error_code", "error_code"),
                error_message=_param("error_message", "error_message"),
                **ended,
            )
        )
    if kind == "append":
        return sa.update(_S).where(by_id).values(**touch)
    raise ValueError(f"no attempt statement {kind!r}")


def connected_update(dialect: str) -> Any:
    """The ``UPDATE`` that marks a pending attempt connected (params ``w_id``, ``account_ids``,
    ``now``, ``h_entry``), for statements that embed it (``repository.save_connected_accounts``)."""
    return _statement(dialect, "connected")


#: where an attempt statement runs: an open transaction (``Connection``), or an ``Engine`` for a
#: statement that is a transaction of its own
Database = Engine | Connection


def _run(db: Database, kind: str, params: dict[str, Any]) -> int:
    """Run the ``kind`` statement; its row count.

    Given an ``Engine``, the statement is a transaction of its own, run in autocommit
    (``models.oneshot``): one statement is atomic by itself, on either backend.
    """
    if isinstance(db, Engine):
        return execute(db, _statement(db.dialect.name, kind), params)
    result = cast(CursorResult[Any], db.execute(_statement(db.dialect.name, kind), params))
    return result.rowcount


def claim_state(db: Database, attempt_id: str, message_id: str, *, stage: str, now: datetime) -> bool:
    """Consume the state for ``message_id`` if nobody did (``stage = 'created'``); True when this call won.

    ``stage`` is the stage the attempt moves to: ``consumed``, or ``exchanging`` when the code
    exchange follows at once (one commit instead of two). ``consumed`` goes to the history.
    """
    params = {"w_id": attempt_id, "stage": stage, "now": now, "message_id": message_id}
    params["h_entry"] = history_entry("consumed", f"message {message_id}", now)
    return _run(db, "claim", params) == 1


def set_stage(db: Database, attempt_id: str, stage: str, *, expected: str, now: datetime) -> bool:
    """Move a pending attempt from ``expected`` to ``stage``; False when it was not there."""
    return _run(db, "stage", {"w_id": attempt_id, "stage": stage, "expected": expected, "now": now}) == 1


def store_tokens(db: Database, ring: KeyRing, attempt_id: str, tokens: TokenSet, event: str, now: datetime) -> None:
    """The encrypted token bundle in, an app password cleared, stage ``exchanged``, ``event`` in the history."""
    params = {"w_id": attempt_id, "bundle": encrypt_token_bundle(ring, attempt_id, tokens), "now": now}
    params["h_entry"] = history_entry(event, "tokens stored", now)
    _run(db, "tokens", params)


def finish_connected(db: Database, attempt_id: str, account_ids: list[str], now: datetime) -> bool:
    """Mark a pending attempt connected with its accounts, every secret cleared; False when not pending."""
    params = {"w_id": attempt_id, "account_ids": account_ids, "now": now}
    params["h_entry"] = history_entry("connected", ", ".join(account_ids), now)
    return _run(db, "connected", params) == 1


def fail_pending(
    db: Database, attempt_id: str, code: str, message: str, now: datetime, *, platform: str = "", site_id: str = ""
) -> bool:
    """End a pending attempt as failed with ``code``, every secret cleared; False when not pending.

    With ``platform`` and ``site_id`` (the caller read the attempt), its public ``attempt.failed``
    event is written in the same transaction (``db`` must then be a ``Connection``).
    """
    params = {"w_id": attempt_id, "error_code": code, "error_message": message, "now": now}
    params["h_entry"] = history_entry("failed", f"{code}: {message}", now)
    failed = _run(db, "failed", params) == 1
    if failed and platform and isinstance(db, Connection):
        event = failed_event_values(attempt_id, code, message, now, platform=platform, site_id=site_id)
        db.execute(sa.insert(_EVENTS), event)
        note_written(["attempt_failed"])
    return failed


def failed_event_values(
    attempt_id: str, code: str, message: str, now: datetime, *, platform: str, site_id: str
) -> dict[str, Any]:
    """The audit row of a failed attempt, which is also its public ``attempt.failed`` event."""
    return {
        "id": new_id(),
        "account_id": None,
        "site_id": site_id,
        "platform": platform,
        "kind": "attempt_failed",
        "reason": message[:500],
        "data": {"attempt_id": attempt_id, "error_code": code},
        "created_at": now,
    }


def append_event(db: Database, attempt_id: str, event: str, detail: str, now: datetime) -> None:
    """Add ``{at, event, detail}`` to the attempt's history (a retry, a deferral, a replay)."""
    _run(db, "append", {"w_id": attempt_id, "now": now, "h_entry": history_entry(event, detail, now)})
