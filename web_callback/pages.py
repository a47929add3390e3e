"""The server-rendered accounts page: ``/sites/{site_id}/accounts``.

One page per site shows a card for every platform (``platforms.registry.platform_statuses``) with
its connected accounts, and lets the people who run the dashboard connect, sync, refresh and
disconnect. Everything goes through ``web_callback.connecting``, the same functions the ``/v1``
API calls, so the page can never do something the API would refuse (or the other way round).

No JavaScript at all: forms POST (each with a CSRF token, ``web_callback.session``), answers are
``303`` redirects back to the page, and the two "wait and see" states (an attempt still
connecting, an action just enqueued) reload themselves with ``<meta http-equiv="refresh">``.
Disconnecting asks first on a page of its own, so it never depends on a script's ``confirm()``.

Every answer is ``no-store`` and may not be framed, and a strict Content-Security-Policy allows no
script at all; avatars come from the platforms' CDNs and are fetched without a referrer.
"""

from __future__ import annotations

import math
import re
import secrets
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import jinja2
from pydantic import SecretStr, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from platforms.registry import PlatformStatus, enabled_platforms, platform_statuses
from social_accounts.health import health_colour
from web_callback import connecting
from web_callback.errors import answer_for
from web_callback.forms import read_form
from web_callback.messages import error_message
from web_callback.schemas import BlueskyConnectBody, ConnectBody
from web_callback.session import Session, SessionSigner
from web_callback.signin import SignInStore, store_for

if TYPE_CHECKING:
    from workers.runtime import Runtime

__all__ = ["BLUESKY_APP_PASSWORDS_URL", "PAGE_USER", "TEMPLATES", "page_headers", "routes"]

HERE = Path(__file__).parent
TEMPLATES = Jinja2Templates(env=jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True))
#: where Bluesky users create an app password (linked from the Bluesky card)
BLUESKY_APP_PASSWORDS_URL = "https://bsky.app/settings/app-passwords"
#: the ``user_id`` recorded for connects started from this page (the page knows no person)
PAGE_USER = "accounts-page"
#: how often the page reloads while an attempt is still connecting, and after an action
POLL_SECONDS = 2
AFTER_ACTION_SECONDS = 3

_SITE = re.compile(r"^[A-Za-z0-9._:@\-]{1,128}$")
_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' https: http: data:; "
    "form-action 'self' https: http:; frame-ancestors 'none'; base-uri 'none'"
)
#: display names of the platform ids
LABELS = {
    "facebook": "Facebook Pages",
    "instagram": "Instagram (Facebook Page)",
    "instagram_login": "Instagram (Instagram Login)",
    "twitter": "X (Twitter)",
    "linkedin": "LinkedIn",
    "tiktok": "TikTok",
    "youtube": "YouTube",
    "pinterest": "Pinterest",
    "threads": "Threads",
    "bluesky": "Bluesky",
    "mastodon": "Mastodon",
    "demo": "Demo platform",
}
NOTICES = {
    "sync": "A stats sync was requested for {name}; the counts update in a few seconds.",
    "refresh": "A token refresh was requested for {name}.",
    "disconnect": "{name} is being disconnected; its access is revoked at the platform where possible.",
}


def page_headers() -> dict[str, str]:
    """Headers of every page answer (also used by the demo provider's consent page)."""
    return {
        "Cache-Control": "no-store",
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Content-Security-Policy": _CSP,
    }


def _services(request: Request) -> Runtime:
    services: Runtime = request.app.state.services
    return services


def _signer(request: Request) -> SessionSigner:
    return SessionSigner(_services(request).settings)


def _signin(request: Request) -> SignInStore:
    """The app's sign-in store (``web_callback.signin``), made on first use."""
    state = request.app.state
    store: SignInStore | None = getattr(state, "signin", None)
    if store is None:
        store = state.signin = store_for(_services(request))
    return store


