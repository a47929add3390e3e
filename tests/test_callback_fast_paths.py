"""The callback's cheap paths give exactly what the general ones gave (``bench/callback.py`` is why
they exist): the query parser and its bounds, the raw ASGI answers, the redirect's ``Location``,
the message the wire module encodes and the batcher's idle timer.

The references are the code they replaced: Starlette's ``QueryParams``, its ``RedirectResponse`` and
``PlainTextResponse``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from starlette.datastructures import QueryParams
from starlette.responses import PlainTextResponse, RedirectResponse

from social_accounts.errors import InputError
from social_accounts.settings import Settings
from tests.support import consume_all
from tests.waiting import await_until
from web_callback.batching import BatchEnqueuer
from web_callback.callback import (
    _ERROR_CODE,
    LIMITS,
    MAX_QUERY_BYTES,
    _plain,
    _Redirects,
    _see_other,
    read_params,
    with_attempt,
)
from web_callback.state import SignedState, sign_state, verify_state
from workers.messages import build_message, encode_call, encode_for_redis
from workers.publish import code_received_kwargs, code_received_message

# ---- the query string -------------------------------------------------------------------------


def reference_params(query_string: bytes) -> dict[str, str]:
    """What the endpoint read before, through Starlette's ``request.query_params``."""
    if len(query_string) > MAX_QUERY_BYTES:
        raise InputError("The request is too large to be a sign-in response.", code="bad_request")
    query = QueryParams(query_string)
    params: dict[str, str] = {}
    for name, limit in LIMITS.items():
        value = query.get(name)
        if value is None or value == "":
            continue
        if len(value) > limit:
            raise InputError(f"The '{name}' parameter is too long to be a sign-in response.", code="bad_request")
        params[name] = value
    if "error" in params and not _ERROR_CODE.match(params["error"]):
        raise InputError("The 'error' parameter is not a valid OAuth error code.", code="bad_request")
    return params


def outcome(parse: Any, query_string: bytes) -> tuple[str, Any]:
    try:
        return "ok", parse(query_string)
    except InputError as exc:
        return "refused", (exc.code, str(exc))


NAMES = ["code", "state", "error", "error_description", "%63ode", "st%61te", "error+", "c+de", "junk", "", "CODE"]
VALUES = ["", "abc", "a+b", "a%20b", "%", "%zz", "%E2%9C%93", "x=y", "access_denied", "access denied", "é"]


def random_query(rng: random.Random) -> bytes:
    fields = []
    for _ in range(rng.randint(0, 6)):
        name = rng.choice(NAMES)
        roll = rng.random()
        if roll < 0.1:
            fields.append(name)  # no "=" at all
        elif roll < 0.2:
            fields.append("")  # "&&"
        else:
            value = rng.choice(VALUES) * rng.choice([1, 1, 1, 40, 300])
            fields.append(f"{name}={value}")
    return "&".join(fields).encode("utf-8")


def test_parser_agrees_with_starlettes_query_params() -> None:
    rng = random.Random(4)
    for _ in range(5000):
        query_string = random_query(rng)
        assert outcome(read_params, query_string) == outcome(reference_params, query_string), query_string


@pytest.mark.parametrize(
    "query_string",
    [
        b"",
        b"code=abc&state=s",
        b"code=first&code=second&state=s",  # the last one wins, as in a Starlette multidict
        b"code=&state=s",  # blank counts as absent
        b"code&state=s",
        b"%63ode=encoded-name&state=s",
        b"code=a+b%2Bc&state=s",
        b"error=access_denied&error_description=The+user+said+%22no%22",
        b"error=access+denied",
        b"code=\xe9t\xe9&state=s",  # raw non-ASCII bytes, read as latin-1
        b"&&&code=x&&",
    ],
)
def test_parser_cases(query_string: bytes) -> None:
    assert outcome(read_params, query_string) == outcome(reference_params, query_string)


