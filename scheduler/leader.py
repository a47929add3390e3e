"""One leader among scheduler replicas.

Several ``social-accounts scheduler`` processes may run (one per machine); exactly one emits.
The leader holds a Redis lock with an owner token (``hostname:pid:random``), extends it well
before it expires, and stops emitting the moment an extension fails. When the leader dies its lock
expires after ``ttl`` seconds and a standby, which tries every few seconds, takes over.

Emitted work is idempotent anyway (claims use ``SKIP LOCKED`` and leases), so the rare duplicate
tick around a hand-over does no harm: the lock is about not doing the work twice, not safety.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import uuid
from typing import Protocol

import redis
from redis.exceptions import LockError, RedisError

__all__ = ["LocalLeader", "Leader", "RedisLeader", "leader_key"]


class Leader(Protocol):
    def try_lead(self) -> bool: ...
    def is_leader(self) -> bool: ...
    def resign(self) -> None: ...


def leader_key(namespace: str) -> str:
    return f"{namespace}:scheduler:leader"


class LocalLeader:
    """The embedded ``run``: one process, always the leader."""

    def try_lead(self) -> bool:
        return True

    def is_leader(self) -> bool:
        return True

    def resign(self) -> None:
        return None


class RedisLeader:
    """Leadership through a Redis lock with an owner token.

    ``try_lead()`` is called periodically (every ``ttl / 3`` seconds): it extends the lock when we
    hold it, or tries to take it when nobody does. ``is_leader()`` asks Redis whether the token
    stored is still ours, so a leader paused past its TTL never emits after losing the lock.
    """

    def __init__(self, client: redis.Redis, namespace: str, ttl: float = 10.0) -> None:
        self.ttl = ttl
        self.identity = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lock = client.lock(leader_key(namespace), timeout=ttl, blocking=False, thread_local=False)
        self._held = False
        self._mutex = threading.Lock()

    def try_lead(self) -> bool:
        with self._mutex:
            try:
                if self._held:
                    try:
                        self._lock.extend(self.ttl, replace_ttl=True)
                        return True
                    except LockError:  # expired (and maybe taken): try a fresh acquire right away
                        self._held = False
                self._held = bool(self._lock.acquire(token=self.identity))
            except (LockError, RedisError):
                self._held = False
            return self._held

    def is_leader(self) -> bool:
        with self._mutex:
            if not self._held:
                return False
            try:
                self._held = bool(self._lock.owned())
            except RedisError:
                self._held = False
            return self._held

    def resign(self) -> None:
        with self._mutex:
            if self._held:
                with contextlib.suppress(LockError, RedisError):
                    self._lock.release()
            self._held = False
