"""Code cites only documents that live in the repository (``docs/...``) or a vendor's URL.

The contract, the library notes and the platform research the project started from lived outside
the repository; a comment pointing there means nothing to the next reader. ``docs/platforms.md``
and ``docs/design.md`` carry what the code relies on, so a citation must name the ``docs/`` copy.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("social_accounts", "models", "platforms", "workers", "scheduler", "web_callback", "service")
#: a mention of one of the outside documents that is not the repository's ``docs/`` copy
OUTSIDE_DOC = re.compile(r"(?<![\w/])(?:[\w.-]+/)*(?:CONTRACT|engineering|peers|anchors|platforms)\.md")


def outside_citations(text: str) -> list[str]:
    """Every mention in ``text`` of an outside document without the ``docs/`` prefix."""
    return [m.group(0) for m in OUTSIDE_DOC.finditer(text) if not m.group(0).startswith("docs/")]


def test_the_pattern_tells_repository_docs_from_outside_ones() -> None:
    assert outside_citations("see docs/platforms.md §3 and docs/design.md") == []
    assert outside_citations("(platforms.md §4)") == ["platforms.md"]
    assert outside_citations("``shared/platforms.md`` §1") == ["shared/platforms.md"]
    assert outside_citations("CONTRACT.md: names; engineering.md §1.1") == ["CONTRACT.md", "engineering.md"]
    assert outside_citations("../shared/anchors.md and peers.md") == ["../shared/anchors.md", "peers.md"]


def test_no_module_cites_a_document_outside_the_repository() -> None:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                for citation in outside_citations(line):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {citation}")
    assert found == [], "cite docs/... or the vendor's URL instead:\n" + "\n".join(found)
