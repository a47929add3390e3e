"""What Facebook, Instagram and Threads share: Meta's error model, usage headers, and Graph calls.

Meta does not speak RFC 6749 errors. Every Graph failure (token endpoint included) is
``{"error": {"message", "type": "OAuthException", "code", "error_subcode", "fbtrace_id"}}`` and
the *code*, not the HTTP status, says what happened
(https://developers.facebook.com/docs/graph-api/guides/error-handling; docs/platforms.md):

* 190 (any subcode: 458 app removed, 460 password changed, 463 expired, 467 logged out...) and
  102 mean the grant is gone → :class:`NeedsReconnect`;
* 4 (app), 17 (user), 32 (page), 613, 80000-80009 and 80014 (Business Use Case families) are
  throttling → :class:`RateLimited`. Meta sends no ``Retry-After``; the wait comes from
  ``X-Business-Use-Case-Usage`` ``estimated_time_to_regain_access`` (minutes) when present;
* 5xx → :class:`Transient`; everything else → :class:`Permanent` (10 and 200-299 are missing
  permissions, which retrying will not grant).

:class:`MetaGraphAdapter` is the base of the Facebook and Instagram adapters: the Meta dialog,
the ``/oauth/access_token`` endpoint with its ``fb_exchange_token`` follow-up (short-lived → long-lived,
once, at connect), paginated ``/me/accounts`` plus Business Manager Pages, and revocation with
``DELETE /{user-id}/permissions``.

Tokens always travel in the ``Authorization`` header (or a POST body), never in a query string,
so a logged URL never carries one. ``appsecret_proof`` is added to every Graph read so apps
that turn on "Require App Secret" keep working.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from datetime import timedelta
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

from platforms.base import RateHint
from platforms.http import Classifier, as_int, bearer, json_body, oauth_error, scrub, send
from platforms.oauth2 import RECONNECT_ERRORS, OAuth2Adapter
from social_accounts.errors import NeedsReconnect, Permanent, PlatformError, RateLimited, Transient
from social_accounts.values import RevokeResult, TokenSet

__all__ = [
    "APP_THROTTLE_SECONDS",
    "NEAR_LIMIT_PERCENT",
    "NEAR_LIMIT_WAIT_SECONDS",
    "RECONNECT_CODES",
    "THROTTLE_CODES",
    "THROTTLE_SECONDS",
    "MetaError",
    "MetaGraphAdapter",
    "MetaOAuth2Adapter",
    "appsecret_proof",
    "classify_meta",
    "graph_base",
    "meta_error",
    "meta_rate_hint",
    "nonempty_str",
    "regain_seconds",
    "usage_near_limit",
]

#: codes that mean the token or the app authorization is gone (only the user can fix it)
RECONNECT_CODES = frozenset({190, 102})
#: throttling codes (Mixpost's list; docs/platforms.md, Facebook Pages)
THROTTLE_CODES = frozenset({4, 17, 32, 613, *range(80000, 80010), 80014})
#: code 4 is the app-wide limit: it holds back every account of the platform, not just one
APP_THROTTLE_CODES = frozenset({4})
#: permission errors: a missing scope, not a broken grant
PERMISSION_CODES = frozenset({10, *range(200, 300)})

#: wait after an app-level throttle without a regain estimate (Mixpost waits an hour)
APP_THROTTLE_SECONDS = 3600.0
#: wait after a user/page/BUC throttle without a regain estimate
THROTTLE_SECONDS = 600.0
#: a usage header at or above this percentage means "stop before Meta stops you"
NEAR_LIMIT_PERCENT = 95.0
#: how long to hold back when usage is near the limit and Meta gives no regain time; the usage
#: windows roll over an hour, so a few minutes lets the percentage fall
NEAR_LIMIT_WAIT_SECONDS = 300.0
#: a long-lived user token lasts about 60 days
#: (https://developers.facebook.com/docs/facebook-login/guides/access-tokens/get-long-lived)
LONG_LIVED_LIFETIME = timedelta(days=60)

log = logging.getLogger(__name__)

#: how many result pages of /me/accounts we follow at most (a loop guard, ~2500 Pages)
MAX_PAGES = 100


def graph_base(version: str) -> str:
    """The default Graph API base for a version (``v27.0``)."""
    return f"https://graph.facebook.com/{version}"


def appsecret_proof(access_token: str, app_secret: str) -> str:
    """HMAC-SHA256 of the access token keyed with the app secret, hex (Meta's ``appsecret_proof``)."""
    return hmac.new(app_secret.encode(), access_token.encode(), hashlib.sha256).hexdigest()


# ---- errors ------------------------------------------------------------------------------------


class MetaError:
    """The fields of a Meta error body that decide what happens next."""

    __slots__ = ("code", "message", "subcode", "type")

    def __init__(self, code: int | None, subcode: int | None, message: str, type: str) -> None:
        self.code = code
        self.subcode = subcode
        self.message = message
        self.type = type

    @property
    def label(self) -> str:
        """``"190"`` or ``"190/463"``: the code as it appears in ``last_error`` and metrics."""
        if self.code is None:
            return "unknown"
        return f"{self.code}/{self.subcode}" if self.subcode else str(self.code)


def meta_error(response: httpx.Response) -> MetaError | None:
    """The ``error`` object of a Meta error body (message scrubbed), or None when it is not one."""
    body = json_body(response)
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return None
    error = body["error"]
    return MetaError(
        code=as_int(error.get("code")),
        subcode=as_int(error.get("error_subcode")),
        message=scrub(error.get("message") or ""),
        type=str(error.get("type") or ""),
    )


def _header_json(response: httpx.Response, name: str) -> Any:
    raw = response.headers.get(name)
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _buc_entries(response: httpx.Response) -> list[dict[str, Any]]:
    """``X-Business-Use-Case-Usage`` flattened: ``{id: [{type, call_count, ...}]}`` → entries."""
    usage = _header_json(response, "x-business-use-case-usage")
    if not isinstance(usage, dict):
        return []
    entries: list[dict[str, Any]] = []
    for value in usage.values():
        items = value if isinstance(value, list) else [value]
        entries.extend(item for item in items if isinstance(item, dict))
    return entries


def _number(value: object) -> float:
    try:
        return float(str(value))
    except ValueError:
        return 0.0


def _percent(entry: dict[str, Any]) -> float:
    return max(_number(entry.get(key)) for key in ("call_count", "total_cputime", "total_time"))


def regain_seconds(response: httpx.Response) -> float | None:
    """The longest ``estimated_time_to_regain_access`` (minutes) in the BUC header, as seconds."""
    minutes = [_number(e.get("estimated_time_to_regain_access")) for e in _buc_entries(response)]
    longest = max(minutes, default=0.0)
    return longest * 60.0 if longest > 0 else None


def usage_near_limit(response: httpx.Response) -> float | None:
    """Seconds to hold back when a usage header reports ≥ 95 %; None while there is room.

    Reads ``X-App-Usage`` (``{call_count, total_cputime, total_time}`` in percent) and every entry
    of ``X-Business-Use-Case-Usage``. Meta's regain estimate wins; otherwise
    :data:`NEAR_LIMIT_WAIT_SECONDS`. Meant for a shared cooldown that stops the next call before
    Meta throttles it.
    """
    regain = regain_seconds(response)
    app = _header_json(response, "x-app-usage")
    near = isinstance(app, dict) and _percent(app) >= NEAR_LIMIT_PERCENT
    near = near or any(_percent(entry) >= NEAR_LIMIT_PERCENT for entry in _buc_entries(response))
    if not near and regain is None:
        return None
    return regain if regain is not None else NEAR_LIMIT_WAIT_SECONDS


def _app_usage_near_limit(response: httpx.Response) -> bool:
    app = _header_json(response, "x-app-usage")
    return isinstance(app, dict) and _percent(app) >= NEAR_LIMIT_PERCENT


def meta_rate_hint(response: httpx.Response) -> RateHint | None:
    """Usage near its limit, scoped as Meta scopes the limit itself.

    ``X-App-Usage`` counts the whole app: at ≥ 95 % every account waits (``"app"``).
    ``X-Business-Use-Case-Usage`` counts one business object (the Page or Instagram account the
    token acts for): at ≥ 95 % only that account waits (``"account"``), the others keep going
    (https://developers.facebook.com/docs/graph-api/overview/rate-limiting#buc-rate-limits).
    """
    seconds = usage_near_limit(response)
    if seconds is None:
        return None
    return RateHint(seconds, "app" if _app_usage_near_limit(response) else "account")


def classify_meta(response: httpx.Response, platform: str) -> PlatformError | None:
    """Meta's reading of a failed response; None leaves it to the shared defaults (429, 5xx)."""
    status = response.status_code
    error = meta_error(response)
    if error is None:
        # not a Graph error body: an RFC 6749 one (Threads' token endpoint may answer so) or none
        code, description = oauth_error(response)
        if code in RECONNECT_ERRORS:
            return NeedsReconnect(
                description or "the authorization is no longer valid", platform=platform, status=status, code=code
            )
        return None
    if error.code in THROTTLE_CODES:
        app_wide = error.code in APP_THROTTLE_CODES
        retry = regain_seconds(response)
        if retry is None:
            retry = APP_THROTTLE_SECONDS if app_wide else THROTTLE_SECONDS
        return RateLimited(
            error.message or "rate limited",
            retry_after=retry,
            scope="app" if app_wide else "account",
            platform=platform,
            status=status,
            code=error.label,
        )
    if error.code in RECONNECT_CODES:
        return NeedsReconnect(
            error.message or "the access token is no longer valid", platform=platform, status=status, code=error.label
        )
    if status >= 500:
        return Transient(error.message or "platform error", platform=platform, status=status, code=error.label)
    if status == 429:
        return None
    if error.code in PERMISSION_CODES:
        return Permanent(error.message or "a permission is missing", platform=platform, status=status, code=error.label)
    return Permanent(error.message or "request refused", platform=platform, status=status, code=error.label)


def nonempty_str(value: object) -> str | None:
    """A Graph string field, or None when it is absent, empty or not a string."""
    return value if isinstance(value, str) and value else None


def is_permission_error(exc: PlatformError) -> bool:
    """True for Meta's "permission missing" family (10, 200-299)."""
    if not isinstance(exc, Permanent) or not exc.code:
        return False
    head = exc.code.split("/", 1)[0]
    return head.isdigit() and int(head) in PERMISSION_CODES


# ---- what every Meta adapter shares -----------------------------------------------------------


class MetaOAuth2Adapter(OAuth2Adapter):
    """Meta's reading of errors and usage headers, and its short → long-lived token upgrade.

    The base of :class:`MetaGraphAdapter` (Facebook, Instagram) and of the Threads adapter:
    different hosts, apps and grant names, the same error model and the same rule that a code
    exchange is followed at once by a long-lived exchange, finished later if that one fails.
    """

    scope_separator = ","
    use_pkce = False

    def classify(self, response: httpx.Response) -> PlatformError | None:
        return classify_meta(response, self.platform)

    def classify_token_error(self, response: httpx.Response) -> PlatformError | None:
        return classify_meta(response, self.platform)

    def rate_hint(self, response: httpx.Response) -> RateHint | None:
        """Usage headers near their limit: the app (``X-App-Usage``) or one account (BUC)."""
        return meta_rate_hint(response)

    def token_rejected(self, response: httpx.Response) -> bool:
        """Meta says a token is dead with code 190 (or 102) in the body, whatever the HTTP status."""
        error = meta_error(response)
        return response.status_code == 401 or (error is not None and error.code in RECONNECT_CODES)

    def token_get(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        """A token ``GET`` on the adapter's API host: the long-lived exchange and refresh of Threads
        and Instagram Login, answered (and refused) like any Graph call."""
        response = send(
            self.http,
            "GET",
            self.api(path),
            platform=self.platform,
            classify=self.classify,
            params=params,
            headers={"Accept": "application/json"},
            timeout=self.timeout(),
        )
        return self.token_body(response)

    def exchange_long_lived(self, tokens: TokenSet) -> TokenSet:
        """The platform's exchange of a (short- or long-lived) token for a fresh long-lived one."""
        raise NotImplementedError

    def exchange_by_get(self, tokens: TokenSet, grant_type: str) -> TokenSet:
        """``GET access_token?grant_type=<grant_type>`` with the app secret: the exchange of
        Threads (``th_exchange_token``) and Instagram Login (``ig_exchange_token``)."""
        params = {"grant_type": grant_type, "client_secret": self.client_secret, "access_token": tokens.access_token}
        return self.long_lived(tokens, self.token_get("access_token", params))

    def long_lived(self, tokens: TokenSet, body: dict[str, Any]) -> TokenSet:
        """The long-lived token set of an exchange answer; the server's ``expires_in`` wins and,
        when it sends none, the platform's documented lifetime is assumed (``default_lifetime``,
        else the 60 days of a long-lived user token)."""
        fresh = self.parse_token_response(body)
        expires_at = fresh.expires_at
        if expires_at is None:
            log.warning(
                "long-lived exchange carried no expires_in; assuming 60 days", extra={"platform": self.platform}
            )
            expires_at = self.clock() + LONG_LIVED_LIFETIME
        return TokenSet(
            access_token=fresh.access_token,
            refresh_token=None,
            expires_at=expires_at,
            scopes=fresh.scopes or tokens.scopes,
            metadata={**tokens.metadata, "long_lived": True},
        )

    def long_lived_or_later(self, tokens: TokenSet) -> TokenSet:
        """Right after the code exchange: upgrade now, or mark the short token for later.

        The code is spent, so a temporary failure of the follow-up must not lose the login: the
        short token comes back marked ``long_lived: False`` and :meth:`ensure_long_lived`
        finishes the job on the next (retryable) call.
        """
        try:
            return self.exchange_long_lived(tokens)
        except (Transient, RateLimited):
            return tokens.replace(metadata={**tokens.metadata, "long_lived": False})

    def ensure_long_lived(self, tokens: TokenSet) -> TokenSet:
        """The long-lived form of ``tokens``, exchanging now if the code exchange could not."""
        if tokens.metadata.get("long_lived") is False:
            return self.exchange_long_lived(tokens)
        return tokens


# ---- the Facebook / Instagram base ------------------------------------------------------------


class MetaGraphAdapter(MetaOAuth2Adapter):
    """Facebook Login on the Graph API, shared by the Facebook and Instagram adapters.

    * The dialog is ``https://www.facebook.com/{ver}/dialog/oauth``; scopes are comma-separated;
      no PKCE (UNCONFIRMED for the manual web flow, and no reference client sends it).
    * The token endpoint is ``{graph}/oauth/access_token`` with the client id and secret as
      POST form fields. Unless ``P_TOKEN_URL`` is set it follows ``P_API_URL``, so a proxy or a
      sandbox only needs the API base.
    * The code yields a short-lived (≈1 h) user token; ``after_exchange`` trades it at once for
      a long-lived (≈60 d) one with ``grant_type=fb_exchange_token``. Should that follow-up fail
      with a temporary error, the code is already spent, so the short token is returned marked
      ``long_lived: False`` and :meth:`ensure_long_lived` finishes the job on the next call
      (``fetch_accounts`` is safe to retry; a code exchange is not).
    """

    required_env = ("META_APP_ID", "META_APP_SECRET")
    client_id_setting = "meta_app_id"
    client_secret_setting = "meta_app_secret"
    token_url = ""  # derived from the API base; see token_endpoint()

    #: page size requested from /me/accounts (Graph's default is 25)
    page_limit: ClassVar[int] = 100
    #: Graph nodes: the token's own (``/me``) and any node id (``/{id}/feed``...); never
    #: ``/oauth/...`` or ``/debug_token``
    api_prefixes: ClassVar[tuple[str, ...]] = ("/me", "/[0-9]*")

    # ---- endpoints -----------------------------------------------------------------------------

    @property
    def version(self) -> str:
        return self.settings.meta_graph_version

    @property
    def api_base(self) -> str:
        return self.endpoint("api_url", graph_base(self.version)).rstrip("/")

    def api(self, path: str) -> str:
        return self.api_base + "/" + path.lstrip("/")

    def request_base(self, tokens: TokenSet) -> str:
        return self.api_base

    def authorize_request(self, request: httpx.Request, tokens: TokenSet) -> httpx.Request:
        """Graph's access token in the header (a logged URL never carries it) with
        ``appsecret_proof``, as every Graph read here sends it."""
        request.headers["Authorization"] = f"Bearer {tokens.access_token}"
        if self.client_secret:
            proof = appsecret_proof(tokens.access_token, self.client_secret)
            request.url = request.url.copy_merge_params({"appsecret_proof": proof})
        return request

    def token_endpoint(self) -> str:
        return self.endpoint("token_url", self.api("oauth/access_token"))

    def authorization_url(
        self, *, state: str, redirect_uri: str, code_challenge: str | None, instance: str | None = None
    ) -> str:
        default = f"https://www.facebook.com/{self.version}/dialog/oauth"
        params = self.authorization_params(state=state, redirect_uri=redirect_uri, code_challenge=None)
        return self.endpoint("authorize_url", default) + "?" + urlencode(params)

    # ---- tokens ---------------------------------------------------------------------------------

    def token_request(
        self, form: dict[str, str], *, classify: Classifier | None = None, url: str | None = None
    ) -> dict[str, Any]:
        return super().token_request(form, classify=classify, url=url or self.token_endpoint())

    def exchange_code(
        self, *, code: str, redirect_uri: str, code_verifier: str | None, instance: str | None = None
    ) -> TokenSet:
        """The documented fields only (``code``, ``redirect_uri`` + client credentials): Meta's
        code exchange has no ``grant_type``, so none is sent."""
        body = self.token_request({"code": code, "redirect_uri": redirect_uri})
        return self.after_exchange(self.parse_token_response(body), body)

    def exchange_long_lived(self, tokens: TokenSet) -> TokenSet:
        """``fb_exchange_token``: a (short- or long-lived) user token → a fresh long-lived one."""
        body = self.token_request({"grant_type": "fb_exchange_token", "fb_exchange_token": tokens.access_token})
        return self.long_lived(tokens, body)

    def after_exchange(self, tokens: TokenSet, body: dict[str, Any]) -> TokenSet:
        return self.long_lived_or_later(tokens)

    # ---- Graph reads ------------------------------------------------------------------------------

    def graph_get(self, url: str, access_token: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        """GET a Graph URL with the token in the header and ``appsecret_proof`` added."""
        query = dict(params or {})
        query["appsecret_proof"] = appsecret_proof(access_token, self.client_secret)
        response = self.bearer_get(url, access_token, params=query)
        body = json_body(response)
        if not isinstance(body, dict):
            raise Permanent("Graph answered without a JSON object", platform=self.platform, status=response.status_code)
        return body

    def user_id(self, tokens: TokenSet) -> str:
        """The Meta user id behind a user token (``GET /me?fields=id``)."""
        body = self.graph_get(self.api("me"), tokens.access_token, {"fields": "id"})
        uid = body.get("id")
        if not uid:
            raise Permanent("Graph /me returned no id", platform=self.platform)
        return str(uid)

    def granted_permissions(self, tokens: TokenSet) -> tuple[str, ...]:
        """The permissions the user granted (``GET /me/permissions``, status ``granted``).

        Meta's token answers carry no ``scope``, and a user may decline some permissions in the
        dialog: this is the documented way to know
        (https://developers.facebook.com/docs/graph-api/reference/user/permissions/).
        """
        body = self.graph_get(self.api("me/permissions"), tokens.access_token)
        data = body.get("data")
        items = data if isinstance(data, list) else []
        return tuple(
            str(item["permission"])
            for item in items
            if isinstance(item, dict) and item.get("status") == "granted" and item.get("permission")
        )

    def list_pages(self, tokens: TokenSet, fields: str, granted: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """Every Page the user can act for: ``/me/accounts``, then, with ``business_management``
        granted, the Pages of each business (``/me/businesses`` → ``owned_pages`` and
        ``client_pages``), which ``/me/accounts`` does not list. A Page seen twice counts once
        (the first answer wins).

        https://developers.facebook.com/docs/graph-api/reference/business/owned_pages/ and
        https://developers.facebook.com/docs/marketing-api/reference/business/client_pages/.
        A business edge refused for a missing permission (the user has no role on that asset)
        is skipped: those Pages are not reachable, the others are.
        """
        pages: dict[str, dict[str, Any]] = {}
        for page in self.list_edge(tokens, "me/accounts", fields):
            pages.setdefault(str(page["id"]), page)
        if "business_management" in granted:
            for business in self.list_edge(tokens, "me/businesses", "id,name"):
                for edge in ("owned_pages", "client_pages"):
                    try:
                        found = self.list_edge(tokens, f"{business['id']}/{edge}", fields)
                    except Permanent as exc:
                        if is_permission_error(exc):
                            continue
                        raise
                    for page in found:
                        pages.setdefault(str(page["id"]), page)
        return list(pages.values())

    def list_edge(self, tokens: TokenSet, path: str, fields: str) -> list[dict[str, Any]]:
        """Every item of a Graph edge, following ``paging.next`` to the end.

        ``paging.next`` is an absolute URL chosen by Meta; it is followed only on the API's own
        origin (our token must not travel elsewhere), with any ``access_token`` it carries
        removed from the query and sent in the header instead.
        """
        items: list[dict[str, Any]] = []
        url: str | None = self.api(path)
        params: dict[str, str] | None = {"fields": fields, "limit": str(self.page_limit)}
        for _ in range(MAX_PAGES):
            if url is None:
                return items
            body = self.graph_get(url, tokens.access_token, params)
            data = body.get("data")
            if isinstance(data, list):
                items.extend(item for item in data if isinstance(item, dict) and item.get("id"))
            paging = body.get("paging")
            url, params = self._next_page(paging.get("next") if isinstance(paging, dict) else None)
        raise Permanent(f"/{path} has more than {MAX_PAGES} result pages", platform=self.platform)

    def _next_page(self, next_url: object) -> tuple[str | None, dict[str, str] | None]:
        if not isinstance(next_url, str) or not next_url:
            return None, None
        parts = urlsplit(next_url)
        base = urlsplit(self.api_base)
        if (parts.scheme, parts.netloc) != (base.scheme, base.netloc):
            raise Permanent("paging.next points at another host; not following it", platform=self.platform)
        query = {k: v for k, v in parse_qsl(parts.query, keep_blank_values=True)}
        query.pop("access_token", None)
        query.pop("appsecret_proof", None)
        return urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")), query

    # ---- revocation -------------------------------------------------------------------------------

    def app_access_token(self) -> str:
        """Meta's app access token, ``{app-id}|{app-secret}`` (a secret: header only)."""
        return f"{self.client_id}|{self.client_secret}"

    def revoke(self, tokens: TokenSet) -> RevokeResult:
        """``DELETE /{user-id}/permissions``: de-authorize the app for the Meta user.

        Sent with the *app* access token: a Page account stores only its Page token (the user
        token is not kept), and the app token works even after the user token expired. The
        permissions edge belongs to the user, so this removes the app for every Page and
        Instagram account that user connected through this app, not just this one.
        """
        user_id = tokens.metadata.get("meta_user_id")
        if not user_id:
            raise Permanent("no Meta user id stored for this account; cannot revoke", platform=self.platform)
        send(
            self.http,
            "DELETE",
            self.api(f"{user_id}/permissions"),
            platform=self.platform,
            classify=self.classify,
            headers=bearer(self.app_access_token()),
            timeout=self.timeout(),
        )
        return "revoked"
