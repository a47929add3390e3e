"""A real browser on the accounts page: sign in, connect the demo platform, sync, refresh, disconnect.

The service runs as ``social-accounts run --demo`` does (``run_embedded(settings, demo=True)``: web
app, worker threads, scheduler, in-process broker, the demo OAuth provider) in a subprocess, on a
fresh PostgreSQL database. Headless Chromium (the Debian package, driven by Playwright; never
``playwright install``) clicks through it like a person. Screenshots land in ``artifacts/``; the
accounts page with a connected account is copied to ``docs/accounts-page.png`` for the README
when that file is missing or ``UPDATE_DOCS_SCREENSHOT=1`` (so a test run leaves the tree clean).

Locally the test skips when chromium or Playwright is missing; under CI it fails instead.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from models.engine import make_engine
from social_accounts.settings import PLATFORMS
from tests.support import unavailable
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "browser-test-token"
SITE = "demo-site"

LAUNCHER = """
from service.embedded import run_embedded
from social_accounts.settings import Settings
run_embedded(Settings(_env_file=None), demo=True)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def service(pg_url: str, tmp_path: Path) -> Iterator[str]:
    """``run --demo`` in a subprocess on a fresh PostgreSQL database; yields its base URL."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "DATABASE_URL": pg_url,
        "BROKER_URL": "memory://",
        "PUBLIC_URL": base,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "API_TOKEN": TOKEN,
        "STATE_SECRET": "browser-state-secret",
        "TOKEN_KEYS": "k1:" + base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "PYTHONPATH": str(ROOT),
    }
    log = (tmp_path / "service.log").open("w")
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER], cwd=tmp_path, env=env, stdout=log, stderr=log)

    def ready() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"the service exited early:\n{(tmp_path / 'service.log').read_text()[-3000:]}")
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, what="the service answering /healthz")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        unavailable("chromium (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright (pip install playwright)")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def test_a_person_connects_syncs_refreshes_and_disconnects_the_demo_account(
    service: str, browser: Any, pg_url: str
) -> None:
    engine = make_engine(pg_url)

    def events(kind: str) -> int:
        with engine.connect() as conn:
            count = conn.execute(
                sa.text("SELECT count(*) FROM social_account_events WHERE kind = :kind"), {"kind": kind}
            ).scalar_one()
            return int(count)

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(20_000)
    try:
        # sign in with the API token
        page.goto(f"{service}/sites/{SITE}/accounts")
        assert page.locator("#api_token").is_visible()
        page.fill("#api_token", "wrong-token")
        page.click("button:has-text('Sign in')")
        assert "That token is not right." in page.inner_text("#banner")
        page.fill("#api_token", TOKEN)
        page.click("button:has-text('Sign in')")
        page.wait_for_selector("#card-demo")
        assert page.locator("section.card").count() == len(PLATFORMS) + 1  # every platform and the demo

        # connect: the demo platform's consent page, Allow, back to a success banner
        page.click("#card-demo button:has-text('Connect')")
        page.wait_for_selector("#demo-consent")
        page.screenshot(path=str(ARTIFACTS / "browser-1-consent.png"))
        page.click("button:has-text('Allow')")
        page.wait_for_selector("#banner[data-kind=success]", timeout=30_000)
        assert "Corner Café (@corner_cafe)" in page.inner_text("#banner")
        account = page.locator("#card-demo li.account")
        assert account.count() == 1
        followers = account.locator(".count-followers").inner_text()
        assert followers.replace(",", "").isdigit() and int(followers.replace(",", "")) > 1000
        assert "Green" in account.locator(".health").inner_text()
        page.screenshot(path=str(ARTIFACTS / "browser-2-connected.png"), full_page=True)

        # sync now: a synced event, and the counts are on the page afterwards
        synced_before = events("synced")
        account.locator("button:has-text('Sync now')").click()
        assert page.locator("#banner[data-kind=info]").inner_text().startswith("A stats sync was requested")
        wait_until(lambda: events("synced") > synced_before, what="the sync")
        page.goto(f"{service}/sites/{SITE}/accounts")
        account = page.locator("#card-demo li.account")
        for key in ("followers", "following", "posts"):
            assert account.locator(f".count-{key}").inner_text().replace(",", "").isdigit()
        assert "never" not in account.locator(".synced").inner_text()
        page.screenshot(path=str(ARTIFACTS / "browser-3-synced.png"), full_page=True)
        docs_png = ROOT / "docs" / "accounts-page.png"
        if not docs_png.exists() or os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":
            shutil.copyfile(ARTIFACTS / "browser-3-synced.png", docs_png)

        # refresh token: the rotating refresh grant really runs
        refreshed_before = events("refreshed")
        account.locator("button:has-text('Refresh token')").click()
        wait_until(lambda: events("refreshed") > refreshed_before, what="the refresh")
        page.goto(f"{service}/sites/{SITE}/accounts")
        assert page.locator("#card-demo li.account").get_attribute("data-status") == "active"

        # disconnect: a confirmation page first, then the account is disconnected
        page.click("#card-demo a:has-text('Disconnect')")
        page.wait_for_selector("#confirm-disconnect")
        assert "Disconnect Corner Café?" in page.inner_text("h1")
        page.screenshot(path=str(ARTIFACTS / "browser-4-confirm.png"))
        page.click("button:has-text('Yes, disconnect')")
        page.wait_for_selector("#banner[data-kind=info]")

        def disconnected() -> bool:
            page.goto(f"{service}/sites/{SITE}/accounts")
            return page.locator("#card-demo li.account").get_attribute("data-status") == "disconnected"

        wait_until(disconnected, what="the disconnect")
        account = page.locator("#card-demo li.account")
        assert account.locator("button:has-text('Sync now')").count() == 0
        assert "Red" in account.locator(".health").inner_text()
        wait_until(lambda: events("revoked") >= 1, what="the revocation")
        page.screenshot(path=str(ARTIFACTS / "browser-5-disconnected.png"), full_page=True)
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "browser-failure.png"), full_page=True)
        raise
    finally:
        page.close()
        engine.dispose()


def test_denying_consent_shows_why_nothing_was_connected(service: str, browser: Any) -> None:
    page = browser.new_page()
    page.set_default_timeout(20_000)
    try:
        page.goto(f"{service}/sites/{SITE}/accounts")
        page.fill("#api_token", TOKEN)
        page.click("button:has-text('Sign in')")
        page.click("#card-demo button:has-text('Connect')")
        page.click("button:has-text('Deny')")
        page.wait_for_selector("#banner[data-kind=error]", timeout=30_000)
        assert page.inner_text("#banner").strip() == (
            "You declined the permission request, so the account was not connected."
        )
        assert page.locator("#card-demo li.account").count() == 0
    finally:
        page.close()
