"""The public events: the outbox, its dispatcher, replay, and the webhook deliveries' bookkeeping.

The outbox is the audit trail itself (``social_account_events``): the kinds in
``PUBLIC_EVENT_KINDS`` are public events, written in the same statement or transaction as the
change they record, so a status change costs no extra write for being published. A row is
published when the dispatcher gives it ``seq``, the replay cursor. One dispatcher at a time
numbers rows (``pg_advisory_xact_lock`` on PostgreSQL, a process lock on SQLite, which has one
writer anyway), so the cursor follows commit order: a transaction that commits after a dispatch
gets a larger ``seq`` than everything that dispatch saw, and a reader paging with ``after`` never
skips a row that shows up later.

In the same transaction the dispatcher creates one delivery row per matching webhook endpoint
(unique per event and endpoint: a second dispatch of the same event cannot double it). The body
of an event is a pure function of its row (:func:`event_body`), so every try of a delivery, and
every replay, carries the same bytes.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from models.dialect import dialect_insert
from models.ids import new_id
from models.oneshot import connect, fetch_one
from models.tables import (
    PUBLIC_EVENT_KINDS,
    SocialAccountEvent,
    SocialWebhookAttempt,
    SocialWebhookDelivery,
    SocialWebhookEndpoint,
    table_of,
)

__all__ = [
    "EVENT_TYPES",
    "DeliveryJob",
    "Endpoint",
    "Published",
    "add_endpoint",
    "autocommit",
    "dispatch",
    "endpoint_id_for",
    "event_body",
    "failing_endpoints",
    "finish_delivery",
    "list_endpoints",
    "list_events",
    "load_delivery",
    "last_cursor",
    "lost_deliveries",
    "set_next_attempt",
    "mark_failed",
    "note_written",
    "take_written",
    "public_type",
    "recent_events",
    "redeliver",
    "remove_endpoint",
    "unpublished_count",
]

#: every public event type (README "Events", docs/events.schema.json)
EVENT_TYPES = (
    "account.connected",
    "account.reconnected",
    "account.status_changed",
    "account.needs_reconnect",
    "account.recovered",
    "account.disconnected",
    "attempt.failed",
)
#: statuses an account recovers from when it is active again
_TROUBLED = ("error", "rate_limited", "expired")

EVENTS = table_of(SocialAccountEvent)
ENDPOINTS = table_of(SocialWebhookEndpoint)
DELIVERIES = table_of(SocialWebhookDelivery)
ATTEMPTS = table_of(SocialWebhookAttempt)

#: a delivery whose message should have run by then is presumed lost and enqueued again
ENQUEUE_LEASE = timedelta(minutes=2)
#: rows numbered per dispatch transaction
DISPATCH_BATCH = 1000
#: the advisory lock key of the dispatcher (any constant; "sa-events" in ASCII)
_DISPATCH_LOCK_KEY = 0x73612D6576656E74
_ENDPOINT_NS = uuid.UUID("5d7e0c52-4f0b-4d52-9a39-0b1f1b8c2a61")
_local_dispatch = threading.Lock()
#: set when this thread (or task) wrote a public event; the worker middleware then nudges the
#: dispatcher once its message is done (``workers.events.EventNudge``)
_written: contextvars.ContextVar[bool] = contextvars.ContextVar("public_event_written", default=False)


def note_written(kinds: Sequence[str] = PUBLIC_EVENT_KINDS) -> None:
    """Mark that a public event was written, when any of ``kinds`` is public."""
    if any(kind in PUBLIC_EVENT_KINDS for kind in kinds):
        _written.set(True)


def take_written() -> bool:
    """Whether a public event was written since the last call; clears the mark."""
    written = _written.get()
    if written:
        _written.set(False)
    return written


def public_type(kind: str, reason: str, data: dict[str, Any]) -> str | None:
    """The public type of an audit row, or ``None`` for an audit-only row.

    One row, one event: a status change to ``expired`` is ``account.needs_reconnect``, to
    ``disconnected`` is ``account.disconnected``, back to ``active`` from trouble is
    ``account.recovered``; every other status change is ``account.status_changed``.
    """
    if kind == "connected":
        return "account.reconnected" if reason == "reconnected" else "account.connected"
    if kind == "attempt_failed":
        return "attempt.failed"
    if kind != "status_changed":
        return None
    to, frm = data.get("to"), data.get("from")
    if to == "expired":
        return "account.needs_reconnect"
    if to == "disconnected":
        return "account.disconnected"
    if to == "active" and frm in _TROUBLED:
        return "account.recovered"
    return "account.status_changed"


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def event_body(row: Any) -> dict[str, Any]:
    """``{"type", "timestamp", "data"}`` of an outbox row (the Standard Webhooks payload shape).

    Only ids, statuses, health and codes: ``data`` of an audit row never holds a secret, and
    nothing else of it is copied.
    """
    data = dict(row.data or {})
    kind_type = public_type(row.kind, row.reason, data)
    assert kind_type is not None, "not a public event"
    return {
        "type": kind_type,
        "timestamp": _iso(row.created_at),
        "data": {
            "event_id": row.id,
            "account_id": row.account_id,
            "site_id": row.site_id,
            "platform": row.platform,
            "attempt_id": data.get("attempt_id"),
            "status_from": data.get("from"),
            "status_to": data.get("to", "active" if row.kind == "connected" else None),
            "health_score": data.get("health_score"),
            "health_reason": data.get("health_reason"),
            "error_code": data.get("error_code"),
            "reason": row.reason or None,
        },
    }


@dataclass(frozen=True)
class Endpoint:
    id: str
    url: str
    event_types: list[str]
    site_ids: list[str]
    source: str
    disabled_at: datetime | None
    disabled_reason: str | None
    failing_since: datetime | None
    last_success_at: datetime | None

    def wants(self, body: dict[str, Any]) -> bool:
        """Whether this endpoint takes the event (its type and site filters; empty: everything)."""
        if self.disabled_at is not None:
            return False
        if self.event_types and body["type"] not in self.event_types:
            return False
        return not self.site_ids or body["data"]["site_id"] in self.site_ids

    def failing(self, now: datetime, after: timedelta) -> bool:
        return self.failing_since is not None and now - self.failing_since >= after


def endpoint_id_for(url: str) -> str:
    """Endpoint ids are derived from the URL, so ``WEBHOOK_URLS`` names the same row in every process."""
    return str(uuid.uuid5(_ENDPOINT_NS, url))


def _endpoint(row: Any) -> Endpoint:
    return Endpoint(
        id=row.id,
        url=row.url,
        event_types=list(row.event_types or []),
        site_ids=list(row.site_ids or []),
        source=row.source,
        disabled_at=row.disabled_at,
        disabled_reason=row.disabled_reason,
        failing_since=row.failing_since,
        last_success_at=row.last_success_at,
    )


def _ensure_env_endpoints(conn: Connection, urls: Sequence[str], now: datetime) -> None:
    if not urls:
        return
    rows = [
        {"id": endpoint_id_for(u), "url": u, "event_types": [], "site_ids": [], "source": "env", "created_at": now}
        for u in urls
    ]
    conn.execute(dialect_insert(conn.dialect.name, ENDPOINTS).values(rows).on_conflict_do_nothing())


def add_endpoint(
    engine: Engine, url: str, *, event_types: Sequence[str] = (), site_ids: Sequence[str] = (), now: datetime
) -> Endpoint:
    """Add (or update the filters of, and re-enable) the endpoint for ``url``."""
    values = {
        "id": endpoint_id_for(url),
        "url": url,
        "event_types": list(event_types),
        "site_ids": list(site_ids),
        "source": "operator",
        "created_at": now,
    }
    with engine.begin() as conn:
        stmt = dialect_insert(conn.dialect.name, ENDPOINTS).values(values)
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[ENDPOINTS.c.url],
                set_={
                    "event_types": stmt.excluded.event_types,
                    "site_ids": stmt.excluded.site_ids,
                    "disabled_at": None,
                    "disabled_reason": None,
                    "failing_since": None,
                },
            )
        )
        row = conn.execute(sa.select(ENDPOINTS).where(ENDPOINTS.c.url == url)).one()
    return _endpoint(row)


def list_endpoints(engine: Engine, urls: Sequence[str] = (), *, now: datetime | None = None) -> list[Endpoint]:
    """Every endpoint, ``WEBHOOK_URLS`` ones included (added to the table on first sight)."""
    with engine.begin() as conn:
        _ensure_env_endpoints(conn, urls, now or datetime.now(UTC))
        rows = conn.execute(sa.select(ENDPOINTS).order_by(ENDPOINTS.c.created_at, ENDPOINTS.c.url)).all()
    return [_endpoint(r) for r in rows]


def remove_endpoint(engine: Engine, ref: str) -> bool:
    """Remove the endpoint with this id or URL; its pending deliveries are dropped."""
    with engine.begin() as conn:
        ids = (
            conn.execute(
                sa.delete(ENDPOINTS)
                .where(sa.or_(ENDPOINTS.c.id == ref, ENDPOINTS.c.url == ref))
                .returning(ENDPOINTS.c.id)
            )
            .scalars()
            .all()
        )
        if ids:
            conn.execute(
                sa.update(DELIVERIES)
                .where(DELIVERIES.c.endpoint_id.in_(ids), DELIVERIES.c.status == "pending")
                .values(status="dropped", last_error="endpoint removed")
            )
    return bool(ids)


def failing_endpoints(engine: Engine, *, now: datetime, after: timedelta) -> list[Endpoint]:
    """Enabled endpoints whose deliveries have failed for at least ``after`` (doctor, page, metrics)."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(ENDPOINTS).where(
                ENDPOINTS.c.disabled_at.is_(None),
                ENDPOINTS.c.failing_since.is_not(None),
                ENDPOINTS.c.failing_since <= now - after,
            )
        ).all()
    return [_endpoint(r) for r in rows]


