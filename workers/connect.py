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

The database work of a fresh callback is one read and three commits: claim and ``exchanging``
together (the pause check and the decryption run before it, so a deferral leaves nothing
claimed), the token bundle, then accounts + events + the attempt's final state. Each is a Core
statement built once: a connect needs no ORM object. The app-wide pause of every platform the
connect may call is read from Redis in one round trip (``_Pauses``).

A failed platform call propagates, named by its step (:data:`EXCHANGE`, :data:`FETCH_ACCOUNTS`,
:data:`LOGIN`): ``workers.policy_middleware`` decides whether to retry, to defer (``NotNow``) or
to give up, and the actor's hook records that here (:func:`note_retry`, :func:`fail_attempt`).
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy.exc import IntegrityError

from models import attempts, patience, repository
from models.attempts import AttemptSnapshot
from platforms.base import PlatformAdapter
from platforms.http import scrub
from social_accounts.errors import (
    CryptoError,
    InstanceUnreachable,
    NotNow,
    PlatformError,
    SocialAccountsError,
    UnsafeAddress,
)
from social_accounts.metrics import ATTEMPTS, PLATFORM_ERRORS
from social_accounts.settings import PLATFORMS
from social_accounts.values import AccountProfile, TokenSet
from workers import retrying
from workers.adapters import adapter_for
from workers.coordination import for_runtime
from workers.lifetimes import next_refresh_at
from workers.ratelimits import login_budget_wait, wait_before_call
from workers.runtime import Runtime

