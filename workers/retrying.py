"""The retry policy: what a failed step does next (retry, defer, give up), as one pure function.

The error says what it allows (``social_accounts.errors``: retryable, retry_after, maybe_sent);
the step says what it may spend (:class:`Step`: single-use or not, its failure code); the
budgets say how much (:class:`RetryPolicy`). :func:`decide` combines the three and nothing
else, so every number it hands out is testable without a broker. ``workers.policy_middleware``
applies its answer to every actor, the way Dramatiq's ``Retries`` applies its backoff.

Rules, in order: a NotNow is put back after its wait without spending a retry; a request that
may have reached the platform is never repeated by a single-use step (it ends ``uncertain``);
a final error gives up with its own code or the step's; a rate limit waits at least its
``Retry-After`` (plus jitter, which only ever adds), unless that is beyond the step's limit;
anything else backs off exponentially. Every retry spends one of the same budget.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import dramatiq
from dramatiq.middleware import CurrentMessage, TimeLimitExceeded

from social_accounts.errors import NotNow, PlatformError, SocialAccountsError

__all__ = [
    "CONNECT_POLICY",
    "Decision",
    "Delivery",
    "RetryPolicy",
    "Step",
    "backoff_ms",
    "current_delivery",
    "decide",
    "jitter_ceiling_ms",
    "step",
]


@dataclass(frozen=True)
class RetryPolicy:
    """Budgets of one actor; delays in milliseconds, as everywhere in Dramatiq."""

    #: retries for network blips, 5xx and unforeseen exceptions (exponential backoff with jitter)
    max_transient: int = 5
    #: retries when the platform rate-limits us (each waits its Retry-After)
    max_rate_limited: int = 8
    min_backoff_ms: int = 2_000
    max_backoff_ms: int = 60_000
    #: a Retry-After longer than this gives up with the step's code instead of waiting
    max_retry_after_ms: int = 15 * 60 * 1000
    #: the most a rate-limit or deferral wait is lengthened by (spreads workers that were told alike)
    max_jitter_ms: int = 5_000


CONNECT_POLICY = RetryPolicy()


@dataclass(frozen=True)
class Step:
    """One kind of platform call an actor makes.

    ``single_use``: the call spends something (an authorization code, a rotating refresh token,
    a grant being revoked): once it may have reached the platform it is never repeated, and the
    step ends as ``<name>_uncertain``. ``fail_code``: the code a final failure ends with.
    """

    name: str
    fail_code: str
    single_use: bool = False

    @property
    def uncertain_code(self) -> str:
        return f"{self.name}_uncertain"


Action = Literal["retry", "defer", "give_up"]


@dataclass(frozen=True)
class Decision:
    """What to do with a failed message; ``reason`` is short and secret-free (it is stored)."""

    action: Action
    step: str
    reason: str
    #: the message's retries before this decision
    retries: int
    #: how long until the message runs again (retry and defer)
    delay_ms: int | None = None
    #: the failure code when giving up
    code: str | None = None
    #: a single-use request may have reached the platform: nobody knows whether it took effect
    uncertain: bool = False
    #: the exception is not from our error tree (a bug, the database down): Dramatiq's dead letter
    unforeseen: bool = False


@contextmanager
def step(name: str) -> Iterator[None]:
    """Name the step an error of our tree comes from (the innermost name wins)."""
    try:
        yield
    except SocialAccountsError as error:
        if error.step is None:
            error.step = name
        raise


def decide(
    error: BaseException,
    *,
    step: Step,
    retries: int,
    policy: RetryPolicy = CONNECT_POLICY,
    wait_limit_ms: int | None = None,
    rng: random.Random | None = None,
) -> Decision:
    """What to do about ``error``, raised by ``step`` after ``retries`` retries.

    Parameters:
      wait_limit_ms(int | None): how long the message may still wait before it is too old to
        run (its ``max_age``); a deferral or a retry of ours that would outlast it gives up now,
        with the step's code, instead of being dropped unrun later.
    """
    decision = _decide(error, step=step, retries=retries, policy=policy, rng=rng or random.Random())
    late = wait_limit_ms is not None and decision.delay_ms is not None and decision.delay_ms >= wait_limit_ms
    if late and not decision.unforeseen:
        why = f"{decision.reason}, longer than the request may wait"
        return Decision("give_up", step.name, why, retries, code=step.fail_code)
    return decision


def _decide(error: BaseException, *, step: Step, retries: int, policy: RetryPolicy, rng: random.Random) -> Decision:
    reason = _reason(error)

    def give_up(code: str, **kw: bool) -> Decision:
        return Decision("give_up", step.name, reason, retries, code=code, **kw)

    if isinstance(error, NotNow):
        return Decision("defer", step.name, reason, retries, delay_ms=_at_least(error.seconds, policy, rng))
    if isinstance(error, SocialAccountsError):
        if error.maybe_sent and step.single_use:
            return give_up(step.uncertain_code, uncertain=True)
        if not error.retryable:
            return give_up(error.error_code or step.fail_code)
        if error.retry_after is not None:
            if retries >= policy.max_rate_limited or error.retry_after * 1000 > policy.max_retry_after_ms:
                return give_up(step.fail_code)
            return Decision("retry", step.name, reason, retries, delay_ms=_at_least(error.retry_after, policy, rng))
        if retries >= policy.max_transient:
            return give_up(step.fail_code)
        return Decision("retry", step.name, reason, retries, delay_ms=backoff_ms(retries, policy, rng))
    # not ours: a bug, a driver error, a time limit; bounded like a transient failure
    if retries >= policy.max_transient:
        return give_up(step.fail_code, unforeseen=True)
    asked = error.delay if isinstance(error, dramatiq.Retry) else None
    delay = int(asked) if asked is not None else backoff_ms(retries, policy, rng)
    return Decision("retry", step.name, reason, retries, delay_ms=delay, unforeseen=True)


def jitter_ceiling_ms(delay_ms: int, policy: RetryPolicy = CONNECT_POLICY) -> int:
    """The most a wait of ``delay_ms`` is lengthened by: a tenth of it, at least 100 ms, capped."""
    return min(policy.max_jitter_ms, max(100, delay_ms // 10))


def _at_least(seconds: float, policy: RetryPolicy, rng: random.Random) -> int:
    """``seconds`` plus jitter: the platform said "not before", never "about then"."""
    delay = int(seconds * 1000)
    return delay + int(rng.uniform(0, jitter_ceiling_ms(delay, policy)))


def backoff_ms(retries: int, policy: RetryPolicy = CONNECT_POLICY, rng: random.Random | None = None) -> int:
    """Exponential backoff with full jitter in its upper half: ``base * 2**n * U(1, 2)``, capped."""
    rng = rng or random.Random()
    base = policy.min_backoff_ms * (2 ** min(retries, 20))
    return int(min(policy.max_backoff_ms, base * rng.uniform(1.0, 2.0)))


@dataclass(frozen=True)
class Delivery:
    """Which message is running and how many times it was retried already."""

    message_id: str
    retries: int


def current_delivery() -> Delivery:
    """The running message's id and retry count; a fresh id when called outside a worker."""
    message = CurrentMessage.get_current_message()
    if message is None:
        return Delivery(message_id=str(uuid.uuid4()), retries=0)
    return Delivery(message_id=message.message_id, retries=int(message.options.get("retries", 0)))


def _reason(error: BaseException) -> str:
    """A short, secret-free description for history and the message (stored in Redis).

    Only our own errors say more than their type: their messages are scrubbed, a driver's are not.
    """
    if isinstance(error, NotNow):
        return error.reason
    if isinstance(error, PlatformError):
        parts = [error.kind]
        if error.status is not None:
            parts.append(f"HTTP {error.status}")
        if error.code:
            parts.append(str(error.code)[:64])
        return " ".join(parts)
    if isinstance(error, SocialAccountsError):
        code = getattr(error, "code", None)
        return f"{type(error).__name__} {code}" if isinstance(code, str) else type(error).__name__
    return "timeout" if isinstance(error, TimeLimitExceeded) else type(error).__name__
