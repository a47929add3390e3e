"""``/openapi.json``: the ``/v1`` API described, built from the handlers' own pydantic models.

Every other test that talks to the API checks its answers against the document too
(``tests/openapi_check.py``, hung on every ``TestClient`` by ``conftest.py``); these tests check
the document itself and that the check really fails on what the document does not describe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from starlette.routing import Route
from starlette.testclient import TestClient

from tests.openapi_check import AnswerCheck, UndocumentedAnswer
from web_callback.api import routes
from web_callback.openapi import OPERATIONS, WEBHOOKS, document
from web_callback.schemas import AccountView

pytestmark = pytest.mark.unit

ACCOUNT = "00000000-0000-0000-0000-000000000001"


@pytest.fixture
def client(tmp_path: Path, migrated_sqlite: Path) -> Any:
    import shutil

    from dramatiq.brokers.stub import StubBroker

    from models.engine import make_engine
    from social_accounts.settings import Settings
    from tests.support import new_key
    from web_callback.app import create_app

    shutil.copyfile(migrated_sqlite, tmp_path / "db.sqlite")
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, api_token="t", state_secret="s", token_keys=f"k1:{new_key()}", broker_url="memory://"
    )
    with TestClient(create_app(settings, broker=StubBroker(), engine=engine)) as test_client:
        yield test_client
    engine.dispose()


def test_the_document_is_served_without_a_token_and_is_openapi_3_1(client: TestClient) -> None:
    answer = client.get("/openapi.json")
    assert answer.status_code == 200
    served = answer.json()
    assert served == document()
    assert served["openapi"] == "3.1.0"
    assert set(served["webhooks"]) == set(WEBHOOKS)
    for schema in served["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)  # each component is a valid JSON Schema
    # the account's schema is pydantic's own for the model, so a new field shows up by itself
    account = served["components"]["schemas"]["AccountView"]
    assert set(account["properties"]) == set(AccountView.model_fields)
    assert not {"access_token", "refresh_token", "token_metadata"} & set(account["properties"])
    request = served["paths"]["/v1/accounts/{account_id}/request"]["post"]
    assert set(request["responses"]) == {"200", "400", "401", "404", "409", "422", "429", "502", "503"}
    assert request["security"] == [{"bearer": []}]
    # the token's 409 names both of its codes; elsewhere a 409 keeps the common description
    token = served["paths"]["/v1/accounts/{account_id}/token"]["post"]["responses"]["409"]["description"]
    assert "token_bound" in token and "needs_reconnect" in token and "/request" in token
    assert "token_bound" not in request["responses"]["409"]["description"]


def test_every_v1_route_is_described_and_nothing_else() -> None:
    served = {
        (method, "/v1" + route.path)
        for route in routes()
        if isinstance(route, Route)
        for method in (route.methods or ()) - {"HEAD"}
    }
    described = {(op.method, op.path) for op in OPERATIONS}
    assert served == described


def _answer(method: str, path: str, status: int, body: Any) -> httpx.Response:
    return httpx.Response(status, json=body, request=httpx.Request(method, f"http://testserver{path}"))


def test_the_check_fails_on_what_the_document_does_not_describe() -> None:
    check = AnswerCheck(document())
    error = {"error": "not_found", "message": "no such account"}
    check(_answer("GET", f"/v1/accounts/{ACCOUNT}", 404, error))
    check(_answer("POST", f"/v1/accounts/{ACCOUNT}/request", 200, {"status": 201, "headers": {}, "body": "ok"}))
    check(_answer("GET", "/healthz", 599, "not ours"))  # outside /v1: not checked
    assert check.checked == 2

    with pytest.raises(UndocumentedAnswer, match="answered 418"):
        check(_answer("GET", f"/v1/accounts/{ACCOUNT}", 418, error))
    with pytest.raises(UndocumentedAnswer, match="not in /openapi.json"):
        check(_answer("GET", "/v1/nothing-here", 200, {}))
    with pytest.raises(UndocumentedAnswer, match="status"):
        check(_answer("POST", f"/v1/accounts/{ACCOUNT}/request", 200, {"headers": {}, "body": None}))
    with pytest.raises(UndocumentedAnswer, match="message"):
        check(_answer("GET", f"/v1/accounts/{ACCOUNT}", 404, {"error": "not_found"}))
    with pytest.raises(UndocumentedAnswer, match="enqueued"):
        check(_answer("POST", f"/v1/accounts/{ACCOUNT}/sync", 202, {"account_id": ACCOUNT, "enqueued": "dance"}))


def test_test_clients_check_their_answers(client: TestClient, openapi_answers: AnswerCheck) -> None:
    client.headers["Authorization"] = "Bearer t"
    assert client.get("/v1/platforms").status_code == 200
    assert client.get(f"/v1/accounts/{ACCOUNT}").status_code == 404
    assert client.get("/v1/platforms", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert openapi_answers.checked == 3
