"""A bare Dramatiq worker: the reference ``bench/refresh.py`` and ``bench/pipeline.py`` measure
ours against.

What anyone would write with the same libraries and nothing else: a stock ``RedisBroker``, two
plain actors, one plain ``httpx.Client`` per process, and the same X (Twitter) calls ours makes
against the fake platform (a refresh is the ``refresh_token`` grant; a connect is the code
exchange with PKCE, then ``users/me``). No database, no encryption, no locks, no cooldowns, no
retry policy: the distance between ours and this is what all of those cost.

Each actor records its end in Redis (``RPUSH <ns>:bare-done:<kind> <epoch seconds>``, one write),
so the bench times the last one as exactly as it times ours by its last event.

Bench-only and never imported by the product or the bench process: the stock CLI loads it in
each worker process (``dramatiq bare_worker --path bench``), which is why it builds its broker
and client at import, as a Dramatiq module does. Environment: ``BROKER_URL``, ``BARE_NAMESPACE``,
``PUBLIC_URL`` and the fake's ``TWITTER_*`` settings (``bench/common.py: worker_env``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import dramatiq
import httpx
import redis
from dramatiq.brokers.redis import RedisBroker

REFRESH_QUEUE = "bare_refresh"
CONNECT_QUEUE = "bare_connect"

NAMESPACE = os.environ["BARE_NAMESPACE"]
TOKEN_URL = os.environ["TWITTER_TOKEN_URL"]
API_URL = os.environ["TWITTER_API_URL"].rstrip("/")
CLIENT = (os.environ["TWITTER_CLIENT_ID"], os.environ["TWITTER_CLIENT_SECRET"])
REDIRECT_URI = os.environ["PUBLIC_URL"].rstrip("/") + "/oauth/callback"
ACCEPT_JSON = {"Accept": "application/json"}

broker = RedisBroker(url=os.environ["BROKER_URL"], namespace=NAMESPACE)
dramatiq.set_broker(broker)
http = httpx.Client(timeout=10.0)
results = redis.Redis.from_url(os.environ["BROKER_URL"])


def _recorded(kind: str, work: Callable[[], None]) -> None:
    """Run ``work``; push its end time (or a failure mark) for the bench to count."""
    try:
        work()
    except Exception:
        results.rpush(f"{NAMESPACE}:bare-failed:{kind}", "1")
        raise
    results.rpush(f"{NAMESPACE}:bare-done:{kind}", repr(time.time()))


@dramatiq.actor(queue_name=REFRESH_QUEUE, max_retries=0)
def bare_refresh(refresh_token: str) -> None:
    """X's ``refresh_token`` grant with HTTP Basic client authentication."""

    def work() -> None:
        response = http.post(
            TOKEN_URL,
            data={"grant_type": "refresh_token", "refresh_token": refresh_token},
            auth=CLIENT,
            headers=ACCEPT_JSON,
        )
        response.raise_for_status()
        if not response.json().get("refresh_token"):
            raise RuntimeError("the refresh answer carried no refresh token")

    _recorded("refresh", work)


@dramatiq.actor(queue_name=CONNECT_QUEUE, max_retries=0)
def bare_connect(code: str, code_verifier: str) -> None:
    """X's code exchange (PKCE, HTTP Basic), then the profile with the new access token."""

    def work() -> None:
        token = http.post(
            TOKEN_URL,
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": REDIRECT_URI,
                "code_verifier": code_verifier,
            },
            auth=CLIENT,
            headers=ACCEPT_JSON,
        )
        token.raise_for_status()
        me = http.get(
            f"{API_URL}/users/me",
            params={"user.fields": "profile_image_url,public_metrics"},
            headers={"Authorization": f"Bearer {token.json()['access_token']}"},
        )
        me.raise_for_status()
        if not me.json().get("data", {}).get("id"):
            raise RuntimeError("users/me answered without a user")

    _recorded("connect", work)