@dataclass(frozen=True)
class Published:
    """One event the dispatcher published: its body, cursor and the deliveries it created."""

    event_id: str
    seq: int
    body: dict[str, Any]
    delivery_ids: list[str]


_OUTBOX = (
    sa.select(EVENTS)
    .where(EVENTS.c.seq.is_(None), EVENTS.c.kind.in_(PUBLIC_EVENT_KINDS))
    .order_by(EVENTS.c.created_at, EVENTS.c.id)
)


def dispatch(
    engine: Engine, *, urls: Sequence[str] = (), now: datetime, limit: int = DISPATCH_BATCH
) -> list[Published]:
    """Publish up to ``limit`` outbox rows in order: number them and create their deliveries.

    Safe to run anywhere, any number of times at once: dispatchers queue on one lock, and a row
    is numbered once.
    """
    with _local_dispatch, engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_DISPATCH_LOCK_KEY)))
        rows = conn.execute(_OUTBOX.limit(limit)).all()
        if not rows:
            return []
        _ensure_env_endpoints(conn, urls, now)
        endpoints = [_endpoint(r) for r in conn.execute(sa.select(ENDPOINTS).where(ENDPOINTS.c.disabled_at.is_(None)))]
        last = conn.execute(sa.select(sa.func.coalesce(sa.func.max(EVENTS.c.seq), 0))).scalar_one()
        published: list[Published] = []
        numbering: list[dict[str, Any]] = []
        deliveries: list[dict[str, Any]] = []
        for offset, row in enumerate(rows, start=1):
            seq = int(last) + offset
            body = event_body(row)
            numbering.append({"w_id": row.id, "w_seq": seq})
            ids = []
            for endpoint in endpoints:
                if endpoint.wants(body):
                    delivery_id = new_id()
                    ids.append(delivery_id)
                    deliveries.append(
                        {
                            "id": delivery_id,
                            "event_id": row.id,
                            "endpoint_id": endpoint.id,
                            "account_id": row.account_id,
                            "seq": seq,
                            "status": "pending",
                            "attempts": 0,
                            "next_attempt_at": now + ENQUEUE_LEASE,
                            "created_at": now,
                            "updated_at": now,
                        }
                    )
            published.append(Published(event_id=row.id, seq=seq, body=body, delivery_ids=ids))
        conn.execute(
            sa.update(EVENTS).where(EVENTS.c.id == sa.bindparam("w_id")).values(seq=sa.bindparam("w_seq")), numbering
        )
        if deliveries:
            conn.execute(sa.insert(DELIVERIES), deliveries)
    return published


