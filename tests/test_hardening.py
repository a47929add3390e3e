"""Odd but possible input never makes the web app answer 500, and the sign-in form holds its limits.

The app runs on a SQLite file with the in-process (Stub) broker: nothing here needs PostgreSQL or
Redis, and what is checked (status codes, messages, how much of a body was read) is the same on
both. The property-style tests feed derandomized random strings (hypothesis) to every field of
every JSON endpoint and form, so they are deterministic and quick.
"""

from __future__ import annotations

import html
import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from models.migrate import upgrade
from web_callback.app import create_app
from web_callback.demo import install as install_demo
from web_callback.schemas import MAX_BODY_BYTES
from web_callback.signin import FAILURE_LIMIT, LocalSignInStore

TOKEN = "test-api-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SITE = "site-1"
PAGE = f"/sites/{SITE}/accounts"

#: the ``return_to`` values that answered 500 (issue 14, "Hardening")
ODD_RETURN_TO = {
    "fullwidth-number-sign": "http://127.0.0.1:8000\uff03@evil.example/",
    "fullwidth-at-sign": "http://127.0.0.1:8000\uff20evil.example/",
    "unclosed-bracket-host": "http://[evil.example/",
    "unclosed-bracket-short": "http://[x",
}


@dataclass
class Web:
    client: TestClient
    app: Any

    def api(self, path: str, body: Any) -> httpx2.Response:
        return self.client.post(path, json=body, headers=AUTH)

    def login_token(self) -> str:
        return field_value(self.client.get(PAGE).text, "login_token")

    def login(self) -> None:
        answer = self.client.post(f"{PAGE}/login", data={"api_token": TOKEN, "login_token": self.login_token()})
        assert answer.status_code == 303, answer.text

    def csrf(self) -> str:
        return field_value(self.client.get(PAGE).text, "csrf_token")


