"""The connect pipeline as plain functions: consume the state, exchange, fetch, upsert.

Each step is idempotent and commits before the next starts, so a retry or a redelivery of the
same message resumes where the previous run stopped:

* the state is consumed exactly once (``UPDATE ... WHERE stage = 'created'``); the consuming
  message id is stored, so only a redelivery of *that* message may continue. Any other message
  for the same attempt is a replayed callback: it is recorded as ``state_reused`` and changes
  nothing else (a second code exchange could make the platform revoke the first grant);
* the exchanged token set is stored encrypted in ``token_bundle`` before anything else, so a
  retry never exchanges the code again; a request that may have reached the token endpoint
  without an answer ends as ``exchange_uncertain`` (codes are single-use);
* accounts are upserted by their unique key in one transaction with the attempt's final state.

Functions here never raise platform errors to Dramatiq: :mod:`workers.retrying` decides whether
to retry (a ``dramatiq.Retry`` propagates) or to fail the attempt with the failing step's code.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

import dramatiq
import sqlalchemy as sa
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from models import attempts, repository
from models.tables import SocialAccount, SocialOAuthState
from platforms.base import AccountProfile, PlatformAdapter, TokenSet
from platforms.http import scrub
from social_accounts.errors import CryptoError, PlatformError, UnsafeAddress
from social_accounts.metrics import ATTEMPTS, PLATFORM_ERRORS
from workers import retrying
from workers.adapters import adapter_for
from workers.ratelimits import login_budget_wait, wait_before_call
from workers.runtime import Runtime

__all__ = [
    "fail_deferred",
    "fail_exhausted",
    "handle_bluesky_login",
    "handle_code_received",
    "next_refresh_at",
    "note_deferral",
    "note_retry",
]

log = logging.getLogger(__name__)
T = TypeVar("T")
_states = SocialOAuthState.__table__  # type: ignore[attr-defined]
_accounts = SocialAccount.__table__  # type: ignore[attr-defined]

#: what the connect actors answer (for logs and tests): the attempt's fate after this run
Outcome = str


# ---- attempt rows -------------------------------------------------------------------------


def _append(rt: Runtime, attempt_id: str, event: str, detail: str) -> None:
    with Session(rt.engine) as session, session.begin():
        row = attempts.load_attempt(session, attempt_id, for_update=True)
        if row is not None:
            attempts.append_history(row, event, detail, now=rt.clock())


def note_retry(rt: Runtime, attempt_id: str, *, step: str, reason: str, delay_ms: int | None, retry: int) -> None:
    """Record a retry in the attempt's history (every retry is visible to the API)."""
    wait = f", again in {delay_ms} ms" if delay_ms is not None else ""
    _append(rt, attempt_id, "retry", f"{step}: {reason} (retry {retry}{wait})")


def note_deferral(rt: Runtime, attempt_id: str, *, step: str, reason: str, delay_ms: int) -> None:
    """Record that a step waits for a cooldown or a budget (not a retry: nothing was sent)."""
    _append(rt, attempt_id, "deferred", f"{step}: {reason} (again in {delay_ms} ms)")


def fail_deferred(rt: Runtime, attempt_id: str, *, step: str, reason: str) -> None:
    """A pause would outlast the message (an authorization code lives minutes): fail now, clearly."""
    with Session(rt.engine) as session:
        row = session.get(SocialOAuthState, attempt_id)
        stage = row.stage if row is not None else "created"
    code = "profile_fetch_failed" if stage == "exchanged" else "token_exchange_failed"
    if step == "bluesky_login" and stage != "exchanged":
        code = "login_failed"
    fail_attempt(rt, attempt_id, code, f"{step}: {reason}, longer than the request may wait")


def fail_attempt(rt: Runtime, attempt_id: str, code: str, reason: str) -> None:
    """End a pending attempt as failed with ``code``; a finished attempt is never changed."""
    now = rt.clock()
    with Session(rt.engine) as session, session.begin():
        row = attempts.load_attempt(session, attempt_id, for_update=True)
        if row is None or row.status != "pending":
            return
        row.status, row.stage, row.error_code = "failed", "failed", code
        row.error_message = scrub(reason)
        row.token_bundle = row.app_password = row.code_verifier = None  # no secret outlives the attempt
        attempts.append_history(row, "failed", f"{code}: {scrub(reason)}", now=now)
        platform = row.platform
    ATTEMPTS.labels(platform, "failed").inc()
    log.info(
        "attempt %s failed: %s (%s)",
        attempt_id,
        code,
        scrub(reason),
        extra={"attempt_id": attempt_id, "platform": platform, "outcome": "failed", "error_code": code},
    )