def unpublished_count(engine: Engine) -> int:
    """Outbox rows not yet published (doctor, metrics)."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count()).where(EVENTS.c.seq.is_(None), EVENTS.c.kind.in_(PUBLIC_EVENT_KINDS))
            ).scalar_one()
        )


def _replay_item(row: Any) -> dict[str, Any]:
    return {"id": row.id, "cursor": str(row.seq), **event_body(row)}


def list_events(engine: Engine, *, after: int = 0, limit: int = 100) -> list[dict[str, Any]]:
    """Published events with a cursor above ``after``, in order: ``[{id, cursor, type, timestamp, data}]``."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(EVENTS).where(EVENTS.c.seq > after).order_by(EVENTS.c.seq).limit(limit)).all()
    return [_replay_item(r) for r in rows]


def recent_events(
    engine: Engine, account_ids: Sequence[str], *, per_account: int = 5
) -> dict[str, list[dict[str, Any]]]:
    """The last public events of each account, newest first (the accounts page)."""
    if not account_ids:
        return {}
    ranked = (
        sa.select(
            EVENTS,
            sa.func.row_number()
            .over(partition_by=EVENTS.c.account_id, order_by=(EVENTS.c.created_at.desc(), EVENTS.c.id.desc()))
            .label("n"),
        )
        .where(EVENTS.c.account_id.in_(list(account_ids)), EVENTS.c.kind.in_(PUBLIC_EVENT_KINDS))
        .subquery()
    )
    with engine.connect() as conn:
        rows = conn.execute(sa.select(ranked).where(ranked.c.n <= per_account).order_by(ranked.c.n)).all()
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(row.account_id, []).append(event_body(row))
    return out


