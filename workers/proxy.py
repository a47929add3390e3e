"""Platform requests made for other modules: ``platform_request(account_id, method, path, ...)``.

Handing out a token is not enough for everyone: a module that posts must also respect our
cooldowns and budgets, refresh on an expired-token answer under our lock, and (for DPoP-bound
tokens) sign each request with our key. So it asks us to make the call instead:

* the path is relative to the adapter's API base for this account (Graph, the Mastodon
  instance, the Bluesky PDS...), checked by ``platforms.apipath`` and against the adapter's
  ``api_prefixes``: no request can leave the platform's API host or reach its token endpoints;
* the adapter authenticates it (``authorize_request``: Bearer, Graph with ``appsecret_proof``,
  the PDS session, or a Bluesky OAuth session's DPoP proof signed for this very request with
  the key that never leaves the service; ``retry_authorization``: one more try with a DPoP
  server's fresh nonce);
* a cooldown or spent budget answers :class:`~social_accounts.errors.CoolingDown` before
  anything is sent; rate-limit signals in the answer (a 429, Meta's usage headers,
  ``remaining: 0``) feed the shared cooldowns as every worker's calls do;
* an expired-token answer (``token_rejected``: 401, Meta 190, Bluesky ``ExpiredToken``) costs
  one refresh under the account's lock (``workers.refresh.refresh_now``) and one retry; a token
  that cannot be renewed, or an account that needs its user, is ``NeedsReconnect``;
* the platform's answer goes back as it came: status, headers, body. Only the method, the path
  and the status are logged, never the query, the bodies or a header.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy.orm import Session

from models.repository import LoadedAccount, load_account
from platforms.apipath import check_relative_path, path_allowed
from platforms.base import PlatformAdapter
from platforms.http import default_timeout, json_body
from social_accounts.errors import (
    CoolingDown,
    InputError,
    NeedsReconnect,
    NotNow,
    Permanent,
    PlatformError,
    RateLimited,
    RequestMaybeSent,
    Transient,
)
from social_accounts.metrics import PLATFORM_REQUESTS
from social_accounts.values import TokenSet
from workers import runtime
from workers.adapters import adapter_for
from workers.coordination import for_runtime
from workers.ratelimits import cool_down, wait_before_call
from workers.refresh import INACTIVE, refresh_now
from workers.runtime import Runtime
from workers.status import record_failure
from workers.tokens import LOCK_WAIT_SECONDS, AccountNotFound, valid_account

__all__ = ["METHODS", "AccountNotFound", "PlatformAnswer", "platform_request"]

log = logging.getLogger("social_accounts.proxy")

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
#: a larger answer is not handed back (a 502): it would sit whole in a worker's memory
MAX_ANSWER_BYTES = 10 * 1024 * 1024
#: query parameters that carry credentials: ours to set, never the caller's
AUTH_PARAMS = frozenset({"access_token", "appsecret_proof"})
#: answer headers that describe our connection to the platform, not the platform's answer
HOP_HEADERS = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-encoding", "content-length", "set-cookie", "upgrade"}
)

#: a query value: a scalar, or a list of them (repeated parameter)
Scalar = str | int | float | bool
#: the query as sent, in order
QueryPairs = list[tuple[str, str | int | float | bool | None]]


@dataclass(frozen=True)
class PlatformAnswer:
    """The platform's answer: its status, its headers (minus hop-by-hop ones and cookies), and
    its body as JSON when it is JSON, else as text (None when empty)."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None