def claim(rt: Runtime, attempt_id: str, message_id: str) -> SocialOAuthState | None:
    """Consume the attempt's state for ``message_id``; None when this message must stop here.

    The first message wins atomically. The same message again (a retry, or a redelivery after a
    worker died) gets the row back and resumes; another message is a replay: ``state_reused``.
    """
    now = rt.clock()
    with Session(rt.engine, expire_on_commit=False) as session, session.begin():
        result = session.execute(
            sa.update(_states)
            .where(_states.c.id == attempt_id, _states.c.stage == "created")
            .values(stage="consumed", consumed_at=now, consumed_by=message_id, updated_at=now)
        )
        won = cast(CursorResult[Any], result).rowcount == 1
        row = attempts.load_attempt(session, attempt_id, for_update=True)
        if row is None:
            log.warning("message for unknown attempt %s dropped", attempt_id)
            return None
        if won:
            attempts.append_history(row, "consumed", f"message {message_id}", now=now)
            return row
        if row.consumed_by == message_id:
            return row if row.status == "pending" else None  # finished already: nothing to resume
        attempts.append_history(row, "state_reused", f"message {message_id} ignored", now=now)
        log.warning("attempt %s: state reused by another message, ignored", attempt_id)
        return None


#: the stage while a code exchange is in flight (a redelivery that finds it knows a worker died)
EXCHANGING = "exchanging"


def _set_stage(rt: Runtime, attempt_id: str, stage: str, *, expected: str) -> None:
    """Move a pending attempt from ``expected`` to ``stage`` (committed before the next step)."""
    with Session(rt.engine) as session, session.begin():
        session.execute(
            sa.update(_states)
            .where(_states.c.id == attempt_id, _states.c.stage == expected, _states.c.status == "pending")
            .values(stage=stage, updated_at=rt.clock())
        )


#: how long a fresh token set waits for the database to come back before it is given up
STORE_PATIENCE_SECONDS = 60.0


def _store_tokens(rt: Runtime, attempt_id: str, tokens: TokenSet, event: str) -> None:
    """Persist the token set before anything uses it, waiting out a database restart.

    The tokens exist only in this process's memory and the code that bought them is spent: a
    Dramatiq retry could not get them again (the next run ends ``exchange_uncertain``). So a
    lost connection is retried here, with backoff, for :data:`STORE_PATIENCE_SECONDS`.
    """
    deadline = time.monotonic() + STORE_PATIENCE_SECONDS
    pause = 0.25
    while True:
        try:
            _store_tokens_once(rt, attempt_id, tokens, event)
            return
        except sa.exc.OperationalError:
            if time.monotonic() + pause > deadline:
                raise
            log.warning("attempt %s: database unavailable while storing tokens; trying again", attempt_id)
            time.sleep(pause)
            pause = min(pause * 2, 5.0)


def _store_tokens_once(rt: Runtime, attempt_id: str, tokens: TokenSet, event: str) -> None:
    """One transaction: the encrypted token bundle in; an app password cleared in the same commit."""
    now = rt.clock()
    with Session(rt.engine) as session, session.begin():
        row = attempts.load_attempt(session, attempt_id, for_update=True)
        if row is None:
            return
        attempts.store_token_bundle(rt.ring, row, tokens)
        row.app_password = None
        row.stage = "exchanged"
        attempts.append_history(row, event, "tokens stored", now=now)


# ---- the steps ----------------------------------------------------------------------------


def _call(
    rt: Runtime,
    attempt_id: str,
    delivery: retrying.Delivery,
    *,
    step: str,
    fail_code: str,
    fn: Callable[[], T],
    single_use: bool = False,
) -> T | None:
    """Run one platform call; on failure retry (raises ``dramatiq.Retry``) or fail the attempt (None)."""
    try:
        return fn()
    except UnsafeAddress:  # a user-supplied instance or PDS pointing into our network: never retried
        code = "instance_unreachable" if fail_code == "token_exchange_failed" else fail_code
        fail_attempt(rt, attempt_id, code, f"{step}: the address is not allowed")
        return None
    except PlatformError as error:
        PLATFORM_ERRORS.labels(error.platform or "unknown", error.kind).inc()
        decision = retrying.decide(
            error, fail_code=fail_code, retries=delivery.retries, single_use=single_use, policy=rt.retry_policy
        )
    if decision.retry is not None:
        note_retry(
            rt, attempt_id, step=step, reason=decision.reason, delay_ms=decision.delay_ms, retry=delivery.retries + 1
        )
        raise decision.retry from None
    assert decision.fail_code is not None
    fail_attempt(rt, attempt_id, decision.fail_code, f"{step}: {decision.reason}")
    return None