def test_parser_bounds() -> None:
    assert read_params(b"code=" + b"c" * LIMITS["code"]) == {"code": "c" * LIMITS["code"]}
    with pytest.raises(InputError, match="'code' parameter is too long"):
        read_params(b"code=" + b"c" * (LIMITS["code"] + 1))
    # the bound is on the decoded value: three bytes of escape are one character
    assert read_params(b"code=" + b"%41" * LIMITS["code"]) == {"code": "A" * LIMITS["code"]}
    with pytest.raises(InputError, match="'error_description' parameter is too long"):
        read_params(b"error=x&error_description=" + b"d" * (LIMITS["error_description"] + 1))
    with pytest.raises(InputError, match="too large"):
        read_params(b"junk=" + b"j" * MAX_QUERY_BYTES)
    at_limit = b"code=c&junk=" + b"j" * (MAX_QUERY_BYTES - len(b"code=c&junk="))
    assert read_params(at_limit) == {"code": "c"}
    # the first oversized parameter in LIMITS order is the one named, as before
    with pytest.raises(InputError, match="'code' parameter"):
        read_params(b"error=" + b"e" * 200 + b"&code=" + b"c" * 3000)


# ---- the answers --------------------------------------------------------------------------------


async def sent_by(answer: Any, *args: Any) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await answer(send, *args)
    return messages


async def sent_by_starlette(response: Any) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    async def receive() -> dict[str, Any]:
        raise AssertionError("not read")

    await response({"type": "http"}, receive, send)
    return messages


HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}


@pytest.mark.parametrize("status, text", [(400, "This sign-in link is not valid."), (200, "Thank you, ré (id)")])
def test_plain_answer_is_starlettes(status: int, text: str) -> None:
    ours = asyncio.run(sent_by(_plain, status, text))
    theirs = asyncio.run(sent_by_starlette(PlainTextResponse(text + "\n", status_code=status, headers=HEADERS)))
    assert ours == theirs


def test_redirect_answer_is_starlettes() -> None:
    url = "https://dash.example/accounts?tab=social&attempt=abc"
    ours = asyncio.run(sent_by(_see_other, quote(url, safe=":/%#?=@[]!$&'()*+,;")))
    theirs = asyncio.run(sent_by_starlette(RedirectResponse(url, status_code=303, headers=HEADERS)))
    assert ours == theirs
    assert ours[0]["status"] == 303


RETURN_TOS = [
    "https://dash.example/accounts",
    "https://DASH.example/accounts",  # origins compare lower-cased
    "https://dash.example/a b/é",  # quoted as RedirectResponse quotes it
    "https://dash.example/accounts?tab=social&attempt=old",
    "https://dash.example/accounts#frag",
    "https://dash.example:8443/x",  # another origin
    "https://evil.example/accounts",
]


@pytest.mark.parametrize("return_to", RETURN_TOS)
@pytest.mark.parametrize("attempt_id", ["0b8e4c52-2d3f-4a1e-9c7b-6f5a4d3c2b1a", "a b&c=é"])
def test_redirect_location_is_what_redirect_response_sent(return_to: str, attempt_id: str) -> None:
    settings = Settings(_env_file=None, public_url="https://dash.example", return_to_allowed=None)  # type: ignore[call-arg]
    redirects = _Redirects(settings)
    allowed = return_to.split("/")[2].lower() == "dash.example"
    expected = None
    if allowed:
        response = RedirectResponse(with_attempt(return_to, attempt_id), status_code=303)
        expected = response.headers["location"]
    for _ in range(2):  # computed, then remembered
        assert redirects.location(return_to, attempt_id) == expected


# ---- the state ----------------------------------------------------------------------------------


def test_state_expiry_without_now_uses_the_clock() -> None:
    secret = "s3cret"
    fresh = SignedState("a", "twitter", datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=30))
    assert verify_state(sign_state(fresh, secret), secret) == fresh
    stale = SignedState("a", "twitter", datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1))
    with pytest.raises(InputError) as caught:
        verify_state(sign_state(stale, secret), secret)
    assert caught.value.code == "state_expired"


# ---- the message --------------------------------------------------------------------------------


def decoded(payload: bytes) -> dict[str, Any]:
    data = json.loads(payload)
    assert set(data) == {"queue_name", "actor_name", "args", "kwargs", "options", "message_id", "message_timestamp"}
    return data