def platform_request(
    account_id: str,
    method: str,
    path: str,
    *,
    params: dict[str, Scalar | list[Scalar]] | None = None,
    json: Any = None,
    rt: Runtime | None = None,
) -> PlatformAnswer:
    """Call ``path`` on the account's platform with its credentials; the platform's answer.

    Parameters:
      path(str): relative to the platform's API base (``/users/me`` on X, ``/me/accounts`` on
        Graph, ``/api/v1/statuses`` on Mastodon, ``/xrpc/com.atproto.repo.createRecord`` on
        Bluesky), on the adapter's allow-list.
      params: the query; json: the JSON body (None: no body).
    Raises:
      InputError: bad method or query, an absolute URL, a path that could leave the API or is
        off the allow-list (``invalid_path``, ``path_not_allowed``); nothing was sent.
      AccountNotFound: no such account.
      NeedsReconnect: the account needs its user (expired, disconnected, token not renewable).
      CoolingDown: the platform or account is cooling down or out of budget; nothing was sent.
      Transient: the platform could not be reached (``RequestMaybeSent``: it may have been).
    """
    rt = rt or runtime.current()
    verb = _method(method)
    relative = check_relative_path(path)
    query = _query(params)
    account = _load(rt, account_id)
    adapter = adapter_for(rt, account.platform)
    if not path_allowed(relative, adapter.api_prefixes):
        raise InputError(f"{relative[:80]} is not on the {account.platform} API allow-list", code="path_not_allowed")
    wait = wait_before_call(rt, account.platform, account.id)
    if wait > 0:
        PLATFORM_REQUESTS.labels(account.platform, "cooling_down").inc()
        raise CoolingDown(wait, f"{account.platform} is cooling down for this account")
    account = _with_valid_token(rt, account_id)
    sent_at = rt.clock()
    response = _send(rt, adapter, account.tokens, verb, relative, query, json)
    if adapter.token_rejected(response):
        renewed = _renewed(rt, account, sent_at)
        if renewed is not None:
            response = _send(rt, adapter, renewed.tokens, verb, relative, query, json)
    _heed_rate_signals(rt, adapter, account, response)
    PLATFORM_REQUESTS.labels(account.platform, f"{response.status_code // 100}xx").inc()
    log.info(
        "platform request",
        extra={
            "account_id": account.id,
            "platform": account.platform,
            "method": verb,
            "path": relative,
            "status": response.status_code,
        },
    )
    return _answer(response)


# ---- the steps --------------------------------------------------------------------------------


def _method(method: object) -> str:
    verb = str(method).upper()
    if verb not in METHODS:
        raise InputError(f"the method must be one of {', '.join(sorted(METHODS))}", code="method_not_allowed")
    return verb


def _query(params: dict[str, Scalar | list[Scalar]] | None) -> QueryPairs:
    """The query as ordered pairs; credentials are refused (we add the account's own)."""
    pairs: QueryPairs = []
    for name, value in (params or {}).items():
        if name.lower() in AUTH_PARAMS:
            raise InputError(f"the query may not set {name}: the account's credentials are added", code="invalid_query")
        for item in value if isinstance(value, list) else [value]:
            pairs.append((name, ("true" if item else "false") if isinstance(item, bool) else str(item)))
    return pairs


def _load(rt: Runtime, account_id: str) -> LoadedAccount:
    with Session(rt.engine, expire_on_commit=False) as session:
        account = load_account(session, rt.ring, account_id)
    if account is None:
        raise AccountNotFound(account_id)
    if account.status in INACTIVE or not account.tokens.access_token:
        reason = account.row.last_error or f"the account is {account.status}"
        raise NeedsReconnect(reason, platform=account.platform)
    return account


def _with_valid_token(rt: Runtime, account_id: str) -> LoadedAccount:
    """The account with a token valid now, refreshed first (under the lock) when it is due
    (DPoP-bound tokens too: the adapter signs with the key, which stays here)."""
    try:
        return valid_account(account_id, rt=rt)
    except (NotNow, RateLimited) as exc:
        raise CoolingDown(exc.retry_after or 0.0, "the token could not be renewed yet") from None


def _send(
    rt: Runtime,
    adapter: PlatformAdapter,
    tokens: TokenSet,
    method: str,
    path: str,
    query: QueryPairs,
    body: Any,
) -> httpx.Response:
    base = adapter.request_base(tokens)
    url = adapter.request_url(path, tokens)
    _confined(url, base)
    adapter.check_request_url(url)
    request = rt.http.build_request(
        method,
        url,
        params=query or None,
        json=body,
        headers={"Accept": "application/json"},
        timeout=default_timeout(rt.settings.http_timeout_seconds),
    )
    request = adapter.authorize_request(request, tokens)
    response = _exchange(rt, request, adapter.platform)
    again = adapter.retry_authorization(request, response, tokens)
    return _exchange(rt, again, adapter.platform) if again is not None else response


