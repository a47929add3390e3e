"""Plain OAuth 2.0 (RFC 6749/7636/7009) shared by the redirect-flow adapters.

``OAuth2Adapter`` fills in the parts of :class:`PlatformAdapter` that are the same everywhere
(authorization URL, code exchange, refresh grant, RFC 7009 revocation) from a few class
attributes. A platform overrides a hook only where it really differs: TikTok's ``client_key``,
Meta's follow-up exchange, X's Basic client authentication, and so on.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any, ClassVar, Literal
from urllib.parse import urlencode

import httpx

from platforms.base import PlatformAdapter
from platforms.http import Classifier, as_int, bearer, default_timeout, json_body, oauth_error, send
from social_accounts.errors import AccessTokenExpired, NeedsReconnect, Permanent, PlatformError
from social_accounts.signing import b64url_encode
from social_accounts.values import RevokeResult, TokenSet

__all__ = ["OAuth2Adapter", "pkce_pair", "s256_challenge"]

#: errors of a token endpoint that mean the grant is gone and only the user can fix it
RECONNECT_ERRORS = frozenset({"invalid_grant", "unauthorized_client", "access_denied"})


def pkce_pair() -> tuple[str, str]:
    """A fresh ``(code_verifier, S256 code_challenge)`` pair (RFC 7636, 43+ chars)."""
    verifier = secrets.token_urlsafe(48)
    return verifier, s256_challenge(verifier)


def s256_challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return b64url_encode(digest)


class OAuth2Adapter(PlatformAdapter):
    """A standard authorization-code platform, described by class attributes."""

    authorize_url: ClassVar[str]
    token_url: ClassVar[str]
    api_url: ClassVar[str]
    #: the platform's revocation endpoint, or "" when it has none (P_REVOKE_URL turns RFC 7009 on)
    revoke_url: ClassVar[str] = ""
    scopes: ClassVar[tuple[str, ...]] = ()
    scope_separator: ClassVar[str] = " "
    #: ``basic``: HTTP Basic client_id:client_secret (X, Pinterest); ``body``: in the form body
    client_auth: ClassVar[Literal["basic", "body"]] = "body"
    #: send PKCE S256 on this platform
    use_pkce: ClassVar[bool] = True
    #: names of the settings holding the client id and secret
    client_id_setting: ClassVar[str]
    client_secret_setting: ClassVar[str]
    #: field name of the client id in authorization URLs and token bodies
    client_id_param: ClassVar[str] = "client_id"
    #: extra authorization parameters (Google: access_type=offline, prompt=consent)
    extra_authorize_params: ClassVar[dict[str, str]] = {}
    #: why a refresh cannot start when the account holds no refresh token
    missing_refresh_message: ClassVar[str] = "no refresh token was issued for this account"

    # ---- credentials ------------------------------------------------------------------------

    @property
    def client_id(self) -> str:
        return str(getattr(self.settings, self.client_id_setting) or "")

    @property
    def client_secret(self) -> str:
        return str(getattr(self.settings, self.client_secret_setting) or "")

    def api(self, path: str) -> str:
        """An API path joined to ``P_API_URL`` (or the platform's default base)."""
        return self.endpoint("api_url", self.api_url).rstrip("/") + "/" + path.lstrip("/")

    def timeout(self) -> httpx.Timeout:
        return default_timeout(self.settings.http_timeout_seconds)

    def client_basic_auth(self) -> tuple[str, str] | None:
        """HTTP Basic client credentials where the platform wants them (``client_auth="basic"``)."""
        return (self.client_id, self.client_secret) if self.client_auth == "basic" else None

    def client_body_fields(self) -> dict[str, str]:
        """Client credentials as form fields where the platform wants them (``client_auth="body"``)."""
        if self.client_auth == "basic":
            return {}
        return {self.client_id_param: self.client_id, "client_secret": self.client_secret}

    # ---- requests for other modules -----------------------------------------------------

    def request_base(self, tokens: TokenSet) -> str:
        """``P_API_URL`` (or the platform's default API base)."""
        return self.endpoint("api_url", self.api_url)

    def read_failure(self, response: httpx.Response) -> PlatformError | None:
        return self.classify(response)

    def token_rejected(self, response: httpx.Response) -> bool:
        return response.status_code == 401 or isinstance(self.classify(response), AccessTokenExpired)

    # ---- hooks ------------------------------------------------------------------------------

    def classify(self, response: httpx.Response) -> PlatformError | None:
        """The platform's reading of a failed response (API calls and token endpoint alike)."""
        return self.classify_token_error(response)

    def classify_refresh_error(self, response: httpx.Response) -> PlatformError | None:
        """A refused ``refresh_token`` grant; platforms that say "spent token" their own way override."""
        return self.classify_token_error(response)

    def classify_token_error(self, response: httpx.Response) -> PlatformError | None:
        """RFC 6749 token-endpoint errors: ``invalid_grant`` and friends need a reconnect."""
        error, description = oauth_error(response)
        if error in RECONNECT_ERRORS:
            return NeedsReconnect(
                description or "the authorization is no longer valid",
                platform=self.platform,
                status=response.status_code,
                code=error,
            )
        return None

    def parse_token_response(self, body: dict[str, Any], previous: TokenSet | None = None) -> TokenSet:
        """Turn a token response into a TokenSet; server-supplied lifetimes always win, and an
        answer without ``expires_in`` gets the platform's documented lifetime (:meth:`expiry`)."""
        access = body.get("access_token")
        if not isinstance(access, str) or not access:
            raise Permanent("token response carried no access token", platform=self.platform)
        scope = body.get("scope")
        if isinstance(scope, str):
            scopes: tuple[str, ...] = tuple(s for s in scope.replace(",", " ").split() if s)
        elif isinstance(scope, list):
            scopes = tuple(str(s) for s in scope)
        else:
            scopes = ()
        fresh = TokenSet(
            access_token=access,
            refresh_token=body.get("refresh_token") or None,
            expires_at=self.expiry(body.get("expires_in")),
            refresh_expires_at=self.expires_at(body.get("refresh_token_expires_in") or body.get("refresh_expires_in")),
            scopes=scopes,
        )
        return previous.merged_with(fresh) if previous is not None else fresh

    # ---- the flow ---------------------------------------------------------------------------

    def authorization_params(self, *, state: str, redirect_uri: str, code_challenge: str | None) -> dict[str, str]:
        params = {
            "response_type": "code",
            self.client_id_param: self.client_id,
            "redirect_uri": redirect_uri,
            "state": state,
        }
        if self.scopes:
            params["scope"] = self.scope_separator.join(self.scopes)
        if self.use_pkce and code_challenge:
            params["code_challenge"] = code_challenge
            params["code_challenge_method"] = "S256"
        params.update(self.extra_authorize_params)
        return params

    def authorization_url(
        self, *, state: str, redirect_uri: str, code_challenge: str | None, instance: str | None = None
    ) -> str:
        params = self.authorization_params(state=state, redirect_uri=redirect_uri, code_challenge=code_challenge)
        return self.endpoint("authorize_url", self.authorize_url) + "?" + urlencode(params)

    def token_request(
        self, form: dict[str, str], *, classify: Classifier | None = None, url: str | None = None
    ) -> dict[str, Any]:
        """POST to the token endpoint with the platform's client authentication."""
        response = send(
            self.http,
            "POST",
            url or self.endpoint("token_url", self.token_url),
            platform=self.platform,
            classify=classify or self.classify_token_error,
            data={**form, **self.client_body_fields()},
            auth=self.client_basic_auth(),
            headers={"Accept": "application/json"},
            timeout=self.timeout(),
        )
        return self.token_body(response)

    def token_body(self, response: httpx.Response) -> dict[str, Any]:
        """The JSON object a token endpoint answered; anything else is a broken answer."""
        body = json_body(response)
        if not isinstance(body, dict):
            raise Permanent("token endpoint answered without JSON", platform=self.platform)
        return body

    def exchange_code(
        self, *, code: str, redirect_uri: str, code_verifier: str | None, instance: str | None = None
    ) -> TokenSet:
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
        if self.use_pkce and code_verifier:
            form["code_verifier"] = code_verifier
        body = self.token_request(form)
        return self.after_exchange(self.parse_token_response(body), body)

    def after_exchange(self, tokens: TokenSet, body: dict[str, Any]) -> TokenSet:
        """Follow-up exchanges (Meta short → long-lived) and metadata from the token body."""
        return tokens

    def refresh(self, tokens: TokenSet) -> TokenSet:
        """The ``refresh_token`` grant. A response without a refresh token keeps the old one.

        A read timeout here raises ``RequestMaybeSent``: with rotating tokens the platform may
        already have spent the old refresh token, so the caller records the uncertainty.
        """
        if not tokens.refresh_token:
            raise NeedsReconnect(self.missing_refresh_message, platform=self.platform)
        body = self.token_request(
            {"grant_type": "refresh_token", "refresh_token": tokens.refresh_token},
            classify=self.classify_refresh_error,
        )
        return self.parse_token_response(body, previous=tokens)

    def revoke(self, tokens: TokenSet) -> RevokeResult:
        """RFC 7009 revocation where the platform has (or P_REVOKE_URL sets) an endpoint."""
        url = self.endpoint("revoke_url", self.revoke_url)
        if not url:
            return "none"
        send(
            self.http,
            "POST",
            url,
            platform=self.platform,
            classify=self.classify,
            data=self.revoke_form(tokens),
            auth=self.client_basic_auth(),
            timeout=self.timeout(),
        )
        return "revoked"

    def revoke_form(self, tokens: TokenSet) -> dict[str, str]:
        """The revocation body: the refresh token (it ends the whole grant) and body credentials."""
        return {"token": tokens.refresh_token or tokens.access_token, **self.client_body_fields()}

    def bearer_get(self, url: str, access_token: str, **kwargs: Any) -> httpx.Response:
        """GET with the token in the header (never the URL); the platform's classifier reads failures."""
        headers = {**bearer(access_token), **kwargs.pop("headers", {})}
        return send(
            self.http,
            "GET",
            url,
            platform=self.platform,
            classify=self.classify,
            headers=headers,
            timeout=self.timeout(),
            **kwargs,
        )

    def get_json(self, url: str, tokens: TokenSet, **kwargs: Any) -> Any:
        """GET an API resource with the account's bearer token; the body as JSON (None if not)."""
        return json_body(self.bearer_get(url, tokens.access_token, **kwargs))

    #: a count from JSON (:func:`platforms.http.as_int`), kept here for the adapters' convenience
    as_int = staticmethod(as_int)
