"""Published API versions of Meta's Graph API and LinkedIn's ``/rest`` API, and when to worry.

Both vendors retire versions on a published schedule, and a call on a retired version fails for
every account at once. ``social-accounts doctor`` reads these tables to warn ahead of time:

* Graph API: a version is warned about within 90 days of its published "Available until" date
  (and once past it). Source: https://developers.facebook.com/docs/graph-api/changelog/versions
  (v27.0: https://developers.facebook.com/blog/post/2026/11/04/introducing-graph-api-v27-and-marketing-api-v27/).
* ``LinkedIn-Version``: LinkedIn publishes one ``YYYYMM`` version most months but skips some
  (there is no 202512), and supports each for at least a year. A value not in the published list,
  or more than 12 months old, is warned about. Sources:
  https://learn.microsoft.com/en-us/linkedin/marketing/versioning and
  https://learn.microsoft.com/en-us/linkedin/marketing/integrations/migrations.

The tables are data: update them when the vendors publish a new version (docs/platforms.md).
"""

from __future__ import annotations

import re
from datetime import date, timedelta

__all__ = [
    "GRAPH_API_EXPIRY",
    "GRAPH_SOURCE",
    "LINKEDIN_PUBLISHED",
    "LINKEDIN_SOURCE",
    "WARN_BEFORE_EXPIRY",
    "graph_version_warning",
    "linkedin_version_warning",
]

GRAPH_SOURCE = "https://developers.facebook.com/docs/graph-api/changelog/versions"
LINKEDIN_SOURCE = "https://learn.microsoft.com/en-us/linkedin/marketing/integrations/migrations"

#: Graph API version -> its published "Available until" date (None: not yet announced)
GRAPH_API_EXPIRY: dict[str, date | None] = {
    "v27.0": None,  # introduced 4 November 2026
    "v26.0": None,  # introduced 29 July 2026
    "v25.0": date(2028, 7, 29),
    "v24.0": date(2028, 2, 18),
    "v23.0": date(2027, 10, 8),
    "v22.0": date(2027, 5, 20),
    "v21.0": date(2027, 1, 21),
    "v20.0": date(2026, 9, 24),
    "v19.0": date(2026, 5, 21),
    "v18.0": date(2026, 1, 26),
}

#: ``LinkedIn-Version`` values confirmed as published (202512 was skipped)
LINKEDIN_PUBLISHED = frozenset(
    {"202510", "202511", "202601", "202602", "202603", "202604", "202605", "202606", "202607"}
)

#: how long before a Graph version's expiry doctor starts warning
WARN_BEFORE_EXPIRY = timedelta(days=90)
#: LinkedIn supports each version for at least a year; older ones are warned about
LINKEDIN_MAX_AGE_MONTHS = 12

_LINKEDIN_FORMAT = re.compile(r"(\d{4})(0[1-9]|1[0-2])")


def graph_version_warning(version: str, today: date) -> str | None:
    """Why ``version`` of the Graph API needs attention, or None when it is fine."""
    if version not in GRAPH_API_EXPIRY:
        return f"Graph API {version} is not in the table of published versions ({GRAPH_SOURCE})"
    expiry = GRAPH_API_EXPIRY[version]
    if expiry is None:
        return None
    if today >= expiry:
        return f"Graph API {version} expired on {expiry.isoformat()}: set META_GRAPH_VERSION to a current version"
    if expiry - today <= WARN_BEFORE_EXPIRY:
        days = (expiry - today).days
        return f"Graph API {version} expires on {expiry.isoformat()} (in {days} days): move META_GRAPH_VERSION on"
    return None


def linkedin_version_warning(version: str, today: date) -> str | None:
    """Why ``LinkedIn-Version: version`` needs attention, or None when it is fine."""
    match = _LINKEDIN_FORMAT.fullmatch(version)
    if match is None:
        return f"LINKEDIN_API_VERSION {version!r} is not a YYYYMM version"
    if version not in LINKEDIN_PUBLISHED:
        return f"LinkedIn-Version {version} is not a version LinkedIn is known to have published ({LINKEDIN_SOURCE})"
    year, month = int(match.group(1)), int(match.group(2))
    age = (today.year - year) * 12 + (today.month - month)
    if age > LINKEDIN_MAX_AGE_MONTHS:
        return f"LinkedIn-Version {version} is {age} months old; LinkedIn sunsets versions after about a year"
    return None