def _address(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def _read_session(request: Request, signer: SessionSigner) -> Session | None:
    """The cookie's session, unless it is forged, expired or was signed out."""
    session = signer.read_session(request)
    if session is None or _signin(request).is_ended(session.sid):
        return None
    return session


def _page_url(site_id: str, **query: str) -> str:
    path = f"/sites/{site_id}/accounts"
    return f"{path}?{urlencode(query)}" if query else path


def _site(request: Request) -> str | None:
    site_id = str(request.path_params["site_id"])
    return site_id if _SITE.match(site_id) else None


def _render(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
    return TEMPLATES.TemplateResponse(request, name, context, status_code=status, headers=page_headers())


def _plain_page(request: Request, status: int, title: str, text: str, site_id: str | None = None) -> Response:
    return _render(request, "message.html", {"title": title, "text": text, "site_id": site_id}, status)


# ---- formatting helpers (used by the templates) --------------------------------------------------


def _count(value: object) -> dict[str, Any]:
    """A count for display: the number, or unknown (never a made-up 0)."""
    if value is None:
        return {"known": False, "text": "—"}
    return {"known": True, "text": f"{int(str(value)):,}"}


def _when(value: str | None) -> str:
    if not value:
        return "never"
    moment = datetime.fromisoformat(value)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _avatar(url: object) -> str | None:
    if isinstance(url, str) and url.startswith(("https://", "http://", "/")) and not url.startswith("//"):
        return url
    return None


def _account_card(account: dict[str, Any]) -> dict[str, Any]:
    score = int(account.get("health_score") or 0)
    name = account.get("account_name") or account.get("account_handle") or account["platform_account_id"]
    return {
        **account,
        "display_name": name,
        "avatar": _avatar(account.get("account_avatar")),
        "initial": str(name)[:1].upper(),
        "followers": _count(account.get("followers_count")),
        "following": _count(account.get("following_count")),
        "posts": _count(account.get("posts_count")),
        "colour": health_colour(score) if account.get("status") != "disconnected" else "red",
        "score": score,
        "synced": _when(account.get("last_synced_at")),
        "connected": account.get("status") != "disconnected",
    }


def _platform_cards(statuses: list[PlatformStatus], accounts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_platform: dict[str, list[dict[str, Any]]] = {}
    for account in accounts:
        by_platform.setdefault(account["platform"], []).append(_account_card(account))
    cards: list[dict[str, Any]] = [
        {
            "platform": status.platform,
            "label": LABELS.get(status.platform, status.platform),
            "auth_type": status.auth_type,
            "configured": status.configured,
            "missing_env": status.missing_env,
            "available": True,
            "accounts": by_platform.pop(status.platform, []),
        }
        for status in statuses
    ]
    for platform, rows in sorted(by_platform.items()):  # accounts of a platform no longer enabled
        cards.append(
            {
                "platform": platform,
                "label": LABELS.get(platform, platform),
                "auth_type": "",
                "configured": False,
                "missing_env": [],
                "available": False,
                "accounts": rows,
            }
        )
    # what the site uses first, then what it could connect, then what needs configuring
    return sorted(cards, key=lambda card: (not card["accounts"], not card["configured"]))


# ---- banners ------------------------------------------------------------------------------------


def _attempt_banner(services: Runtime, site_id: str, attempt_id: str) -> dict[str, Any]:
    """The banner for ``?attempt=<id>``: connecting, connected (naming the accounts) or failed."""
    view = connecting.attempt_view(services, attempt_id)
    if view is None or view["site_id"] != site_id:
        return {"kind": "error", "text": "We could not find that connection attempt; please start connecting again."}
    label = LABELS.get(view["platform"], view["platform"])
    if view["status"] == "pending":
        return {"kind": "pending", "text": f"Connecting your {label} account…", "poll": True}
    if view["status"] == "connected":
        names = []
        for account_id in view["account_ids"]:
            account = connecting.account_view(services, account_id)
            if account is not None:
                handle = f" (@{account['account_handle']})" if account.get("account_handle") else ""
                names.append(f"{account.get('account_name') or account['platform_account_id']}{handle}")
        connected = ", ".join(names) if names else "the account"
        return {"kind": "success", "text": f"Connected {label}: {connected}."}
    message = error_message(view["error_code"]) or "Connecting the account failed; please try again."
    return {"kind": "error", "text": message, "code": view["error_code"]}


def _notice_banner(services: Runtime, site_id: str, notice: str, account_id: str) -> dict[str, Any] | None:
    template = NOTICES.get(notice)
    account = connecting.account_view(services, account_id) if template else None
    if template is None or account is None or account["site_id"] != site_id:
        return None
    name = account.get("account_name") or account.get("account_handle") or account["platform_account_id"]
    return {"kind": "info", "text": template.format(name=name), "reload": True}


def _page_context(services: Runtime, site_id: str, query: dict[str, str]) -> dict[str, Any]:
    """Everything the accounts page shows (blocking: runs in a worker thread)."""
    statuses = platform_statuses(services.settings)
    accounts = connecting.site_accounts(services, site_id)
    banner: dict[str, Any] | None = None
    if query.get("attempt"):
        banner = _attempt_banner(services, site_id, query["attempt"])
    elif query.get("notice") and query.get("account"):
        banner = _notice_banner(services, site_id, query["notice"], query["account"])
    cards = _platform_cards(statuses, accounts)
    _attach_events(services, cards)
    return {"cards": cards, "banner": banner, "failing_webhooks": _failing_webhooks(services)}


#: events shown per account card
CARD_EVENTS = 5


def _attach_events(services: Runtime, cards: list[dict[str, Any]]) -> None:
    """Each account card's last public events, newest first, so an operator sees why it turned red."""
    from models.outbox import recent_events

    ids = [a["id"] for card in cards for a in card["accounts"]]
    found = recent_events(services.engine, ids, per_account=CARD_EVENTS)
    for card in cards:
        for account in card["accounts"]:
            account["events"] = [
                {
                    "type": e["type"],
                    "when": _when(e["timestamp"]),
                    "change": f"{e['data']['status_from']} → {e['data']['status_to']}"
                    if e["data"]["status_from"]
                    else "",
                    "reason": e["data"]["reason"] or "",
                }
                for e in found.get(account["id"], [])
            ]


def _failing_webhooks(services: Runtime) -> list[str]:
    """Webhook endpoints failing for ``WEBHOOK_FAILING_AFTER_SECONDS`` (hosts only, never a path)."""
    from datetime import timedelta
    from urllib.parse import urlsplit

    from models.outbox import failing_endpoints

    after = timedelta(seconds=services.settings.webhook_failing_after_seconds)
    return [urlsplit(e.url).netloc for e in failing_endpoints(services.engine, now=services.clock(), after=after)]


# ---- authentication -------------------------------------------------------------------------------


def _login_page(request: Request, site_id: str, *, status: int = 401, error: str | None = None) -> Response:
    signer = _signer(request)
    cookie, token = signer.login_pair(request)
    attempt = request.query_params.get("attempt") or ""
    response = _render(
        request,
        "login.html",
        {
            "site_id": site_id,
            "login_token": token,
            "attempt": attempt if connecting.valid_id(attempt) else "",
            "error": error,
        },
        status,
    )
    signer.set_login_cookie(response, cookie)
    return response


async def _form(request: Request) -> FormData | None:
    """The posted form, bounded like the API's bodies, chunked or not; None when it is too large."""
    return await read_form(request, max_fields=20)


async def login(request: Request) -> Response:
    site_id = _site(request)
    if site_id is None:
        return _plain_page(request, 404, "Not found", "There is no such site.")
    form = await _form(request)
    if form is None:
        return _plain_page(request, 413, "Too large", "The form was too large.", site_id)
    signer = _signer(request)
    if not signer.login_ok(request, str(form.get("login_token") or "")):
        return _login_page(request, site_id, status=403, error="The sign-in form expired; please try again.")
    store, address, ticket = _signin(request), _address(request), secrets.token_hex(8)
    wait = await run_in_threadpool(store.try_sign_in, address, ticket)
    if wait > 0:  # checked before the token: past the limit even the right one is not looked at
        seconds = max(1, math.ceil(wait))
        response = _login_page(
            request, site_id, status=429, error=f"Too many wrong tokens; try again in {seconds} seconds."
        )
        response.headers["Retry-After"] = str(seconds)
        return response
    if not signer.token_matches(str(form.get("api_token") or "")):
        return _login_page(request, site_id, error="That token is not right.")  # stays counted
    await run_in_threadpool(store.forgive, address, ticket)
    attempt = str(form.get("attempt") or "")
    target = _page_url(site_id, attempt=attempt) if connecting.valid_id(attempt) else _page_url(site_id)
    value, _ = signer.new_session()
    response = RedirectResponse(target, status_code=303, headers=page_headers())
    signer.set_session_cookie(response, value)
    signer.clear_login_cookie(response)
    return response


async def _authorized_post(request: Request) -> tuple[str, FormData, Session] | Response:
    """Site id, form and session of a POST that passed the session and CSRF checks, else the refusal."""
    site_id = _site(request)
    if site_id is None:
        return _plain_page(request, 404, "Not found", "There is no such site.")
    signer = _signer(request)
    session = await run_in_threadpool(_read_session, request, signer)
    if session is None:
        return RedirectResponse(_page_url(site_id), status_code=303, headers=page_headers())
    form = await _form(request)
    if form is None:
        return _plain_page(request, 413, "Too large", "The form was too large.", site_id)
    if not signer.csrf_ok(session, str(form.get("csrf_token") or "")):
        return _plain_page(
            request,
            403,
            "Form expired",
            "This form was not sent from the accounts page (or it expired). Reload the page and try again.",
            site_id,
        )
    return site_id, form, session


async def logout(request: Request) -> Response:
    checked = await _authorized_post(request)
    if isinstance(checked, Response):
        return checked
    site_id, _, session = checked
    # ended on the server too: a copy of the cookie stops working now, not when it expires
    await run_in_threadpool(_signin(request).end_session, session.sid, expires_at=session.expires_at)
    response = RedirectResponse(_page_url(site_id), status_code=303, headers=page_headers())
    _signer(request).clear_session_cookie(response)
    return response


# ---- the page -----------------------------------------------------------------------------------


async def _signed_in(request: Request) -> tuple[str, SessionSigner, Session] | Response:
    """Site id, signer and session of a GET from a signed-in browser, else the page to show instead."""
    site_id = _site(request)
    if site_id is None:
        return _plain_page(request, 404, "Not found", "There is no such site.")
    signer = _signer(request)
    session = await run_in_threadpool(_read_session, request, signer)
    if session is None:
        return _login_page(request, site_id)
    return site_id, signer, session


async def accounts_page(request: Request, *, banner: dict[str, Any] | None = None, status: int = 200) -> Response:
    signed_in = await _signed_in(request)
    if isinstance(signed_in, Response):
        return signed_in
    site_id, signer, session = signed_in
    services = _services(request)
    query = {k: request.query_params[k] for k in ("attempt", "notice", "account") if k in request.query_params}
    context = await run_in_threadpool(_page_context, services, site_id, query)
    if banner is not None:
        context["banner"] = banner
    context.update(
        site_id=site_id,
        csrf_token=signer.csrf_token(session),
        bluesky_url=BLUESKY_APP_PASSWORDS_URL,
        poll_seconds=POLL_SECONDS,
        after_action_seconds=AFTER_ACTION_SECONDS,
        page_url=_page_url(site_id),
    )
    return _render(request, "accounts.html", context, status)


async def _refused(request: Request, site_id: str, exc: Exception) -> Response:
    """The API's answer for ``exc`` (``web_callback.errors``) as a banner; unforeseen ones re-raised."""
    answer = answer_for(exc)
    if answer is None:
        raise exc
    text = answer.message[:1].upper() + answer.message[1:]
    if answer.extra.get("missing_env"):
        text = f"{text}."
    return await accounts_page(request, banner={"kind": "error", "text": text}, status=answer.status)


async def connect(request: Request) -> Response:
    checked = await _authorized_post(request)
    if isinstance(checked, Response):
        return checked
    site_id, form, _ = checked
    services = _services(request)
    platform = str(request.path_params["platform"])
    if platform not in enabled_platforms(services.settings):
        return _plain_page(request, 404, "Not found", "There is no such platform.", site_id)
    return_to = services.settings.public_url.rstrip("/") + _page_url(site_id)
    try:
        if platform == "bluesky" and form.get("method") == "oauth":  # "Sign in with Bluesky"
            signin = BlueskyConnectBody(
                site_id=site_id, user_id=PAGE_USER, handle=str(form.get("handle") or ""), return_to=return_to
            )
            started = await run_in_threadpool(connecting.start_bluesky_oauth, services, signin)
            target = started["authorization_url"]
        elif platform == "bluesky":
            body = BlueskyConnectBody(
                site_id=site_id,
                user_id=PAGE_USER,
                handle=str(form.get("handle") or ""),
                app_password=SecretStr(str(form.get("app_password") or "")),
                return_to=return_to,
            )
            started = await run_in_threadpool(connecting.start_bluesky, services, body)
            target = _page_url(site_id, attempt=started["attempt_id"])
        else:
            instance = str(form.get("instance") or "").strip() or None
            oauth = ConnectBody(site_id=site_id, user_id=PAGE_USER, return_to=return_to, instance=instance)
            started = await run_in_threadpool(connecting.start_oauth, services, platform, oauth)
            target = started["authorization_url"]
    except ValidationError as exc:
        fields = sorted({str(err["loc"][0]) for err in exc.errors(include_input=False, include_url=False)})
        text = {
            "handle": "Enter the Bluesky handle, for example alice.bsky.social.",
            "app_password": "Enter an app password (not the account's main password).",
            "instance": "Enter the Mastodon server, for example mastodon.social.",
        }
        message = " ".join(text.get(f, f"The field '{f}' is not valid.") for f in fields)
        return await accounts_page(request, banner={"kind": "error", "text": message}, status=422)
    except Exception as exc:  # mapped by web_callback.errors, re-raised when unforeseen
        return await _refused(request, site_id, exc)
    return RedirectResponse(target, status_code=303, headers=page_headers())


def _action_endpoint(action: connecting.Action) -> Any:
    async def endpoint(request: Request) -> Response:
        checked = await _authorized_post(request)
        if isinstance(checked, Response):
            return checked
        site_id, _, _ = checked
        services = _services(request)
        account_id = str(request.path_params["account_id"])
        account = await run_in_threadpool(connecting.account_view, services, account_id)
        if account is None or account["site_id"] != site_id:
            return _plain_page(request, 404, "Not found", "This site has no such account.", site_id)
        try:
            await run_in_threadpool(connecting.enqueue_for_account, services, account_id, action, reason="manual")
        except Exception as exc:
            return await _refused(request, site_id, exc)
        return RedirectResponse(
            _page_url(site_id, notice=action, account=account_id), status_code=303, headers=page_headers()
        )

    return endpoint


async def confirm_disconnect(request: Request) -> Response:
    """The confirmation step: a page of its own with one POST button (and a way back)."""
    signed_in = await _signed_in(request)
    if isinstance(signed_in, Response):
        return signed_in
    site_id, signer, session = signed_in
    account = await run_in_threadpool(connecting.account_view, _services(request), request.path_params["account_id"])
    if account is None or account["site_id"] != site_id:
        return _plain_page(request, 404, "Not found", "This site has no such account.", site_id)
    return _render(
        request,
        "confirm_disconnect.html",
        {
            "site_id": site_id,
            "account": _account_card(account),
            "label": LABELS.get(account["platform"], account["platform"]),
            "csrf_token": signer.csrf_token(session),
            "page_url": _page_url(site_id),
        },
    )


def routes() -> list[BaseRoute]:
    base = "/sites/{site_id}/accounts"
    return [
        Route(base, accounts_page, methods=["GET"]),
        Route(f"{base}/login", login, methods=["POST"]),
        Route(f"{base}/logout", logout, methods=["POST"]),
        Route(base + "/connect/{platform}", connect, methods=["POST"]),
        Route(base + "/{account_id}/sync", _action_endpoint("sync"), methods=["POST"]),
        Route(base + "/{account_id}/refresh", _action_endpoint("refresh"), methods=["POST"]),
        Route(base + "/{account_id}/disconnect", confirm_disconnect, methods=["GET"]),
        Route(base + "/{account_id}/disconnect", _action_endpoint("disconnect"), methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]