def field_value(text: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', text)
    assert match, f"no {name} field in the page"
    return html.unescape(match.group(1))


@pytest.fixture
def web(tmp_path: Path, settings_factory: Any) -> Iterator[Web]:
    url = f"sqlite:///{tmp_path / 'sa.db'}"
    upgrade(url)
    settings = settings_factory(database_url=url, broker_url="memory://", redis_namespace=f"h-{uuid.uuid4().hex[:6]}")
    app = create_app(settings)
    with TestClient(app, follow_redirects=False) as client:
        yield Web(client, app)


def assert_clear_4xx(response: httpx2.Response, code: str | None = None) -> dict[str, Any]:
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    body: dict[str, Any] = response.json()
    assert body["message"] and "internal" not in body["error"]
    if code is not None:
        assert body["error"] == code, body
    return body


# ---- return_to ------------------------------------------------------------------------------------


@pytest.mark.parametrize("platform", ["twitter", "bluesky"])
@pytest.mark.parametrize("case", sorted(ODD_RETURN_TO))
def test_an_odd_return_to_is_a_clear_400(web: Web, case: str, platform: str) -> None:
    body: dict[str, Any] = {"site_id": "s", "user_id": "u", "return_to": ODD_RETURN_TO[case]}
    if platform == "bluesky":
        body.update(handle="alice.bsky.social", app_password="abcd-efgh-ijkl-mnop")
    answer = web.api(f"/v1/connect/{platform}", body)
    assert answer.status_code == 400, answer.text
    assert_clear_4xx(answer, "return_to_invalid")
    assert "return_to" in answer.json()["message"]


# ---- deeply nested JSON -----------------------------------------------------------------------------


def test_a_json_body_nested_1500_levels_is_a_clear_422(web: Web) -> None:
    nested = "[" * 1500 + "]" * 1500
    answer = web.client.post(
        "/v1/connect/twitter", content=nested, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert answer.status_code == 422, answer.text
    assert_clear_4xx(answer, "invalid_json")


def test_a_json_object_nested_1500_levels_is_a_clear_422(web: Web) -> None:
    nested = '{"a":' * 1500 + "1" + "}" * 1500
    answer = web.client.post(
        "/v1/connect/bluesky", content=nested, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert answer.status_code == 422, answer.text
    assert_clear_4xx(answer, "invalid_json")


# ---- random strings into every field -----------------------------------------------------------------

FUZZ = settings(
    max_examples=40,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
TEXT = st.text(max_size=80) | st.sampled_from(list(ODD_RETURN_TO.values()) + ["", " ", "\x00", "[" * 50])
#: URL-shaped strings: a scheme and origin, then anything (brackets, NFKC look-alikes, controls)
URLISH = st.builds(
    str.__add__, st.sampled_from(["http://", "https://", "http://127.0.0.1:8000", "mastodon://"]), st.text(max_size=30)
)
JSON_VALUE = TEXT | URLISH | st.none() | st.integers() | st.lists(st.text(max_size=5), max_size=3)

#: every field of every JSON body (``web_callback.schemas``) and the platforms whose body it is
JSON_FIELDS = ("site_id", "user_id", "return_to", "instance", "handle", "app_password")


#: a valid body per platform: each example replaces some of its fields, so a random value in one
#: field reaches the checks behind the others' validation
VALID_BODIES: dict[str, dict[str, Any]] = {
    "twitter": {"site_id": "s", "user_id": "u", "return_to": "http://127.0.0.1:8000/x"},
    "linkedin": {"site_id": "s", "user_id": "u"},
    "mastodon": {"site_id": "s", "user_id": "u", "instance": "<the fake server>", "return_to": None},
    "bluesky": {"site_id": "s", "user_id": "u", "handle": "alice.bsky.social", "app_password": "abcd-efgh-ijkl-mnop"},
}


#: the fields each body has (``web_callback.schemas``): a field of another body is a plain 422
BODY_FIELDS = {
    "twitter": ("site_id", "user_id", "return_to", "instance"),
    "linkedin": ("site_id", "user_id", "return_to", "instance"),
    "mastodon": ("site_id", "user_id", "return_to", "instance"),
    "bluesky": ("site_id", "user_id", "return_to", "handle", "app_password"),
}


def _changes(platform: str) -> st.SearchStrategy[tuple[str, dict[str, Any], set[str]]]:
    fields = st.sampled_from(BODY_FIELDS[platform])
    changed = st.dictionaries(fields, JSON_VALUE, min_size=1, max_size=2)
    return st.tuples(st.just(platform), changed, st.sets(fields, max_size=1))


@settings(parent=FUZZ, max_examples=80)
@given(case=st.sampled_from(sorted(VALID_BODIES)).flatmap(_changes))
def test_random_json_bodies_never_answer_5xx(web: Web, fake: Any, case: tuple[str, dict[str, Any], set[str]]) -> None:
    platform, changes, dropped = case
    valid = {**VALID_BODIES[platform]}
    if platform == "mastodon":
        valid["instance"] = fake.base_url  # the fake Mastodon on loopback (no DNS, no internet)
    body = {k: v for k, v in {**valid, **changes}.items() if k not in dropped}
    answer = web.api(f"/v1/connect/{platform}", body)
    if answer.status_code == 502:  # the one 5xx of the contract: a Mastodon instance that is not one
        assert answer.json()["error"] == "instance_unreachable", body
        return
    assert answer.status_code < 500, (answer.status_code, answer.text, body)


@FUZZ
@given(path_value=TEXT)
def test_random_ids_in_api_paths_never_answer_5xx(web: Web, path_value: str) -> None:
    quoted = quote(path_value, safe="")
    for method, path in (
        ("GET", f"/v1/attempts/{quoted}"),
        ("GET", f"/v1/accounts/{quoted}"),
        ("GET", f"/v1/sites/{quoted}/accounts"),
        ("POST", f"/v1/accounts/{quoted}/token"),
        ("POST", f"/v1/accounts/{quoted}/sync"),
        ("POST", f"/v1/connect/{quoted}"),
    ):
        answer = web.client.request(method, path, headers=AUTH, json={})
        assert answer.status_code < 500, (method, path, answer.status_code, answer.text)


@FUZZ
@given(form=st.fixed_dictionaries({}, optional={"api_token": TEXT, "login_token": TEXT, "attempt": TEXT}))
def test_random_sign_in_forms_never_answer_5xx(web: Web, form: dict[str, str]) -> None:
    answer = web.client.post(f"{PAGE}/login", data=form)
    assert answer.status_code < 500, (answer.status_code, form)


@FUZZ
@given(
    platform=st.sampled_from(["twitter", "mastodon", "bluesky"]),
    form=st.fixed_dictionaries({}, optional={"handle": TEXT, "app_password": TEXT, "instance": TEXT}),
    with_csrf=st.booleans(),
)
def test_random_page_forms_never_answer_5xx(web: Web, platform: str, form: dict[str, str], with_csrf: bool) -> None:
    if not web.client.cookies:
        web.login()
    if with_csrf:
        form = {**form, "csrf_token": web.csrf()}
    answer = web.client.post(f"{PAGE}/connect/{platform}", data=form)
    assert answer.status_code < 500, (answer.status_code, form)
    for action in ("sync", "refresh", "disconnect"):
        answer = web.client.post(f"{PAGE}/{uuid.uuid4()}/{action}", data=form)
        assert answer.status_code < 500, (action, answer.status_code)


def test_the_fuzzed_bodies_reach_validation(web: Web) -> None:
    """The property tests above are only worth something if a valid body gets through: it does."""
    answer = web.api("/v1/connect/twitter", {"site_id": "s", "user_id": "u", "return_to": "http://127.0.0.1:8000/x"})
    assert answer.status_code == 201, answer.text
    assert json.loads(answer.text)["authorization_url"].startswith("http")


# ---- the sign-in form's body limit holds for chunked bodies ---------------------------------------


def drive(app: Any, path: str, chunks: Iterator[bytes], headers: list[tuple[bytes, bytes]]) -> tuple[int, int]:
    """Send a chunked body (no Content-Length) straight to the ASGI app; ``(status, bytes it read)``.

    Straight ASGI because the TestClient reads the whole request body before the app sees any of it.
    """
    read = 0
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal read
        chunk = next(chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        read += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"testserver"), (b"transfer-encoding", b"chunked"), *headers],
        "client": ("203.0.113.9", 50000),
        "server": ("testserver", 80),
        "root_path": "",
        "state": {},
    }
    anyio.run(app, scope, receive, send)
    return status, read


def nineteen_megabytes(prefix: bytes) -> Iterator[bytes]:
    yield prefix
    for _ in range(19 * 16):
        yield b"x" * 65536


@pytest.mark.parametrize(
    ("content_type", "prefix"),
    [
        (b"application/x-www-form-urlencoded", b"api_token="),
        (b"multipart/form-data; boundary=B", b'--B\r\nContent-Disposition: form-data; name="api_token"\r\n\r\n'),
    ],
)
def test_a_chunked_sign_in_body_is_cut_off_at_the_limit(web: Web, content_type: bytes, prefix: bytes) -> None:
    status, read = drive(web.app, f"{PAGE}/login", nineteen_megabytes(prefix), [(b"content-type", content_type)])
    limit = MAX_BODY_BYTES + 65536 + len(prefix)  # at most the chunk that crossed the limit
    assert (status, read <= limit) == (413, True), (status, read)


def test_a_chunked_body_on_a_signed_in_form_is_cut_off_too(web: Web) -> None:
    web.login()
    cookie = "; ".join(f"{name}={value}" for name, value in web.client.cookies.items())
    headers = [(b"content-type", b"application/x-www-form-urlencoded"), (b"cookie", cookie.encode())]
    status, read = drive(web.app, f"{PAGE}/logout", nineteen_megabytes(b"csrf_token="), headers)
    assert (status, read <= MAX_BODY_BYTES + 65536 + len(b"csrf_token=")) == (413, True), (status, read)


def test_a_small_chunked_sign_in_body_is_read_whole(web: Web) -> None:
    """The limit cuts only what is too large: a chunked form under it is parsed as usual (a
    wrong login token is a 403, not a 413)."""
    chunks = iter([b"api_token=wrong", b"&login_token=nope"])
    status, read = drive(web.app, f"{PAGE}/login", chunks, [(b"content-type", b"application/x-www-form-urlencoded")])
    assert (status, read) == (403, len(b"api_token=wrong&login_token=nope"))


# ---- brute force on the sign-in, and signing out on the server -------------------------------------


class FakeClock:
    """Moved by the tests; starts at the real time because session cookies carry real expiries."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(web: Web) -> FakeClock:
    fake = FakeClock()
    web.app.state.signin = LocalSignInStore(clock=fake)
    return fake


def sign_in(client: TestClient, token: str) -> httpx2.Response:
    login_token = field_value(client.get(PAGE).text, "login_token")
    return client.post(f"{PAGE}/login", data={"api_token": token, "login_token": login_token})


def test_ten_wrong_tokens_a_minute_then_429_with_retry_after(web: Web, clock: FakeClock) -> None:
    for n in range(FAILURE_LIMIT):
        clock.now += 1
        answer = sign_in(web.client, f"wrong-{n}")
        assert answer.status_code == 401, n
        assert "not right" in answer.text
    clock.now += 0.5
    refused = sign_in(web.client, TOKEN)  # even the right token: it is not looked at any more
    assert refused.status_code == 429
    # the first failure (9.5 s ago) leaves the one-minute window in 50.5 s
    assert refused.headers["Retry-After"] == "51"
    assert "Too many wrong tokens; try again in 51 seconds." in html.unescape(refused.text)
    assert not any("sa_session" in header for header in refused.headers.get_list("set-cookie"))
    clock.now += 50  # still 0.5 s to go
    assert sign_in(web.client, TOKEN).status_code == 429
    clock.now += 0.5
    assert sign_in(web.client, TOKEN).status_code == 303


def test_the_limit_is_per_client_address(web: Web, clock: FakeClock) -> None:
    for n in range(FAILURE_LIMIT):
        assert sign_in(web.client, f"wrong-{n}").status_code == 401
    assert sign_in(web.client, TOKEN).status_code == 429
    with TestClient(web.app, follow_redirects=False, client=("198.51.100.7", 40000)) as other:
        assert sign_in(other, TOKEN).status_code == 303


def test_right_tokens_do_not_count(web: Web, clock: FakeClock) -> None:
    for _ in range(FAILURE_LIMIT + 5):
        assert sign_in(web.client, TOKEN).status_code == 303
        web.client.cookies.clear()  # signed out again, back to the form
    for n in range(FAILURE_LIMIT):
        assert sign_in(web.client, f"wrong-{n}").status_code == 401


def test_a_copied_cookie_stops_working_after_logout(web: Web, clock: FakeClock) -> None:
    web.login()
    copied = dict(web.client.cookies.items())
    with TestClient(web.app, follow_redirects=False, cookies=copied) as thief:
        assert thief.get(PAGE).status_code == 200  # the copy works while the session lasts
        out = web.client.post(f"{PAGE}/logout", data={"csrf_token": web.csrf()})
        assert out.status_code == 303
        shown = thief.get(PAGE)
        assert shown.status_code == 401 and 'name="api_token"' in shown.text
        action = thief.post(f"{PAGE}/{uuid.uuid4()}/sync", data={"csrf_token": field_value(shown.text, "login_token")})
        assert action.status_code == 303 and action.headers["location"] == PAGE
    # a new sign-in is a new session, unaffected by the ended one
    web.login()
    assert web.client.get(PAGE).status_code == 200


# ---- the demo provider's forms (``run --demo``) -----------------------------------------------------


@pytest.fixture
def demo(tmp_path: Path, settings_factory: Any) -> Iterator[TestClient]:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    upgrade(url)
    settings = settings_factory(database_url=url, broker_url="memory://", demo_enabled=True)
    app = create_app(settings)
    install_demo(app, settings)
    with TestClient(app, follow_redirects=False) as client:
        yield client


DEMO_FIELDS = ("client_id", "client_secret", "grant_type", "code", "code_verifier", "redirect_uri", "refresh_token")


@FUZZ
@given(
    query=st.fixed_dictionaries(
        {},
        optional={
            name: TEXT for name in ("client_id", "redirect_uri", "response_type", "state", "code_challenge", "scope")
        },
    ),
    consent=st.fixed_dictionaries({}, optional={"ticket": TEXT, "persona": TEXT, "decision": TEXT}),
    token=st.fixed_dictionaries({}, optional={name: TEXT for name in DEMO_FIELDS}),
)
def test_random_demo_provider_requests_never_answer_5xx(
    demo: TestClient, query: dict[str, str], consent: dict[str, str], token: dict[str, str]
) -> None:
    answers = [
        demo.get("/demo/authorize", params=query),
        demo.post("/demo/authorize", data=consent),
        demo.post("/demo/token", data=token),
        demo.post("/demo/revoke", data={**token, "token": token.get("code", "")}),
    ]
    assert all(answer.status_code < 500 for answer in answers), [a.status_code for a in answers]


@FUZZ
@given(
    query=st.fixed_dictionaries({}, optional={name: TEXT for name in ("state", "code", "error", "error_description")})
)
def test_random_callback_queries_never_answer_5xx(web: Web, query: dict[str, str]) -> None:
    answer = web.client.get("/oauth/callback", params=query)
    assert answer.status_code < 500, (answer.status_code, query)


@pytest.mark.parametrize("path", ["/demo/token", "/demo/revoke", "/demo/authorize"])
def test_the_demo_providers_forms_are_cut_off_at_the_limit_too(demo: TestClient, path: str) -> None:
    app = demo.app
    chunks = nineteen_megabytes(b"client_id=")
    status, read = drive(app, path, chunks, [(b"content-type", b"application/x-www-form-urlencoded")])
    assert status in (400, 413) and read <= MAX_BODY_BYTES + 65536 + len(b"client_id="), (status, read)
