"""Events out, without services: the signer against the reference implementation, the payload
shapes, the no-flapping rule of the status policy, and the webhook backoff schedule."""

from __future__ import annotations

import base64
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from models import outbox
from models.tables import SocialAccount
from social_accounts.errors import ConfigError, NeedsReconnect, Transient
from social_accounts.settings import Settings
from workers import events, retrying, status

pytestmark = pytest.mark.unit

KEY = bytes(range(32))
SECRET = "whsec_" + base64.b64encode(KEY).decode()
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[1]


def _row(kind: str, reason: str = "", **data: Any) -> SimpleNamespace:
    return SimpleNamespace(
        id="ev-1",
        kind=kind,
        reason=reason,
        data=data,
        account_id="acc-1",
        site_id="site-1",
        platform="twitter",
        created_at=T0,
        seq=7,
    )


def test_our_signature_verifies_with_the_standardwebhooks_package() -> None:
    body = events.encode_body({"type": "account.connected", "timestamp": "2026-12-01T12:00:00Z", "data": {"é": 1}})
    now = int(datetime.now(UTC).timestamp())
    headers = events.signed_headers([KEY], "msg_1", now, body)
    assert Webhook(SECRET).verify(body, headers) == json.loads(body)
    # byte for byte: the package's own signature of the same content is ours
    assert (
        Webhook(SECRET).sign("msg_1", datetime.fromtimestamp(now, UTC), body.decode()) == headers["webhook-signature"]
    )


def test_a_tampered_body_or_another_secret_does_not_verify() -> None:
    body = events.encode_body({"type": "account.connected", "timestamp": "t", "data": {}})
    now = int(datetime.now(UTC).timestamp())
    headers = events.signed_headers([KEY], "msg_1", now, body)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace(b"connected", b"recovered"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(b"x" * 32).decode()).verify(body, headers)


def test_the_first_secret_signs_during_a_rotation() -> None:
    new, old = b"n" * 32, b"o" * 32
    settings = Settings(
        webhook_secrets=f"whsec_{base64.b64encode(new).decode()}, whsec_{base64.b64encode(old).decode()}"
    )
    assert settings.webhook_keys() == [new, old]
    body = b"{}"
    now = int(datetime.now(UTC).timestamp())
    headers = events.signed_headers(settings.webhook_keys(), "m", now, body)
    Webhook("whsec_" + base64.b64encode(new).decode()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(old).decode()).verify(body, headers)


@pytest.mark.parametrize("bad", ["nothex", "whsec_!!!", "whsec_" + base64.b64encode(b"short").decode()])
def test_malformed_webhook_secrets_are_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings(webhook_secrets=bad).webhook_keys()
    assert bad not in str(caught.value)


@pytest.mark.parametrize(
    ("kind", "reason", "data", "expected"),
    [
        ("connected", "connected", {}, "account.connected"),
        ("connected", "reconnected", {}, "account.reconnected"),
        ("status_changed", "", {"from": "active", "to": "error"}, "account.status_changed"),
        ("status_changed", "", {"from": "active", "to": "rate_limited"}, "account.status_changed"),
        ("status_changed", "", {"from": "error", "to": "expired"}, "account.needs_reconnect"),
        ("status_changed", "", {"from": "error", "to": "active"}, "account.recovered"),
        ("status_changed", "", {"from": "rate_limited", "to": "active"}, "account.recovered"),
        ("status_changed", "", {"from": "active", "to": "disconnected"}, "account.disconnected"),
        ("attempt_failed", "", {"attempt_id": "a"}, "attempt.failed"),
        ("refreshed", "", {}, None),
        ("synced", "", {}, None),
        ("disconnected", "", {}, None),
    ],
)
def test_each_audit_row_is_one_public_event_or_none(
    kind: str, reason: str, data: dict[str, Any], expected: str | None
) -> None:
    assert outbox.public_type(kind, reason, data) == expected


def test_the_body_shape_is_the_schema_and_holds_no_token() -> None:
    row = _row(
        "status_changed",
        "refresh: boom",
        **{"from": "active", "to": "error", "health_score": 80, "health_reason": "Bad.", "error_code": "transient"},
    )
    body = outbox.event_body(row)
    assert body == {
        "type": "account.status_changed",
        "timestamp": "2026-12-01T12:00:00Z",
        "data": {
            "event_id": "ev-1",
            "account_id": "acc-1",
            "site_id": "site-1",
            "platform": "twitter",
            "attempt_id": None,
            "status_from": "active",
            "status_to": "error",
            "health_score": 80,
            "health_reason": "Bad.",
            "error_code": "transient",
            "reason": "refresh: boom",
        },
    }
    schema = json.loads((ROOT / "docs" / "events.schema.json").read_text())
    assert set(body) == set(schema["required"])
    assert set(body["data"]) == set(schema["properties"]["data"]["properties"])
    assert schema["properties"]["type"]["enum"] == list(outbox.EVENT_TYPES)
    assert "token" not in json.dumps(body)


