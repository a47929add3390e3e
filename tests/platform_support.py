"""What the platform adapter tests share: a connect through the fake platform, and the checks
every adapter must pass the same way.

The checks live here once so that a property (no secret in an error, a refused connection is
``Transient``, a spent rotating refresh token revokes the grant...) means the same thing for
every platform. The fixtures (``http``, ``make``, ``adapter``, fresh fake worlds) are in
``tests/conftest.py``; a module names its adapter with ``@pytest.mark.adapter.with_args(...)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from platforms.oauth2 import pkce_pair
from social_accounts.errors import AccessTokenExpired, NeedsReconnect, RequestMaybeSent, Transient
from social_accounts.values import TokenSet
from tests.fakeplatform import FakePlatformServer
from tests.fakeplatform.core import follow_authorization
from tests.fakeplatform.facebook import follow_dialog

#: the redirect URI the Meta-family tests register (any ``.../oauth/callback`` passes the fakes)
REDIRECT = "http://127.0.0.1:8000/oauth/callback"
#: the ``state`` a test connect sends and expects back
CONNECT_STATE = "state-connect"


# ---- driving the flow --------------------------------------------------------------------------


def authorize(adapter: Any, challenge: str | None = None, **fake_params: str) -> dict[str, str]:
    """Open the adapter's authorization URL at the fake (``fake_params``: ``fake_user``,
    ``fake_deny``...) and return the query it redirects back with; ``state`` must come back.

    Without ``challenge`` a fresh PKCE challenge is sent and its verifier dropped.
    """
    challenge = challenge or pkce_pair()[1]
    url = adapter.authorization_url(
        state=CONNECT_STATE, redirect_uri=adapter.settings.redirect_uri, code_challenge=challenge
    )
    back = follow_authorization(url, browser=adapter.http, **fake_params)
    assert back["state"] == CONNECT_STATE
    return back


def connect(adapter: Any, user: str = "alice", **fake_params: str) -> TokenSet:
    """Authorize as ``user`` at the fake and exchange the code, with a real PKCE pair.

    Platforms without PKCE ignore the challenge and the verifier (their tests check that the
    token request carries no verifier).
    """
    verifier, challenge = pkce_pair()
    back = authorize(adapter, challenge, fake_user=user, **fake_params)
    return adapter.exchange_code(code=back["code"], redirect_uri=adapter.settings.redirect_uri, code_verifier=verifier)


def meta_connect(adapter: Any, http: httpx.Client, user: str | None = None) -> TokenSet:
    """Facebook Login / Threads consent at the fake Meta dialog, then the code exchange."""
    url = adapter.authorization_url(state="st4te", redirect_uri=REDIRECT, code_challenge=None)
    query = follow_dialog(http, url, user)
    return adapter.exchange_code(code=query["code"], redirect_uri=REDIRECT, code_verifier=None)


def split_url(url: str) -> tuple[str, dict[str, str]]:
    """``(scheme://host/path, {name: value})`` of an authorization URL."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}", {k: v[0] for k, v in parse_qs(parts.query).items()}


# ---- checks every adapter passes ---------------------------------------------------------------


def assert_no_secret(exc: BaseException, *secrets: str | None) -> None:
    """None of ``secrets`` appears in the error's str, repr or arguments (None values are skipped)."""
    for secret in filter(None, secrets):
        assert secret not in str(exc)
        assert secret not in repr(exc)
        assert all(secret not in str(arg) for arg in exc.args)


def assert_transient(call: Callable[[], object], *, status: int | None = None) -> Transient:
    """``call`` fails ``Transient`` (a 5xx, a refused connection): neither an expired token nor a
    request that may have been sent, both of which the caller treats differently."""
    with pytest.raises(Transient) as info:
        call()
    assert not isinstance(info.value, AccessTokenExpired | RequestMaybeSent)
    if status is not None:
        assert info.value.status == status
    return info.value


def expire_then_refresh(
    adapter: Any, fake: FakePlatformServer, tokens: TokenSet
) -> tuple[AccessTokenExpired, TokenSet]:
    """Expire the access token at the fake: reading the account must ask for a refresh first
    (``AccessTokenExpired``), and the refresh must succeed. Returns the error and the new tokens."""
    fake.grants.expire_access(tokens.access_token)
    with pytest.raises(AccessTokenExpired) as info:
        adapter.fetch_accounts(tokens)
    return info.value, adapter.refresh(tokens)


def assert_rotating_refresh(adapter: Any, first: TokenSet, works: Callable[[TokenSet], None]) -> NeedsReconnect:
    """A rotating refresh: new access and refresh tokens, the new set ``works``, and replaying the
    spent refresh token revokes the whole grant (the new one dies too). Returns the replay's error."""
    second = adapter.refresh(first)
    assert second.refresh_token and second.refresh_token != first.refresh_token
    assert second.access_token != first.access_token
    works(second)
    with pytest.raises(NeedsReconnect) as replay:
        adapter.refresh(first)
    with pytest.raises(NeedsReconnect):
        adapter.refresh(second)
    return replay.value


def assert_no_revocation(adapter: Any, fake: FakePlatformServer, tokens: TokenSet) -> None:
    """A platform without a (configured) revocation endpoint answers ``none`` and sends nothing."""
    fake.reset_log()
    assert adapter.revoke(tokens) == "none"
    assert fake.requests == []