def _pause_check(rt: Runtime, platform: str) -> None:
    """Raise ``Deferred`` while the platform is paused app-wide (no account is known yet)."""
    wait = wait_before_call(rt, platform, None)
    if wait > 0:
        raise retrying.Deferred(wait, f"{platform} is cooling down")


def _exchange(rt: Runtime, row: SocialOAuthState, code_enc: str | None, delivery: retrying.Delivery) -> TokenSet | None:
    """The token set of this attempt: from ``token_bundle`` when stored, else by exchanging once."""
    if row.token_bundle:
        return attempts.read_token_bundle(rt.ring, row)
    if not code_enc:
        fail_attempt(rt, row.id, "token_exchange_failed", "the callback carried no code")
        return None
    try:
        code = rt.ring.decrypt(code_enc, table="message", column="code", row_id=row.id)
        verifier = attempts.attempt_secret(rt.ring, row, "code_verifier")
    except CryptoError as exc:
        fail_attempt(rt, row.id, "token_exchange_failed", f"unreadable code or verifier ({type(exc).__name__})")
        return None
    if row.stage == EXCHANGING:
        # a worker died while the code was on its way: the platform may have spent it, and a
        # replayed code can make it revoke the grant, so this is never tried again
        fail_attempt(rt, row.id, "exchange_uncertain", "exchange: the worker stopped before the answer came")
        return None
    _pause_check(rt, row.platform)
    adapter = adapter_for(rt, row.platform)
    _set_stage(rt, row.id, EXCHANGING, expected=row.stage)
    try:
        tokens = _call(
            rt,
            row.id,
            delivery,
            step="exchange",
            fail_code="token_exchange_failed",
            single_use=True,
            fn=lambda: adapter.exchange_code(
                code=code, redirect_uri=rt.settings.redirect_uri, code_verifier=verifier, instance=row.instance
            ),
        )
    except dramatiq.Retry:
        _set_stage(rt, row.id, row.stage, expected=EXCHANGING)  # the platform refused: the code was not spent
        raise
    if tokens is not None:
        _store_tokens(rt, row.id, tokens, "exchanged")
    return tokens


def next_refresh_at(
    tokens: TokenSet, margin: timedelta, now: datetime, rng: random.Random | None = None
) -> datetime | None:
    """When to refresh: ``margin`` before expiry, never more than half the lifetime, minus jitter.

    The jitter (up to 10 % of the lead, at most 5 minutes) spreads accounts connected together.
    None when the token never expires.
    """
    if tokens.expires_at is None:
        return None
    lifetime = tokens.expires_at - now
    if lifetime <= timedelta(0):
        return now
    lead = min(margin, lifetime / 2)
    jitter = (rng or random.Random()).uniform(0, min(lead.total_seconds() * 0.1, 300.0))
    return tokens.expires_at - lead - timedelta(seconds=jitter)


def _save_accounts(
    rt: Runtime, row: SocialOAuthState, adapter: PlatformAdapter, profiles: list[AccountProfile]
) -> None:
    """Upsert every account and mark the attempt connected, all in one transaction."""
    now = rt.clock()
    ids: list[str] = []
    with Session(rt.engine) as session, session.begin():
        for profile in profiles:
            # issued_at lets a refresh cap its lead at half the token's lifetime (CONTRACT.md)
            stamped = profile.tokens.replace(metadata={**profile.tokens.metadata, "issued_at": now.isoformat()})
            profile = dataclasses.replace(profile, tokens=stamped)
            account_id, inserted = repository.upsert_account(
                session,
                rt.ring,
                site_id=row.site_id,
                platform=row.platform,
                user_id=row.user_id,
                profile=profile,
                next_refresh_at=next_refresh_at(profile.tokens, adapter.refresh_margin, now),
                now=now,
            )
            _first_sync_turn(session, rt, account_id, now)
            repository.record_event(
                session,
                kind="connected",
                account_id=account_id,
                site_id=row.site_id,
                platform=row.platform,
                reason="connected" if inserted else "reconnected",
                data={"attempt_id": row.id},
                now=now,
            )
            ids.append(account_id)
        locked = attempts.load_attempt(session, row.id, for_update=True)
        if locked is None or locked.status != "pending":
            return
        locked.status, locked.stage, locked.account_ids = "connected", "connected", ids
        locked.token_bundle = locked.code_verifier = locked.app_password = None
        attempts.append_history(locked, "connected", ", ".join(ids), now=now)
    ATTEMPTS.labels(row.platform, "connected").inc()
    for account_id in ids:
        log.info(
            "account connected",
            extra={"attempt_id": row.id, "account_id": account_id, "platform": row.platform, "outcome": "connected"},
        )


