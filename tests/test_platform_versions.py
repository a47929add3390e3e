"""Published API versions: the defaults are current, and doctor warns ahead of a sunset."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from platforms.versions import (
    GRAPH_API_EXPIRY,
    LINKEDIN_PUBLISHED,
    graph_version_warning,
    linkedin_version_warning,
)
from service.doctor import Check, check_api_versions
from social_accounts.settings import Settings

pytestmark = pytest.mark.unit


def test_defaults_are_published_and_not_near_their_end() -> None:
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert defaults.meta_graph_version == "v27.0"
    assert defaults.meta_graph_version in GRAPH_API_EXPIRY
    assert defaults.linkedin_api_version in LINKEDIN_PUBLISHED  # LinkedIn skips months: 202512 never existed
    today = date(2026, 12, 1)
    assert graph_version_warning(defaults.meta_graph_version, today) is None
    assert linkedin_version_warning(defaults.linkedin_api_version, today) is None


@pytest.mark.parametrize(
    ("today", "warned"),
    [
        (date(2026, 10, 22), False),  # 91 days before 21 January 2027
        (date(2026, 10, 23), True),  # 90 days before
        (date(2027, 1, 20), True),
        (date(2027, 1, 21), True),  # expired
    ],
)
def test_graph_version_is_warned_about_within_90_days_of_its_expiry(today: date, warned: bool) -> None:
    warning = graph_version_warning("v21.0", today)
    assert (warning is not None) == warned
    if warning:
        assert "2027-01-21" in warning


def test_unknown_graph_version_is_warned_about() -> None:
    assert graph_version_warning("v99.0", date(2026, 12, 1)) is not None
    assert graph_version_warning("v26.0", date(2026, 12, 1)) is None  # no expiry announced yet


@pytest.mark.parametrize(
    ("version", "warned"),
    [
        ("202607", False),
        ("202601", False),  # 11 months old
        ("202511", True),  # 13 months old
        ("202512", True),  # never published: LinkedIn skipped December 2025
        ("202610", True),  # not confirmed as published
        ("2026-07", True),
        ("202613", True),
    ],
)
def test_linkedin_version_must_be_published_and_at_most_12_months_old(version: str, warned: bool) -> None:
    assert (linkedin_version_warning(version, date(2026, 12, 1)) is not None) == warned


def test_doctor_warns_for_an_old_graph_version_and_an_unpublished_linkedin_one(settings_factory: Any) -> None:
    out: list[Check] = []
    check_api_versions(
        settings_factory(meta_graph_version="v21.0", linkedin_api_version="202512"), out, date(2026, 12, 1)
    )
    [check] = out
    assert check.status == "warn"
    assert any("v21.0" in item and "2027-01-21" in item for item in check.items)
    assert any("202512" in item for item in check.items)

    out = []
    check_api_versions(
        settings_factory(meta_graph_version="v27.0", linkedin_api_version="202607"), out, date(2026, 12, 1)
    )
    assert [(c.status, c.detail) for c in out] == [("ok", "Graph API v27.0, LinkedIn-Version 202607")]
