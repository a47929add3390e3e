"""Fresh tokens for other modules: ``get_valid_token(account_id)``.

Returns an access token that is valid now, refreshing it first (under the same per-account lock
as every other refresh) when it is due within the platform's margin; concurrent callers share one
refresh: the lock holder calls the platform, the others wait for it and use its result. A token
is handed out while it is still valid for 30 s, or a quarter of its lifetime when that is shorter
(``workers.lifetimes``), so a 5-second token refreshed a moment ago is handed out too. An
account that needs the user to reconnect raises ``NeedsReconnect`` (the API answers 409 with the
reason) instead of handing out a dead token.

A DPoP-bound token (a Bluesky OAuth session, RFC 9449) is never handed out: it is useless
without the session's key, which never leaves the service. ``TokenBound`` (the API's ``409
token_bound``) sends the caller to ``workers.proxy.platform_request``, which signs each request
with that key; the proxy shares :func:`valid_account` with this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from models.repository import LoadedAccount, load_account
from social_accounts.errors import NeedsReconnect, NotNow, RateLimited, TokenBound, Transient
from social_accounts.values import TokenSet
from workers import runtime
from workers.adapters import adapter_for
from workers.lifetimes import handed_out
from workers.refresh import INACTIVE, RefreshResult, refresh_now
from workers.runtime import Runtime

__all__ = ["AccountNotFound", "TokenBound", "ValidToken", "get_valid_token", "valid_account"]

#: how long a caller waits for another process's refresh of the same account
LOCK_WAIT_SECONDS = 20.0


class AccountNotFound(LookupError):
    pass


@dataclass(frozen=True)
class ValidToken:
    access_token: str
    expires_at: datetime | None

    def __repr__(self) -> str:
        return f"ValidToken(access_token=<redacted>, expires_at={self.expires_at!r})"


def get_valid_token(account_id: str, *, rt: Runtime | None = None) -> ValidToken:
    """A token valid now for ``account_id``.

    Raises:
      AccountNotFound: no such account.
      NeedsReconnect: the account is expired or disconnected; the user must connect it again.
      TokenBound: the token is DPoP-bound to the service's key: use ``platform_request``.
      Transient / RateLimited / NotNow: the platform could not renew a token that is about to
        expire (a due token still valid for a while is returned as it is); try later.
    """
    rt = rt or runtime.current()
    failure, result = _refreshed(rt, account_id)
    if result is not None:
        settled = _settled_by_read(rt, result)
        if settled is not None and result.platform is not None:
            return _handed_out(settled, result.platform)
    account = _checked(rt, account_id, failure)
    return _handed_out(account.tokens, account.platform)


def valid_account(account_id: str, *, rt: Runtime) -> LoadedAccount:
    """The account with a token valid now, refreshed first (under the lock) when it is due.

    Raises as :func:`get_valid_token` does, except ``TokenBound``.
    """
    failure, _ = _refreshed(rt, account_id)
    return _checked(rt, account_id, failure)


def _refreshed(rt: Runtime, account_id: str) -> tuple[Exception | None, RefreshResult | None]:
    """Refresh when due; a failure to renew is kept, not raised: a token still valid is handed out
    all the same (a platform blip must not stop a post), a dead one is not."""
    try:
        result = refresh_now(rt, account_id, reason="token requested", wait_seconds=LOCK_WAIT_SECONDS)
    except (NotNow, Transient, RateLimited) as exc:
        return exc, None
    if result.outcome == "missing":
        raise AccountNotFound(account_id)
    return None, result


def _checked(rt: Runtime, account_id: str, failure: Exception | None) -> LoadedAccount:
    """The account read again, refused when it needs the user or its token may not be handed out."""
    with Session(rt.engine) as session:
        account = load_account(session, rt.ring, account_id)
    if account is None:
        raise AccountNotFound(account_id)
    if account.status == "disconnected" or not account.tokens.access_token:
        raise NeedsReconnect("the account is disconnected", platform=account.platform)
    if account.status == "expired":
        raise NeedsReconnect(account.row.last_error or "the account needs reconnecting", platform=account.platform)
    margin = adapter_for(rt, account.platform).refresh_margin
    if not handed_out(account.tokens, margin, rt.clock()):
        if failure is not None:
            raise failure
        raise Transient("the token is due and could not be renewed yet", platform=account.platform)
    return account


def _settled_by_read(rt: Runtime, result: RefreshResult) -> TokenSet | None:
    """The tokens as ``refresh_now`` just read them, when that read settled everything: the account
    is active-ish, not due, and its token may be handed out. A token that is not due is the token
    API's common case, and costs one read this way instead of two."""
    tokens = result.tokens
    if (
        result.outcome not in ("fresh", "nothing_to_do")
        or result.platform is None
        or result.status in INACTIVE
        or tokens is None
        or not tokens.access_token
    ):
        return None
    if not handed_out(tokens, adapter_for(rt, result.platform).refresh_margin, rt.clock()):
        return None
    return tokens


def _handed_out(tokens: TokenSet, platform: str) -> ValidToken:
    if tokens.dpop_key:
        raise TokenBound(platform)
    return ValidToken(tokens.access_token, tokens.expires_at)
