"""A fake of the eight OAuth platforms and Mastodon, served on loopback for the full tier and
in-process (``httpx.MockTransport``) for the unit tier.

Each platform lives in its own module (``fakeplatform/twitter.py``...) and mounts its routes
under ``/<platform>/`` on one :class:`FakePlatformServer`. Responses are shaped exactly as
``docs/platforms.md`` names them, with the vendor pages that document them, errors and rate-limit headers included.
"""

from tests.fakeplatform.core import FakePlatformServer, FakeRequest, FakeResponse, GrantStore

__all__ = ["FakePlatformServer", "FakeRequest", "FakeResponse", "GrantStore"]
