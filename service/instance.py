"""The ``social-accounts run`` serving from a working directory, as ``doctor`` finds it.

``run`` keeps its broker, its scheduler's leadership and its cooldowns in its own memory, so no
other process can see them in Redis. While it serves it holds an exclusive ``flock`` on
``INSTANCE_FILE`` and writes there what it runs with; ``doctor`` started in the same directory
reads the file only while that lock is held. The kernel releases the lock when the process ends,
``kill -9`` included, so a file left behind never passes for a running instance.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from social_accounts.settings import LOCAL_STATE_DIR, Settings

__all__ = ["INSTANCE_FILE", "Instance", "hold", "running"]

log = logging.getLogger("service.instance")

#: relative to the working directory, beside the secrets ``run`` generates
INSTANCE_FILE = LOCAL_STATE_DIR / "run.json"


@dataclass(frozen=True)
class Instance:
    """What a running ``run`` serves with (URLs without passwords)."""

    pid: int
    public_url: str
    database: str
    broker: str
    started_at: str


def _display(url: str) -> str:
    from service.doctor import safe_url

    return safe_url(url)


def describe(settings: Settings) -> Instance:
    """The instance ``settings`` make, as this process would record it."""
    return Instance(
        pid=os.getpid(),
        public_url=settings.public_url,
        database=_display(settings.database_url),
        broker=_display(settings.effective_broker_url),
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def _lock(fd: int, kind: int) -> bool:
    """Take ``kind`` of lock on ``fd`` without waiting; False when a live process holds it."""
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def hold(settings: Settings, path: Path = INSTANCE_FILE) -> Iterator[Instance | None]:
    """Record this process as the instance serving from ``path``'s directory, until the block ends.

    Yields None (and records nothing) when another live ``run`` already holds the file: that one
    stays the instance ``doctor`` reports.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if not _lock(fd, fcntl.LOCK_EX):
            log.warning("another `social-accounts run` serves from this directory (%s)", path)
            yield None
            return
        instance = describe(settings)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(asdict(instance)).encode())
        try:
            yield instance
        finally:
            path.unlink(missing_ok=True)  # still locked: a reader never sees it released and present
    finally:
        os.close(fd)


def running(path: Path = INSTANCE_FILE) -> Instance | None:
    """The ``run`` holding ``path`` right now, or None (no file, a stale file, or one being written)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        if _lock(fd, fcntl.LOCK_SH):
            return None  # nobody holds it: whoever wrote it is gone
        with os.fdopen(os.dup(fd)) as fh:
            raw = fh.read()
        try:
            return Instance(**json.loads(raw))
        except (ValueError, TypeError):  # being written this very moment
            return None
    finally:
        os.close(fd)
