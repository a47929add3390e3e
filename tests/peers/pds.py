"""The real Bluesky reference PDS as a session fixture (``pds``), plus helpers to use it.

``install-pds.sh`` puts Node 22 and ``@atproto/pds`` into a cache outside the checkout;
``start-pds.mjs`` starts the PDS and an in-memory PLC directory on loopback and prints one JSON
ready line. This module finds that install (same cache key as the script), starts it once per
test session, and gives tests what they need: the service and PLC URLs, the JWT secret (to mint
expired tokens), and ``create_account`` (account + app password + profile record).

Locally the fixture skips when the PDS is not installed; under CI it fails
(``tests.support.unavailable``), so a green CI run means the real PDS was used.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

PEERS_DIR = Path(__file__).resolve().parent
START_SCRIPT = PEERS_DIR / "start-pds.mjs"
#: how long the PDS may take to print its ready line (about 2 s normally)
START_TIMEOUT = 60.0


def cache_root() -> Path:
    return Path(os.environ.get("SOCIAL_ACCOUNTS_PEERS_CACHE") or Path.home() / ".cache" / "social-accounts-peers")


def node_version() -> str:
    return (PEERS_DIR / "node-version").read_text().strip()


def install_key() -> str:
    """The cache key install-pds.sh uses: sha256 of the lock file plus the Node version."""
    digest = hashlib.sha256((PEERS_DIR / "package-lock.json").read_bytes() + f"\nnode={node_version()}".encode())
    return digest.hexdigest()[:16]


def install_dir() -> Path:
    return cache_root() / f"pds-{install_key()}"


def node_binary() -> Path:
    return cache_root() / f"node-{node_version()}" / "bin" / "node"


def installed() -> bool:
    return (install_dir() / ".complete").is_file() and node_binary().is_file()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class PdsAccount:
    """A test account on the PDS. ``password`` is the account password, ``app_password`` one
    app password created for it (what users give us)."""

    handle: str
    did: str
    password: str
    app_password: str
    display_name: str | None


@dataclass
class PdsPeer:
    """A running PDS (+ PLC). ``service_url`` is the PDS itself (it is its own entryway)."""

    service_url: str
    plc_url: str
    jwt_secret: str
    service_did: str
    process: subprocess.Popen[bytes]

    def create_account(
        self, handle: str | None = None, *, display_name: str | None = "Test Account", avatar: bool = False
    ) -> PdsAccount:
        """Create an account, an app password and (unless ``display_name`` is None) a profile record."""
        handle = handle or f"u{secrets.token_hex(5)}.test"
        password = secrets.token_urlsafe(16)
        with httpx.Client(base_url=self.service_url + "/xrpc", timeout=30) as client:
            created = client.post(
                "/com.atproto.server.createAccount",
                json={"handle": handle, "email": f"{handle}@example.com", "password": password},
            )
            created.raise_for_status()
            session = created.json()
            auth = {"Authorization": f"Bearer {session['accessJwt']}"}
            app = client.post("/com.atproto.server.createAppPassword", json={"name": "social-accounts"}, headers=auth)
            app.raise_for_status()
            if display_name is not None:
                record: dict[str, Any] = {"$type": "app.bsky.actor.profile", "displayName": display_name}
                if avatar:
                    blob = client.post(
                        "/com.atproto.repo.uploadBlob",
                        content=b"\x89PNG\r\n\x1a\n" + secrets.token_bytes(32),
                        headers={**auth, "Content-Type": "image/png"},
                    )
                    blob.raise_for_status()
                    record["avatar"] = blob.json()["blob"]
                put = client.post(
                    "/com.atproto.repo.putRecord",
                    json={
                        "repo": session["did"],
                        "collection": "app.bsky.actor.profile",
                        "rkey": "self",
                        "record": record,
                    },
                    headers=auth,
                )
                put.raise_for_status()
        return PdsAccount(handle, session["did"], password, app.json()["password"], display_name)

    def mint_access_token(self, did: str, *, expires_in: float, scope: str = "com.atproto.appPass") -> str:
        """An HS256 access JWT signed with the PDS's secret, shaped like its own (``exp`` may be past)."""
        now = int(time.time())
        header = {"typ": "at+jwt", "alg": "HS256"}
        payload = {"scope": scope, "aud": self.service_did, "sub": did, "iat": now, "exp": int(now + expires_in)}
        signing_input = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(payload).encode())
        signature = hmac.new(self.jwt_secret.encode(), signing_input.encode(), hashlib.sha256).digest()
        return signing_input + "." + _b64(signature)


def _read_ready_line(process: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    assert process.stdout is not None
    result: dict[str, Any] = {}

    def read() -> None:
        assert process.stdout is not None
        line = process.stdout.readline()
        if line:
            try:
                result.update(json.loads(line))
            except ValueError:
                result["garbage"] = line[:200].decode(errors="replace")

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    return result


def start_pds(data_dir: Path, *, rate_limits: bool = True) -> PdsPeer:
    """Start PLC + PDS and wait for the ready line. Raises RuntimeError when it does not come."""
    jwt_secret = secrets.token_hex(16)
    env = {
        **os.environ,
        "PEERS_MODULES": str(install_dir() / "node_modules"),
        "PEERS_DATA_DIR": str(data_dir),
        "PDS_JWT_SECRET": jwt_secret,
        "PDS_ADMIN_PASSWORD": secrets.token_hex(12),
        "PDS_RATE_LIMITS": "1" if rate_limits else "0",
        "LOG_ENABLED": "false",
    }
    stderr_path = data_dir / "stderr.log"
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [str(node_binary()), str(START_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            cwd=str(data_dir),
        )
    ready = _read_ready_line(process, START_TIMEOUT)
    if not ready.get("ready"):
        stop_pds(process)
        tail = stderr_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"the reference PDS did not start: {ready or 'no ready line'}\n{tail}")
    return PdsPeer(ready["pds_url"], ready["plc_url"], jwt_secret, ready["service_did"], process)


def stop_pds(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            stream.close()


@pytest.fixture(scope="session")
def pds() -> Iterator[PdsPeer]:
    """The reference PDS for the whole session (skips locally when not installed, fails in CI)."""
    from tests.support import unavailable

    if not installed():
        unavailable("the reference Bluesky PDS (run tests/peers/install-pds.sh)")
    data_dir = Path(tempfile.mkdtemp(prefix="sa-pds-"))
    try:
        peer = start_pds(data_dir)
    except (OSError, RuntimeError) as exc:
        shutil.rmtree(data_dir, ignore_errors=True)
        unavailable(f"the reference Bluesky PDS ({str(exc)[:300]})")
        raise  # unreachable: unavailable() skips or fails
    try:
        yield peer
    finally:
        stop_pds(peer.process)
        shutil.rmtree(data_dir, ignore_errors=True)