def _first_sync_turn(session: Session, rt: Runtime, account_id: str, now: datetime) -> None:
    """A new account's first stats sync: a random moment within one sync period.

    Accounts connected together (a person with twenty Pages) then never sync in one burst; the
    scheduler's claim sets every later turn. An account that already has a turn keeps it.
    """
    first = now + timedelta(seconds=random.uniform(0, rt.settings.sync_every_seconds))
    session.execute(
        sa.update(_accounts)
        .where(_accounts.c.id == account_id, _accounts.c.next_sync_at.is_(None))
        .values(next_sync_at=first)
    )


def _finish(rt: Runtime, row: SocialOAuthState, tokens: TokenSet, delivery: retrying.Delivery) -> Outcome:
    """Fetch the accounts the token reaches and save them."""
    _pause_check(rt, row.platform)
    adapter = adapter_for(rt, row.platform)
    profiles = _call(
        rt,
        row.id,
        delivery,
        step="fetch_accounts",
        fail_code="profile_fetch_failed",
        fn=lambda: adapter.fetch_accounts(tokens),
    )
    if profiles is None:
        return "failed"
    if not profiles:
        fail_attempt(rt, row.id, "profile_fetch_failed", "fetch_accounts: the grant reaches no account")
        return "failed"
    _save_accounts(rt, row, adapter, profiles)
    return "connected"


# ---- entry points (called by the actors) --------------------------------------------------


def handle_code_received(
    rt: Runtime,
    *,
    attempt_id: str,
    code_enc: str | None,
    error: str | None,
    error_description: str | None,
    delivery: retrying.Delivery,
) -> Outcome:
    """The whole OAuth connect for one callback; returns the attempt's fate after this run."""
    row = claim(rt, attempt_id, delivery.message_id)
    if row is None:
        return "ignored"
    if error:
        code = "access_denied" if error == "access_denied" else "token_exchange_failed"
        fail_attempt(rt, attempt_id, code, f"{error}: {error_description or ''}".strip(": "))
        return "failed"
    tokens = _exchange(rt, row, code_enc, delivery)
    if tokens is None:
        return "failed"
    return _finish(rt, row, tokens, delivery)


def handle_bluesky_login(rt: Runtime, *, attempt_id: str, delivery: retrying.Delivery) -> Outcome:
    """Log in with the stored app password, clear it with the session stored, then save the account."""
    row = claim(rt, attempt_id, delivery.message_id)
    if row is None:
        return "ignored"
    if row.token_bundle:
        tokens: TokenSet | None = attempts.read_token_bundle(rt.ring, row)
    else:
        tokens = _login(rt, row, delivery)
    if tokens is None:
        return "failed"
    return _finish(rt, row, tokens, delivery)


def _login(rt: Runtime, row: SocialOAuthState, delivery: retrying.Delivery) -> TokenSet | None:
    try:
        password = attempts.attempt_secret(rt.ring, row, "app_password")
    except CryptoError as exc:
        password = None
        log.warning("attempt %s: app password unreadable (%s)", row.id, type(exc).__name__)
    if not password or not row.instance:
        fail_attempt(rt, row.id, "login_failed", "no handle or app password to log in with")
        return None
    handle = row.instance
    wait = login_budget_wait(rt, handle)  # createSession: 30 per 5 minutes per identifier
    if wait > 0:
        raise retrying.Deferred(wait, "the login budget for this handle is used up")
    adapter: Any = adapter_for(rt, row.platform)
    tokens: TokenSet | None = _call(
        rt,
        row.id,
        delivery,
        step="login",
        fail_code="login_failed",
        fn=lambda: adapter.login(handle, password),
    )
    if tokens is not None:
        _store_tokens(rt, row.id, tokens, "logged_in")
    return tokens


def fail_exhausted(rt: Runtime, attempt_id: str, actor_name: str, reason: str) -> None:
    """Retries ran out on an unforeseen error: fail with the code of the step it stopped in."""
    with Session(rt.engine) as session:
        row = session.get(SocialOAuthState, attempt_id)
        stage = row.stage if row is not None else "created"
    if stage == "exchanged":
        code = "save_failed"
    elif stage == EXCHANGING:
        code = "exchange_uncertain"
    elif actor_name == "bluesky_login":
        code = "login_failed"
    else:
        code = "token_exchange_failed"
    fail_attempt(rt, attempt_id, code, f"gave up after retries: {reason}")