def _confined(url: str, base: str) -> None:
    """The belt to ``check_relative_path``'s braces: the URL is on the base's origin, under its path."""
    target, api = urlsplit(url), urlsplit(base)
    same_origin = (target.scheme, target.netloc) == (api.scheme, api.netloc)
    if not same_origin or not target.path.startswith(api.path.rstrip("/") + "/"):
        raise InputError("the path leaves the platform's API", code="invalid_path")


def _exchange(rt: Runtime, request: httpx.Request, platform: str) -> httpx.Response:
    """Send without following redirects (a redirect answer goes back to the caller as it is),
    reading at most :data:`MAX_ANSWER_BYTES` of the answer."""
    chunks: list[bytes] = []
    try:
        streamed = rt.http.send(request, follow_redirects=False, stream=True)
        try:
            size = 0
            for chunk in streamed.iter_bytes():
                size += len(chunk)
                if size > MAX_ANSWER_BYTES:
                    raise Permanent(f"the platform's answer is larger than {MAX_ANSWER_BYTES} bytes", platform=platform)
                chunks.append(chunk)
        finally:
            streamed.close()
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        raise Transient(f"could not connect ({type(exc).__name__})", platform=platform) from None
    except httpx.TransportError as exc:
        raise RequestMaybeSent(f"no answer ({type(exc).__name__})", platform=platform) from None
    # the body is decoded already (gzip...): the headers that describe its encoding go
    headers = [(k, v) for k, v in streamed.headers.multi_items() if k.lower() not in HOP_HEADERS]
    return httpx.Response(streamed.status_code, headers=headers, content=b"".join(chunks), request=request)


def _renewed(rt: Runtime, account: LoadedAccount, sent_at: datetime) -> LoadedAccount | None:
    """After an expired-token answer: one refresh under the lock (shared with concurrent callers:
    a token issued since ``sent_at`` is used as it is), and the account to retry with.

    None: no new token and no verdict (the refresh failed for a reason that is not the grant's):
    the platform's answer goes back as it came.

    Raises:
      NeedsReconnect: the grant is gone, or the platform has nothing to renew the token with.
      CoolingDown / Transient: the refresh must wait, or another one still runs.
    """
    try:
        result = refresh_now(
            rt,
            account.id,
            reason="platform request got 401",
            force=True,
            wait_seconds=LOCK_WAIT_SECONDS,
            requested_at=sent_at,
        )
    except (NotNow, RateLimited) as exc:
        raise CoolingDown(exc.retry_after or 0.0, "the token could not be renewed yet") from None
    if result.outcome == "busy":
        raise Transient("another refresh of this account is still running", platform=account.platform)
    current = _load(rt, account.id)  # NeedsReconnect when the refresh found the grant gone
    if current.tokens.access_token != account.tokens.access_token:
        return current
    if result.outcome == "nothing_to_do":  # a token that never expires (a Page, Mastodon) refused
        error = NeedsReconnect("the platform refused the token and it cannot be renewed", platform=account.platform)
        _record(rt, account.id, error)
        raise error
    return None


def _heed_rate_signals(rt: Runtime, adapter: PlatformAdapter, account: LoadedAccount, response: httpx.Response) -> None:
    """Rate-limit signals of the answer become shared cooldowns, as for every worker call."""
    if response.is_success:
        adapter.report_rate_hint(response, account.id)
        return
    cool_down(for_runtime(rt), adapter.read_failure(response), platform=account.platform, account_id=account.id)


def _record(rt: Runtime, account_id: str, error: PlatformError) -> None:
    """The account's status follows a dead grant as it would after a sync (``workers.status``)."""
    with Session(rt.engine) as session, session.begin():
        account = load_account(session, rt.ring, account_id)
        if account is not None:
            record_failure(session, account.row, error, settings=rt.settings, step="request", now=rt.clock())


def _answer(response: httpx.Response) -> PlatformAnswer:
    headers = {name: value for name, value in response.headers.items() if name.lower() not in HOP_HEADERS}
    if not response.content:
        body: Any = None
    elif "json" in response.headers.get("content-type", ""):
        body = json_body(response)
        if body is None:
            body = response.text
    else:
        body = response.text
    return PlatformAnswer(response.status_code, headers, body)