def test_an_attempt_failure_names_its_attempt_and_code() -> None:
    row = _row("attempt_failed", "denied", attempt_id="att-1", error_code="access_denied")
    row.account_id = None
    body = outbox.event_body(row)
    assert body["type"] == "attempt.failed"
    assert body["data"]["attempt_id"] == "att-1" and body["data"]["error_code"] == "access_denied"
    assert body["data"]["account_id"] is None


def test_endpoint_filters_by_type_and_site() -> None:
    body = outbox.event_body(_row("connected", "connected"))
    base = dict(id="e", url="u", source="operator", disabled_at=None, disabled_reason=None)
    base |= dict(failing_since=None, last_success_at=None)
    assert outbox.Endpoint(event_types=[], site_ids=[], **base).wants(body)
    assert outbox.Endpoint(event_types=["account.connected"], site_ids=["site-1"], **base).wants(body)
    assert not outbox.Endpoint(event_types=["account.recovered"], site_ids=[], **base).wants(body)
    assert not outbox.Endpoint(event_types=[], site_ids=["other"], **base).wants(body)
    assert not outbox.Endpoint(event_types=[], site_ids=[], **{**base, "disabled_at": T0}).wants(body)


# ---- no flapping: the status policy decides, and the event follows the status -------------------


class _Session:
    """Collects what the policy writes (it only calls ``execute`` with an event's values)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def execute(self, _stmt: Any, values: dict[str, Any]) -> None:
        self.events.append(values)


def _account() -> SocialAccount:
    return SocialAccount(id="a", site_id="s", platform="twitter", platform_account_id="p", status="active")


def _public(session: _Session) -> list[str | None]:
    return [outbox.public_type(e["kind"], e["reason"], e["data"]) for e in session.events]


SETTINGS = Settings(error_after_failures=3, error_after_seconds=600)
BLIP = Transient("server error", platform="twitter", status=503)


def test_a_blip_that_heals_within_the_window_sends_nothing() -> None:
    session, row = _Session(), _account()
    for minute in (0, 1, 2):  # three failures, but within 10 minutes: not yet persistent
        status.record_failure(session, row, BLIP, settings=SETTINGS, step="sync", now=T0 + timedelta(minutes=minute))  # type: ignore[arg-type]
    status.record_success(session, row, reason="synced", now=T0 + timedelta(minutes=3))  # type: ignore[arg-type]
    assert row.status == "active"
    assert session.events == []


def test_a_real_outage_is_one_status_change_and_one_recovery() -> None:
    session, row = _Session(), _account()
    for minute in range(0, 60, 2):  # a failure every 2 minutes for an hour
        status.record_failure(session, row, BLIP, settings=SETTINGS, step="sync", now=T0 + timedelta(minutes=minute))  # type: ignore[arg-type]
    status.record_success(session, row, reason="synced", now=T0 + timedelta(hours=1))  # type: ignore[arg-type]
    assert _public(session) == ["account.status_changed", "account.recovered"]
    to_error = session.events[0]["data"]
    assert to_error["to"] == "error" and to_error["error_code"] == "transient"
    assert isinstance(to_error["health_score"], int) and to_error["health_reason"]


def test_a_revoked_grant_is_needs_reconnect_at_once() -> None:
    session, row = _Session(), _account()
    error = NeedsReconnect("revoked", platform="twitter", code="invalid_grant")
    status.record_failure(session, row, error, settings=SETTINGS, step="refresh", now=T0)  # type: ignore[arg-type]
    assert _public(session) == [None, "account.needs_reconnect"]  # refresh_failed (audit), then the event
    assert session.events[1]["data"]["error_code"] == "invalid_grant"
    assert session.events[1]["data"]["health_score"] == 0


# ---- the retry schedule ---------------------------------------------------------------------------


def _total_ms(pick: float) -> int:
    rng = random.Random()
    rng.uniform = lambda a, b: a + (b - a) * pick  # type: ignore[method-assign]
    policy = events.WEBHOOK_POLICY
    return sum(retrying.backoff_ms(n, policy, rng) for n in range(policy.max_transient))


def test_webhook_retries_back_off_for_at_most_three_days_and_more_than_one() -> None:
    day = 24 * 3600 * 1000
    assert _total_ms(1.0) <= 3 * day  # the longest jitter everywhere
    assert _total_ms(0.0) > 1 * day  # the shortest: still past "failing for a day"


def test_the_policy_retries_a_receiver_error_and_gives_up_when_spent() -> None:
    error = Transient("the receiver answered 500", platform="webhook", status=500)
    first = retrying.decide(error, step=events.DELIVER_STEP, retries=0, policy=events.WEBHOOK_POLICY)
    assert first.action == "retry" and 5_000 <= (first.delay_ms or 0) <= 10_000
    last = retrying.decide(
        error, step=events.DELIVER_STEP, retries=events.WEBHOOK_POLICY.max_transient, policy=events.WEBHOOK_POLICY
    )
    assert last.action == "give_up" and last.code == "delivery_failed"