@dataclass(frozen=True)
class DeliveryJob:
    """What the delivery actor needs: where, what, whether it is still to be sent, and whether an
    earlier event of the same account is still pending for the same endpoint."""

    id: str
    event_id: str
    endpoint_id: str
    account_id: str | None
    seq: int
    status: str
    attempts: int
    url: str | None
    endpoint_disabled: bool
    body: dict[str, Any] | None
    earlier_pending: bool = False


_D, _E, _EV = DELIVERIES.alias("d"), ENDPOINTS.alias("e"), EVENTS.alias("ev")
_EARLIER = (
    sa.select(sa.literal(1))
    .select_from(DELIVERIES)
    .where(
        DELIVERIES.c.endpoint_id == _D.c.endpoint_id,
        DELIVERIES.c.account_id == _D.c.account_id,
        DELIVERIES.c.seq < _D.c.seq,
        DELIVERIES.c.status == "pending",
    )
    .exists()
)
#: one round trip for everything a delivery reads (built once: SQLAlchemy caches its compiled form)
_LOAD = (
    sa.select(
        _D.c.id,
        _D.c.event_id,
        _D.c.endpoint_id,
        _D.c.account_id,
        _D.c.seq,
        _D.c.status,
        _D.c.attempts,
        _E.c.url,
        _E.c.disabled_at,
        _EV.c.id.label("ev_id"),
        _EV.c.kind,
        _EV.c.reason,
        _EV.c.data,
        _EV.c.account_id.label("ev_account_id"),
        _EV.c.site_id,
        _EV.c.platform,
        _EV.c.created_at,
        _EARLIER.label("earlier"),
    )
    .select_from(_D.outerjoin(_E, _E.c.id == _D.c.endpoint_id).outerjoin(_EV, _EV.c.id == _D.c.event_id))
    .where(_D.c.id == sa.bindparam("delivery_id"))
)


@contextlib.contextmanager
def autocommit(engine: Engine) -> Iterator[Engine | Connection]:
    """On PostgreSQL one connection in autocommit for a whole delivery (its read and its write): a
    checkout per statement costs more than the statement. SQLite (``run``, one process) keeps
    the engine, whose write needs a transaction of its own."""
    if engine.dialect.name != "postgresql":
        yield engine
        return
    with connect(engine) as conn:
        yield conn.execution_options(isolation_level="AUTOCOMMIT")


def _one(db: Engine | Connection, statement: Any, params: dict[str, Any]) -> Any:
    if isinstance(db, Engine):
        return fetch_one(db, statement, params)
    return db.execute(statement, params).first()


def load_delivery(db: Engine | Connection, delivery_id: str) -> DeliveryJob | None:
    """The delivery with its endpoint and event, in one read (``db``: an engine, or a connection
    in autocommit from :func:`autocommit`)."""
    row = _one(db, _LOAD, {"delivery_id": delivery_id})
    if row is None:
        return None
    body = None
    if row.ev_id is not None:
        event = SimpleNamespace(
            id=row.ev_id,
            kind=row.kind,
            reason=row.reason,
            data=row.data,
            account_id=row.ev_account_id,
            site_id=row.site_id,
            platform=row.platform,
            created_at=row.created_at,
        )
        body = event_body(event)
    return DeliveryJob(
        id=row.id,
        event_id=row.event_id,
        endpoint_id=row.endpoint_id,
        account_id=row.account_id,
        seq=row.seq,
        status=row.status,
        attempts=row.attempts,
        url=row.url,
        endpoint_disabled=row.url is None or row.disabled_at is not None,
        body=body,
        earlier_pending=bool(row.earlier) and row.account_id is not None,
    )