@pytest.mark.parametrize(
    "fields",
    [
        {"attempt_id": "0b8e4c52-2d3f-4a1e-9c7b-6f5a4d3c2b1a", "code_enc": "v1:k1:abc"},
        {"attempt_id": 'a"b\\c\u2028é', "error": "access_denied", "error_description": 'Nope "quoted"\nline'},
    ],
)
def test_the_encoded_call_is_the_message_publish_builds(fields: dict[str, Any]) -> None:
    item = encode_call("code_received", code_received_kwargs(**fields))
    reference = encode_for_redis(code_received_message(**fields))
    ours, theirs = decoded(item.payload), decoded(reference.payload)
    assert item.queue_name == reference.queue_name == "connect"
    assert ours["options"] == {"redis_message_id": item.redis_id}
    assert item.redis_id != reference.redis_id  # every enqueue its own Redis id
    for volatile in ("options", "message_id", "message_timestamp"):
        ours.pop(volatile), theirs.pop(volatile)
    assert ours == theirs
    message = dramatiq.Message.decode(item.payload)  # what a worker does with it
    assert message.kwargs == code_received_kwargs(**fields)
    assert uuid.UUID(message.message_id).version == 4 and uuid.UUID(item.redis_id).version == 4


def test_encode_call_writes_the_bytes_dramatiqs_message_encodes() -> None:
    """``encode_call`` writes ``Message.asdict()``'s fields itself: a Dramatiq upgrade that adds,
    drops or reorders a field fails here."""
    kwargs = code_received_kwargs(attempt_id="att-1", code_enc="v1:k1:abc")
    item = encode_call("code_received", kwargs)
    data = json.loads(item.payload)
    assert list(data) == [field.name for field in dataclasses.fields(dramatiq.Message)]
    message = dramatiq.Message(
        queue_name="connect",
        actor_name="code_received",
        args=(),
        kwargs=kwargs,
        options={"redis_message_id": item.redis_id},
        message_id=item.redis_id,
        message_timestamp=data["message_timestamp"],
    )
    assert item.payload == message.encode()
    assert abs(data["message_timestamp"] - time.time() * 1000) < 60_000


def test_encode_call_refuses_an_actor_this_service_does_not_know() -> None:
    with pytest.raises(KeyError):
        encode_call("no_such_actor", {"account_id": "acc-1"})


def test_enqueue_call_is_consumed_by_dramatiq(redis_url: str) -> None:
    namespace = f"sa-fast-{uuid.uuid4().hex[:8]}"
    calls = [code_received_kwargs(attempt_id=str(uuid.uuid4()), code_enc=f"v1:k1:enc-{i}") for i in range(30)]
    refresh = build_message("refresh_account", account_id="acc-1", reason="requested")

    async def run() -> None:
        batcher = BatchEnqueuer(redis_url, namespace)
        try:
            await asyncio.gather(*(batcher.enqueue_call("code_received", kw) for kw in calls), batcher.enqueue(refresh))
        finally:
            await batcher.aclose()

    asyncio.run(run())
    broker = RedisBroker(url=redis_url, namespace=namespace)
    try:
        seen = consume_all(broker, ("connect", "refresh"))
    finally:
        broker.close()
        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(f"{namespace}*"):
            client.delete(key)
        client.close()
    assert sorted(m.kwargs["attempt_id"] for m in seen["connect"]) == sorted(kw["attempt_id"] for kw in calls)
    assert all(
        m.kwargs == next(kw for kw in calls if kw["attempt_id"] == m.kwargs["attempt_id"]) for m in seen["connect"]
    )
    assert [m.message_id for m in seen["refresh"]] == [refresh.message_id]


def test_connection_stays_open_while_busy_and_closes_when_idle(redis_url: str) -> None:
    namespace = f"sa-fast-{uuid.uuid4().hex[:8]}"

    async def run() -> tuple[bool, bool]:
        batcher = BatchEnqueuer(redis_url, namespace, idle_seconds=0.5)
        try:
            await batcher.enqueue_call("code_received", code_received_kwargs(attempt_id="a0"))
            client = batcher._client
            for i in range(16):  # callbacks for longer than the idle period, a tenth of it apart
                await asyncio.sleep(0.05)
                await batcher.enqueue_call("code_received", code_received_kwargs(attempt_id=f"a{i + 1}"))
            kept = batcher._client is client and client is not None
            await await_until(lambda: batcher._client is None, what="the idle connection closed")
            return kept, batcher._client is None
        finally:
            await batcher.aclose()

    kept, closed = asyncio.run(run())
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.llen(f"{namespace}:connect") == 17
        client.delete(f"{namespace}:connect", f"{namespace}:connect.msgs")
    finally:
        client.close()
    assert kept and closed
