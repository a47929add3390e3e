"""Disconnecting an account: revoke at the platform where it can, then forget the tokens.

The account is marked ``disconnected`` first, so nothing refreshes, syncs or hands out its token
while the revocation is in flight. A revocation that fails is recorded and propagates for the
policy (``workers.policy_middleware``) to retry; it never keeps the account connected locally:
when the policy gives up (the budget is spent, the refusal is final, or a revocation that may
have reached the platform is not repeated), :func:`erase_after_failure` erases the tokens all the same.
The row is kept (status ``disconnected``, no tokens) for the audit trail; reconnecting the same
account later updates it in place, and the scheduler's cleanup erases it once it has been
disconnected for ``DISCONNECTED_RETENTION_DAYS``. With ``purge`` (``DELETE /v1/accounts/{id}?purge=true``,
``accounts purge``) the account is erased as soon as the revocation is over, in place of
erasing its tokens: the row, its events and its id in the attempts (``models.purge``); that
happens here, after the revoke, so a purge never skips the revocation.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from sqlalchemy.orm import Session

from models.purge import purge_accounts
from models.repository import load_account, record_event
from models.tables import SocialAccount
from platforms.http import scrub
from social_accounts.errors import NeedsReconnect, NotNow, PlatformError, SocialAccountsError
from social_accounts.values import TokenSet
from workers import retrying
from workers.adapters import adapter_for
from workers.ratelimits import wait_before_call
from workers.runtime import Runtime
from workers.status import set_status

__all__ = ["REVOKE_STEP", "disconnect_now", "erase_after_failure", "purge_at_once", "purge_now"]

log = logging.getLogger("social_accounts.disconnect")

#: platforms whose accounts share one revocable grant per person (the Meta user)
META_PLATFORMS = ("facebook", "instagram")
#: a revocation spends the grant: never repeated once it may have reached the platform
REVOKE_STEP = retrying.Step("revoke", fail_code="revoke_failed", single_use=True)


def disconnect_now(rt: Runtime, account_id: str, *, purge: bool = False) -> str:
    """One try at disconnecting; returns revoked, no_endpoint, grant_shared, already or missing.

    With ``purge`` the account is erased afterwards instead of kept without tokens (``missing``:
    nothing left to erase, as when a purge message is delivered again).

    Raises:
      PlatformError: the revocation failed (recorded as ``revoke_failed``; the account is already
        ``disconnected`` locally): the policy retries, or gives up and :func:`erase_after_failure`.
      NotNow: the platform is in a rate-limit pause; nothing was sent.
    """
    now = rt.clock()
    with Session(rt.engine) as session, session.begin():
        account = load_account(session, rt.ring, account_id)
        if account is None:
            return "missing"
        if account.status != "disconnected":
            account.row.next_refresh_at = None
            set_status(session, account.row, "disconnected", reason="disconnect requested", now=now)
    if not account.tokens.access_token and not account.tokens.refresh_token:
        if purge:
            purge_now(rt, account_id, "already")
        return "already"
    wait = wait_before_call(rt, account.platform, account_id)
    if wait > 0:  # the account is already disconnected locally; revoke after the pause
        with retrying.step(REVOKE_STEP.name):
            raise NotNow(wait, f"{account.platform} is cooling down")
    outcome = _revoke(rt, account_id, account.platform, account.tokens)
    if purge:
        purge_now(rt, account_id, outcome)
    else:
        _erase_tokens(rt, account_id, outcome)
    return outcome


def erase_after_failure(rt: Runtime, account_id: str, outcome: str, *, purge: bool = False) -> None:
    """The policy gave up on revoking (``revoke_failed`` or ``revoke_uncertain``): erase the tokens
    anyway, or with ``purge`` the whole account."""
    log.warning("revocation given up; erasing tokens anyway", extra={"account_id": account_id, "outcome": outcome})
    if purge:
        purge_now(rt, account_id, outcome)
    else:
        _erase_tokens(rt, account_id, outcome)


def purge_now(rt: Runtime, account_id: str, outcome: str) -> bool:
    """Erase the (disconnected) account and every trace of it; False when it was not erased.

    Not erased: it is gone already, or it was reconnected since the disconnect began (the person
    came back; their new connection is theirs to keep).
    """
    with rt.engine.begin() as conn:
        erased = bool(purge_accounts(conn, [account_id]))
    extra = {"account_id": account_id, "outcome": outcome}
    if erased:
        log.info("account purged", extra=extra)
    else:
        log.warning("account not purged: gone already, or reconnected meanwhile", extra=extra)
    return erased


def purge_at_once(rt: Runtime, account_id: str) -> tuple[str, bool]:
    """Revoke and erase now, in the caller's thread (``accounts purge``); returns (outcome, erased).

    What a revocation that fails does is the same policy's decision as in the worker
    (``workers.retrying.decide``): when it would give up (a final refusal, or a revocation that may
    have reached the platform and must not be repeated), the account is erased all the same and the
    outcome says so; when it would try again (a blip, a rate-limit pause), the purge is handed to
    the worker (``disconnect_account`` with ``purge``), which retries and then erases:
    outcome ``enqueued``, not erased yet.
    """
    try:
        outcome = disconnect_now(rt, account_id, purge=True)
    except SocialAccountsError as error:
        if error.step != REVOKE_STEP.name:  # not the revocation (an undecryptable row...): the operator's to see
            raise
        decision = retrying.decide(error, step=REVOKE_STEP, retries=0)
        if decision.action != "give_up":
            from workers.publish import request_disconnect

            request_disconnect(account_id, purge=True, broker=rt.broker)
            return "enqueued", False
        outcome = "revoke_uncertain" if decision.uncertain else "revoke_failed"
        erase_after_failure(rt, account_id, outcome, purge=True)
    with Session(rt.engine) as session:
        return outcome, session.get(SocialAccount, account_id) is None


def grant_still_shared(rt: Runtime, account_id: str, tokens: TokenSet) -> int:
    """How many other connected accounts hang on the same Meta grant.

    Meta revokes per user and app (``DELETE /{user-id}/permissions``): revoking for one Page would
    silently disconnect every other Page and Instagram account the same person connected.
    """
    user = tokens.metadata.get("meta_user_id")
    if not user:
        return 0
    table = SocialAccount.__table__  # type: ignore[attr-defined]
    query = (
        sa.select(sa.func.count())
        .select_from(table)
        .where(
            table.c.platform.in_(META_PLATFORMS),
            table.c.status != "disconnected",
            table.c.id != account_id,
            table.c.token_metadata["meta_user_id"].as_string() == str(user),
        )
    )
    with Session(rt.engine) as session:
        return int(session.execute(query).scalar_one())


def _revoke(rt: Runtime, account_id: str, platform: str, tokens: TokenSet) -> str:
    others = grant_still_shared(rt, account_id, tokens)
    if others:
        _event(
            rt, account_id, platform, "revoke_skipped", f"the grant still serves {others} other connected account(s)"
        )
        return "grant_shared"
    try:
        with retrying.step(REVOKE_STEP.name):
            result = adapter_for(rt, platform).revoke(tokens)
    except NeedsReconnect:
        return "revoked"  # the platform already considers the grant gone
    except PlatformError as error:
        _event(rt, account_id, platform, "revoke_failed", scrub(str(error)))
        raise
    if result == "revoked":
        _event(rt, account_id, platform, "revoked", "revoked at the platform")
        return "revoked"
    return "no_endpoint"


def _event(rt: Runtime, account_id: str, platform: str, kind: str, reason: str) -> None:
    with Session(rt.engine) as session, session.begin():
        record_event(session, kind=kind, account_id=account_id, platform=platform, reason=reason, now=rt.clock())


def _erase_tokens(rt: Runtime, account_id: str, outcome: str) -> None:
    now = rt.clock()
    with Session(rt.engine) as session, session.begin():
        account = load_account(session, rt.ring, account_id)
        if account is None:
            return
        row = account.row
        platform = row.platform
        row.access_token = row.refresh_token = row.dpop_key = None
        row.token_expires_at = row.refresh_token_expires_at = None
        row.next_refresh_at = None
        row.token_version = row.token_version + 1  # fences out a refresh that was in flight
        row.updated_at = now
        record_event(
            session,
            kind="disconnected",
            account_id=row.id,
            site_id=row.site_id,
            platform=row.platform,
            reason={
                "revoked": "revoked and removed",
                "no_endpoint": "the platform has no revocation endpoint",
                "grant_shared": "tokens removed; the grant stays for the person's other accounts",
                "revoke_uncertain": "the revocation may have reached the platform; not repeated; tokens removed",
            }.get(outcome, "revocation failed; tokens removed anyway"),
            data={"revocation": outcome},
            now=now,
        )
    log.info("account disconnected", extra={"account_id": account_id, "platform": platform, "outcome": outcome})