#: a success refreshes the endpoint's ``last_success_at`` at most this often: every delivery
#: writing the one endpoint row would make all workers queue on its row lock
SUCCESS_NOTE_EVERY = timedelta(minutes=1)
_OUTCOME_STATUS = {"delivered": "delivered", "retry": "pending", "failed": "failed", "gone": "dropped"}


def _attempt_insert() -> sa.Insert:
    return sa.insert(ATTEMPTS).values(
        id=sa.bindparam("a_id"),
        delivery_id=sa.bindparam("w_id"),
        endpoint_id=sa.bindparam("w_endpoint"),
        status_code=sa.bindparam("a_status", type_=ATTEMPTS.c.status_code.type),
        latency_ms=sa.bindparam("a_latency"),
        error=sa.bindparam("a_error", type_=ATTEMPTS.c.error.type),
        at=sa.bindparam("now", type_=ATTEMPTS.c.at.type),
    )


def _delivery_update() -> sa.Update:
    return (
        sa.update(DELIVERIES)
        .where(DELIVERIES.c.id == sa.bindparam("w_id"))
        .values(
            status=sa.bindparam("d_status"),
            attempts=DELIVERIES.c.attempts + 1,
            last_status=sa.bindparam("a_status", type_=DELIVERIES.c.last_status.type),
            last_error=sa.bindparam("a_error", type_=DELIVERIES.c.last_error.type),
            updated_at=sa.bindparam("now", type_=DELIVERIES.c.updated_at.type),
            delivered_at=sa.bindparam("d_delivered", type_=DELIVERIES.c.delivered_at.type),
        )
    )


def _endpoint_update(outcome: str) -> sa.Update:
    """What an attempt's outcome does to its endpoint; only rows that change are touched."""
    endpoint = ENDPOINTS.c.id == sa.bindparam("w_endpoint")
    now = sa.bindparam("now", type_=ENDPOINTS.c.failing_since.type)
    if outcome == "delivered":
        stale = sa.bindparam("stale", type_=ENDPOINTS.c.last_success_at.type)
        changed = sa.or_(
            ENDPOINTS.c.failing_since.is_not(None),
            ENDPOINTS.c.last_success_at.is_(None),
            ENDPOINTS.c.last_success_at < stale,
        )
        return sa.update(ENDPOINTS).where(endpoint, changed).values(failing_since=None, last_success_at=now)
    if outcome == "gone":
        return (
            sa.update(ENDPOINTS)
            .where(endpoint)
            .values(disabled_at=now, disabled_reason="the receiver answered 410 Gone")
        )
    return sa.update(ENDPOINTS).where(endpoint, ENDPOINTS.c.failing_since.is_(None)).values(failing_since=now)


@functools.lru_cache(maxsize=8)
@functools.cache
def _finish_statement(outcome: str) -> Any:
    """PostgreSQL: the attempt, the delivery and the endpoint as ONE statement (data-modifying
    CTEs), in autocommit: one round trip per delivery instead of a transaction of three. Built
    once per outcome: building it is most of the statement's cost on our side."""
    attempt = _attempt_insert().returning(ATTEMPTS.c.id).cte("a")
    delivery = _delivery_update().returning(DELIVERIES.c.id).cte("d")
    endpoint = _endpoint_update(outcome).returning(ENDPOINTS.c.id).cte("e")
    return sa.select(
        sa.select(sa.func.count()).select_from(attempt).scalar_subquery(),
        sa.select(sa.func.count()).select_from(delivery).scalar_subquery(),
        sa.select(sa.func.count()).select_from(endpoint).scalar_subquery(),
    )