__all__ = [
    "EXCHANGE",
    "FETCH_ACCOUNTS",
    "LOGIN",
    "fail_attempt",
    "fail_exhausted",
    "fail_expired",
    "handle_bluesky_login",
    "handle_code_received",
    "next_refresh_at",
    "note_deferral",
    "note_retry",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: what the connect actors answer (for logs and tests): the attempt's fate after this run
Outcome = str


# ---- attempt rows -------------------------------------------------------------------------
#
# Every write below is one Core statement from ``models.attempts`` (built once per backend). A
# statement that is a transaction of its own is given the engine: it then runs in autocommit
# (``models.oneshot``), which is atomic all the same; reads that decide nothing alone run in
# autocommit too (no BEGIN/ROLLBACK round trips around one SELECT).


def _read(rt: Runtime, attempt_id: str) -> AttemptSnapshot | None:
    """The attempt as it is now, in autocommit (the write that acts on it re-checks its stage)."""
    return attempts.read_attempt(rt.engine, attempt_id)


def _append(rt: Runtime, attempt_id: str, event: str, detail: str) -> None:
    attempts.append_event(rt.engine, attempt_id, event, detail, rt.clock())


def note_retry(rt: Runtime, attempt_id: str, *, step: str, reason: str, delay_ms: int | None, retry: int) -> None:
    """Record a retry in the attempt's history (every retry is visible to the API)."""
    wait = f", again in {delay_ms} ms" if delay_ms is not None else ""
    _append(rt, attempt_id, "retry", f"{step}: {reason} (retry {retry}{wait})")


def note_deferral(rt: Runtime, attempt_id: str, *, step: str, reason: str, delay_ms: int) -> None:
    """Record that a step waits for a cooldown or a budget (not a retry: nothing was sent)."""
    _append(rt, attempt_id, "deferred", f"{step}: {reason} (again in {delay_ms} ms)")


def fail_attempt(rt: Runtime, attempt_id: str, code: str, reason: str, *, message_id: str | None = None) -> None:
    """End a pending attempt as failed with ``code``; a finished attempt is never changed.

    Every secret column is cleared in the same ``UPDATE``: no secret outlives the attempt.
    With ``message_id``, an attempt another message has claimed is left to that message.
    """
    now = rt.clock()
    message = scrub(reason)
    with rt.engine.begin() as conn:
        row = attempts.read_attempt(conn, attempt_id, for_update=True)
        if row is None or row.status != "pending":
            return
        if message_id is not None and row.consumed_by not in (None, message_id):
            return
        attempts.fail_pending(conn, attempt_id, code, message, now, platform=row.platform, site_id=row.site_id)
    ATTEMPTS.labels(row.platform, "failed").inc()
    log.info(
        "attempt %s failed: %s (%s)",
        attempt_id,
        code,
        message,
        extra={"attempt_id": attempt_id, "platform": row.platform, "outcome": "failed", "error_code": code},
    )


#: why an attempt ends when its message was too old to be run (Dramatiq's age limit skipped it)
EXPIRED_CODE_REASON = "the authorization code expired before it could be used; please connect again"
EXPIRED_RETRY_REASON = "the connection waited too long between two tries and was stopped; please connect again"
EXPIRED_LOGIN_REASON = "the login waited too long before it could be tried; please connect again"


def fail_expired(rt: Runtime, attempt_id: str, *, actor_name: str, message_id: str) -> None:
    """A connect message was dropped unrun for its age: end its attempt now as ``timeout``.

    Nothing else would: the attempt would stay pending until the reconciler's
    ``attempt_timeout_seconds`` while the person waits. An attempt that another message claimed
    is that message's to finish (a stale replay of the callback must not end it).
    """
    row = _read(rt, attempt_id)
    if row is None or row.status != "pending":
        return
    if actor_name == "bluesky_login":
        reason = EXPIRED_LOGIN_REASON
    elif row.stage in ("created", "consumed"):
        reason = EXPIRED_CODE_REASON
    else:  # a retry of this message, after the code was spent
        reason = EXPIRED_RETRY_REASON
    fail_attempt(rt, attempt_id, "timeout", reason, message_id=message_id)


def claim(rt: Runtime, attempt_id: str, message_id: str) -> AttemptSnapshot | None:
    """Consume the attempt's state for ``message_id``; None when this message must stop here.

    The first message wins atomically. The same message again (a retry, or a redelivery after a
    worker died) gets the row back and resumes; another message is a replay: ``state_reused``.
    """
    now = rt.clock()
    with rt.engine.begin() as conn:
        won = attempts.claim_state(conn, attempt_id, message_id, stage="consumed", now=now)
        row = attempts.read_attempt(conn, attempt_id, for_update=True)
        if row is None:
            log.warning("message for unknown attempt %s dropped", attempt_id)
            return None
        if won:
            return row
        if row.consumed_by == message_id:
            return row if row.status == "pending" else None  # finished already: nothing to resume
        attempts.append_event(conn, attempt_id, "state_reused", f"message {message_id} ignored", now)
    log.warning("attempt %s: state reused by another message, ignored", attempt_id)
    return None


#: the stage while a code exchange is in flight (a redelivery that finds it knows a worker died)
EXCHANGING = "exchanging"


def _set_stage(rt: Runtime, attempt_id: str, stage: str, *, expected: str) -> None:
    """Move a pending attempt from ``expected`` to ``stage`` (committed before the next step)."""
    attempts.set_stage(rt.engine, attempt_id, stage, expected=expected, now=rt.clock())


#: how long a fresh token set waits for the database to come back before it is given up
STORE_PATIENCE_SECONDS = 60.0


def _store_tokens(rt: Runtime, attempt_id: str, tokens: TokenSet, event: str) -> None:
    """Persist the token set before anything uses it, waiting out a database restart.

    The tokens exist only in this process's memory and the code that bought them is spent: a
    Dramatiq retry could not get them again (the next run ends ``exchange_uncertain``). So a
    lost connection is retried here, with backoff, for :data:`STORE_PATIENCE_SECONDS`. This is
    its own commit, with ``synchronous_commit`` left on: it must be durable before the profile
    call, or a crash after it would leave a spent code and no tokens.
    """
    patience.retry_while_unreachable(
        lambda: attempts.store_tokens(rt.engine, rt.ring, attempt_id, tokens, event, rt.clock()),
        patience=STORE_PATIENCE_SECONDS,
        max_pause=5.0,
        warning="database unavailable while storing an attempt's tokens; trying again",
        extra={"attempt_id": attempt_id},
    )


# ---- the steps ----------------------------------------------------------------------------


#: the steps of a connect, as the policy knows them (``workers.actors`` declares them on the actors)
EXCHANGE = retrying.Step("exchange", fail_code="token_exchange_failed", single_use=True)
FETCH_ACCOUNTS = retrying.Step("fetch_accounts", fail_code="profile_fetch_failed")
LOGIN = retrying.Step("login", fail_code="login_failed")


def _call(step: retrying.Step, fn: Callable[[], T]) -> T:
    """Run one platform call as ``step``; a failure propagates, named by the step, for the policy."""
    try:
        with retrying.step(step.name):
            return fn()
    except PlatformError as error:
        PLATFORM_ERRORS.labels(error.platform or "unknown", error.kind).inc()
        raise


class _Pauses:
    """The app-wide pause checks of one connect run (no account is known yet).

    Each platform call is preceded by a check. ``ask`` reads the pauses of the given platforms
    in one round trip (``Coordination.cooldowns_later``) and ``check`` uses that answer once, so a
    connect does not pay a round trip per call. A check nobody asked for ahead reads on its own.
    """

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._asked: Callable[[], dict[str, float]] | None = None

    def ask(self, platforms: Sequence[str]) -> None:
        self._asked = for_runtime(self.rt).cooldowns_later(platforms, None)

    def check(self, platform: str, step: retrying.Step) -> None:
        """Raise ``NotNow`` (for ``step``) while ``platform`` is paused app-wide."""
        asked, self._asked = self._asked, None
        wait = asked().get(platform) if asked is not None else None
        if wait is None:
            wait = wait_before_call(self.rt, platform, None)
        if wait > 0:
            with retrying.step(step.name):
                raise NotNow(wait, f"{platform} is cooling down")


#: the attempt's secrets an exchange needs: the code, the PKCE verifier, and (Bluesky OAuth) the
#: session the start made (DPoP key, DID, PDS, issuer)
Secrets = tuple[str, str | None, str | None]


def _decrypt_code(rt: Runtime, row: AttemptSnapshot, code_enc: str) -> Secrets:
    """The code, the PKCE verifier and the DPoP session (``CryptoError`` when one is unreadable)."""
    code = rt.ring.decrypt(code_enc, table="message", column="code", row_id=row.id)
    verifier = attempts.attempt_secret(rt.ring, row, "code_verifier")
    return code, verifier, attempts.attempt_secret(rt.ring, row, "dpop_key")


def _exchange(
    rt: Runtime, row: AttemptSnapshot, code_enc: str | None, delivery: retrying.Delivery, pauses: _Pauses
) -> TokenSet | None:
    """The token set of a claimed attempt: from ``token_bundle`` when stored, else by exchanging once.

    This is the general path (a retry or a redelivery resumes here); a fresh callback takes
    :func:`_claim_and_exchange`, which folds the ``exchanging`` mark into the claim.
    """
    if row.token_bundle:
        return attempts.read_token_bundle(rt.ring, row)
    if not code_enc:
        fail_attempt(rt, row.id, "token_exchange_failed", "the callback carried no code")
        return None
    try:
        secrets = _decrypt_code(rt, row, code_enc)
    except CryptoError as exc:
        fail_attempt(rt, row.id, "token_exchange_failed", f"unreadable code or verifier ({type(exc).__name__})")
        return None
    if row.stage == EXCHANGING:
        # a worker died while the code was on its way: the platform may have spent it, and a
        # replayed code can make it revoke the grant, so this is never tried again
        fail_attempt(rt, row.id, "exchange_uncertain", "exchange: the worker stopped before the answer came")
        return None
    pauses.check(row.platform, EXCHANGE)
    adapter = adapter_for(rt, row.platform)
    _set_stage(rt, row.id, EXCHANGING, expected=row.stage)
    return _exchange_marked(rt, row, adapter, secrets, delivery, pauses, before=row.stage)


def _exchange_marked(
    rt: Runtime,
    row: AttemptSnapshot,
    adapter: PlatformAdapter,
    secrets: Secrets,
    delivery: retrying.Delivery,
    pauses: _Pauses,
    *,
    before: str,
) -> TokenSet | None:
    """Spend the code (the attempt is committed as ``exchanging``) and store what it bought at once."""
    code, verifier, session = secrets

    def exchange() -> TokenSet:
        if session is not None:  # Bluesky by AT Protocol OAuth: DPoP-bound, sub checked against the DID
            oauth: Any = adapter
            tokens: TokenSet = oauth.exchange_oauth_code(code=code, code_verifier=verifier, session=session)
            return tokens
        return adapter.exchange_code(
            code=code, redirect_uri=rt.settings.redirect_uri, code_verifier=verifier, instance=row.instance
        )

    try:
        tokens = _call(EXCHANGE, exchange)
    except UnsafeAddress:  # a user-supplied instance pointing into our network: it is not one we reach
        with retrying.step(EXCHANGE.name):
            raise InstanceUnreachable("the address is not allowed", platform=row.platform) from None
    except SocialAccountsError as error:
        if not error.maybe_sent:  # the platform refused: the code was not spent, a retry may use it
            _set_stage(rt, row.id, before, expected=EXCHANGING)
        raise
    pauses.ask([row.platform])  # for the profile fetch that follows this write
    _store_tokens(rt, row.id, tokens, "exchanged")
    return tokens


class _NotClaimed(Exception):
    """The fresh-callback path stepped aside, having changed nothing: the general path decides."""


def _claim_and_exchange(
    rt: Runtime, row: AttemptSnapshot, code_enc: str, delivery: retrying.Delivery, pauses: _Pauses
) -> TokenSet | None:
    """A fresh callback's claim and exchange with one commit before the call instead of two.

    Everything that could stop the step before the call (an unreadable code or verifier, an
    app-wide cooldown) is settled first, so the claim can commit the attempt straight to
    ``exchanging``: a deferral never leaves a claimed attempt marked ``exchanging`` (which a
    redelivery would take for a worker that died mid-exchange). Raises ``_NotClaimed``, with
    nothing changed, when the general path must decide (unreadable secrets: it claims, then
    fails the attempt; another message won the state meanwhile: a replay). Returns the tokens,
    or None when the attempt failed.
    """
    try:
        secrets = _decrypt_code(rt, row, code_enc)
    except CryptoError:
        raise _NotClaimed from None
    pauses.check(row.platform, EXCHANGE)  # raises NotNow: nothing is claimed yet
    adapter = adapter_for(rt, row.platform)
    if not attempts.claim_state(rt.engine, row.id, delivery.message_id, stage=EXCHANGING, now=rt.clock()):
        raise _NotClaimed
    return _exchange_marked(rt, row, adapter, secrets, delivery, pauses, before="consumed")


def _save_accounts(rt: Runtime, row: AttemptSnapshot, adapter: PlatformAdapter, profiles: list[AccountProfile]) -> None:
    """Upsert every account, record the events and mark the attempt connected, all in one transaction.

    The upserts take no savepoint: when two connects of the same account race on the insert
    (see ``repository.upsert_account``), the whole transaction is run once more, and by then the
    other row is committed, so the upsert takes its ``DO UPDATE`` branch. ``synchronous_commit``
    stays on: this commit holds tokens the platform will not hand out again.
    """
    try:
        ids, finished = _save_accounts_once(rt, row, adapter, profiles)
    except IntegrityError:
        ids, finished = _save_accounts_once(rt, row, adapter, profiles)
    if not finished:
        return  # the attempt ended meanwhile (timed out): the accounts are saved, nothing to report
    ATTEMPTS.labels(row.platform, "connected").inc()
    for account_id in ids:
        log.info(
            "account connected",
            extra={"attempt_id": row.id, "account_id": account_id, "platform": row.platform, "outcome": "connected"},
        )


def _save_accounts_once(
    rt: Runtime, row: AttemptSnapshot, adapter: PlatformAdapter, profiles: list[AccountProfile]
) -> tuple[list[str], bool]:
    now = rt.clock()
    accounts = []
    for profile in profiles:
        # issued_at lets a refresh cap its lead at half the token's lifetime (docs/design.md, "Refresh decisions")
        stamped = profile.tokens.replace(metadata={**profile.tokens.metadata, "issued_at": now.isoformat()})
        accounts.append(
            repository.ConnectedAccount(
                profile=dataclasses.replace(profile, tokens=stamped),
                next_refresh_at=next_refresh_at(stamped, adapter.refresh_margin, now),
                next_sync_at=_first_sync_turn(rt, now),
            )
        )
    saved, finished = repository.save_connected_accounts(
        rt.engine,
        rt.ring,
        attempt_id=row.id,
        site_id=row.site_id,
        platform=row.platform,
        user_id=row.user_id,
        accounts=accounts,
        now=now,
    )
    return [account_id for account_id, _inserted in saved], finished


def _first_sync_turn(rt: Runtime, now: datetime) -> datetime:
    """A new account's first stats sync: a random moment within one sync period.

    Accounts connected together (a person with twenty Pages) then never sync in one burst; the
    scheduler's claim sets every later turn. An account that already has a turn keeps it (the
    upsert only fills an empty ``next_sync_at``).
    """
    return now + timedelta(seconds=random.uniform(0, rt.settings.sync_every_seconds))


def _finish(
    rt: Runtime, row: AttemptSnapshot, tokens: TokenSet, delivery: retrying.Delivery, pauses: _Pauses
) -> Outcome:
    """Fetch the accounts the token reaches and save them."""
    pauses.check(row.platform, FETCH_ACCOUNTS)
    adapter = adapter_for(rt, row.platform)
    profiles = _call(FETCH_ACCOUNTS, lambda: adapter.fetch_accounts(tokens))
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
    """The whole OAuth connect for one callback; returns the attempt's fate after this run.

    A fresh callback (the attempt still ``created``, a code, no error) takes the short path:
    one read, then claim and ``exchanging`` in one commit. Everything else (a retry or a
    redelivery of the claiming message, a replay, an error callback) takes the general one.
    """
    pauses = _Pauses(rt)
    if code_enc and not error:
        pauses.ask(PLATFORMS)  # the platform is in the row about to be read
        fresh = _read(rt, attempt_id)
        if fresh is not None and fresh.stage == "created":
            try:
                tokens: TokenSet | None = _claim_and_exchange(rt, fresh, code_enc, delivery, pauses)
            except _NotClaimed:
                pass
            else:
                return "failed" if tokens is None else _finish(rt, fresh, tokens, delivery, pauses)
    row = claim(rt, attempt_id, delivery.message_id)
    if row is None:
        return "ignored"
    if error:
        code = "access_denied" if error == "access_denied" else "token_exchange_failed"
        fail_attempt(rt, attempt_id, code, f"{error}: {error_description or ''}".strip(": "))
        return "failed"
    tokens = _exchange(rt, row, code_enc, delivery, pauses)
    if tokens is None:
        return "failed"
    return _finish(rt, row, tokens, delivery, pauses)


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
    return _finish(rt, row, tokens, delivery, _Pauses(rt))


def _login(rt: Runtime, row: AttemptSnapshot, delivery: retrying.Delivery) -> TokenSet | None:
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
        with retrying.step(LOGIN.name):
            raise NotNow(wait, "the login budget for this handle is used up")
    adapter: Any = adapter_for(rt, row.platform)
    tokens: TokenSet = _call(LOGIN, lambda: adapter.login(handle, password))
    _store_tokens(rt, row.id, tokens, "logged_in")
    return tokens


def fail_exhausted(rt: Runtime, attempt_id: str, actor_name: str, reason: str) -> None:
    """Retries ran out on an unforeseen error: fail with the code of the step it stopped in."""
    row = _read(rt, attempt_id)
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