def finish_delivery(
    db: Engine | Connection,
    job: DeliveryJob,
    *,
    status_code: int | None,
    latency_ms: int,
    error: str | None,
    outcome: str,
    now: datetime,
) -> None:
    """Record one attempt and its effect, atomically.

    ``outcome``: ``delivered``, ``retry`` (still pending), ``failed`` (gave up), or ``gone``
    (410: the delivery is dropped, the endpoint disabled with every delivery still pending for it).
    """
    params = {
        "a_id": new_id(),
        "w_id": job.id,
        "w_endpoint": job.endpoint_id,
        "a_status": status_code,
        "a_latency": latency_ms,
        "a_error": error,
        "now": now,
        "stale": now - SUCCESS_NOTE_EVERY,
        "d_status": _OUTCOME_STATUS[outcome],
        "d_delivered": now if outcome == "delivered" else None,
    }
    if db.dialect.name == "postgresql" and outcome != "gone":
        _one(db, _finish_statement(outcome), params)
        return
    engine = db if isinstance(db, Engine) else db.engine
    with engine.begin() as conn:
        conn.execute(_attempt_insert(), params)
        conn.execute(_delivery_update(), params)
        conn.execute(_endpoint_update(outcome), params)
        if outcome == "gone":
            conn.execute(
                sa.update(DELIVERIES)
                .where(DELIVERIES.c.endpoint_id == job.endpoint_id, DELIVERIES.c.status == "pending")
                .values(status="dropped", last_error="endpoint disabled (410)", updated_at=now)
            )


def redeliver(engine: Engine, *, since: datetime, urls: Sequence[str] = (), now: datetime) -> list[str]:
    """Send every published event since ``since`` again to every enabled endpoint that takes it
    (same event id: receivers drop what they already have); returns the delivery ids to enqueue."""
    with engine.begin() as conn:
        _ensure_env_endpoints(conn, urls, now)
        endpoints = [_endpoint(r) for r in conn.execute(sa.select(ENDPOINTS).where(ENDPOINTS.c.disabled_at.is_(None)))]
        rows = conn.execute(
            sa.select(EVENTS).where(EVENTS.c.seq.is_not(None), EVENTS.c.created_at >= since).order_by(EVENTS.c.seq)
        ).all()
        ids: list[str] = []
        for row in rows:
            body = event_body(row)
            for endpoint in endpoints:
                if not endpoint.wants(body):
                    continue
                values = {
                    "id": new_id(),
                    "event_id": row.id,
                    "endpoint_id": endpoint.id,
                    "account_id": row.account_id,
                    "seq": row.seq,
                    "status": "pending",
                    "attempts": 0,
                    "next_attempt_at": now + ENQUEUE_LEASE,
                    "created_at": now,
                    "updated_at": now,
                }
                stmt = dialect_insert(conn.dialect.name, DELIVERIES).values(values)
                stmt = stmt.on_conflict_do_update(
                    index_elements=[DELIVERIES.c.event_id, DELIVERIES.c.endpoint_id],
                    set_={"status": "pending", "updated_at": now, "next_attempt_at": now + ENQUEUE_LEASE},
                ).returning(DELIVERIES.c.id)
                ids.append(str(conn.execute(stmt).scalar_one()))
    return ids


def mark_failed(engine: Engine, delivery_id: str, *, now: datetime) -> None:
    """The delivery's retries are spent (about 3 days): it stays ``failed`` until a redelivery."""
    with engine.begin() as conn:
        conn.execute(
            sa.update(DELIVERIES)
            .where(DELIVERIES.c.id == delivery_id, DELIVERIES.c.status == "pending")
            .values(status="failed", updated_at=now)
        )


def set_next_attempt(engine: Engine, delivery_id: str, *, at: datetime) -> None:
    """A retry or a deferral of the delivery is due at ``at`` (plus the lease before the sweep steps in)."""
    with engine.begin() as conn:
        conn.execute(
            sa.update(DELIVERIES)
            .where(DELIVERIES.c.id == delivery_id, DELIVERIES.c.status == "pending")
            .values(next_attempt_at=at + ENQUEUE_LEASE)
        )


def lost_deliveries(engine: Engine, *, now: datetime, limit: int = 1000) -> list[str]:
    """Pending deliveries whose message is overdue (lost with a crash): leased again, ids returned."""
    with engine.begin() as conn:
        stale = (
            sa.select(DELIVERIES.c.id)
            .where(DELIVERIES.c.status == "pending", DELIVERIES.c.next_attempt_at < now)
            .limit(limit)
        )
        if conn.dialect.name == "postgresql":
            stale = stale.with_for_update(skip_locked=True)
        ids = [str(i) for i in conn.execute(stale).scalars().all()]
        if ids:
            conn.execute(
                sa.update(DELIVERIES).where(DELIVERIES.c.id.in_(ids)).values(next_attempt_at=now + ENQUEUE_LEASE)
            )
    return ids


def last_cursor(engine: Engine) -> int:
    """The cursor of the newest published event (0 when none)."""
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(EVENTS.c.seq), 0))).scalar_one())
