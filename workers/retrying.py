"""Retry policy: turn a failed step into a Dramatiq decision (retry later, or give up now).

Why not plain Dramatiq retries: the right answer depends on the error *and* the step. A 429 must
wait the platform's ``Retry-After`` (not sooner); a 5xx backs off exponentially within a small
budget; ``invalid_grant`` or a wrong password never improves; and a code exchange whose request
may have reached the platform must not be repeated at all. The connect functions ask
:func:`decide` and either raise the returned ``dramatiq.Retry`` or fail the attempt with the code
of the failing step. Exceptions we did not foresee (database down, a bug) fall through to
Dramatiq's own backoff, bounded by :func:`retry_when`, and end in ``on_retry_exhausted``.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass

import dramatiq
from dramatiq.middleware import CurrentMessage

from social_accounts.errors import (
    InstanceUnreachable,
    LoginFailed,
    PlatformError,
    RateLimited,
    RequestMaybeSent,
    Transient,
)

__all__ = [
    "CONNECT_POLICY",
    "Decision",
    "Deferred",
    "Delivery",
    "RateLimitRetry",
    "RetryPolicy",
    "backoff_ms",
    "current_delivery",
    "decide",
    "retry_when",
]


@dataclass(frozen=True)
class RetryPolicy:
    """Budgets per kind of failure; delays in milliseconds, as everywhere in Dramatiq."""

    #: retries for network blips and 5xx (exponential backoff with jitter)
    max_transient: int = 5
    #: retries when the platform rate-limits us (each waits its Retry-After)
    max_rate_limited: int = 8
    min_backoff_ms: int = 2_000
    max_backoff_ms: int = 60_000
    #: a Retry-After longer than this is not worth holding a connect attempt open for
    max_retry_after_ms: int = 15 * 60 * 1000


CONNECT_POLICY = RetryPolicy()


class RateLimitRetry(dramatiq.Retry):
    """A retry the platform asked for; budgeted separately from transient failures."""


class Deferred(Exception):
    """Not now, and not a failure: a cooldown or a budget says wait ``seconds``; nothing was sent.

    The actor puts the same message back with that delay without spending a retry.
    """

    def __init__(self, seconds: float, reason: str) -> None:
        super().__init__(f"{reason}: {seconds:.1f}s")
        self.seconds = seconds
        self.reason = reason


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


@dataclass(frozen=True)
class Decision:
    """Either ``retry`` (a Dramatiq Retry to raise) or ``fail_code`` (the attempt's error code)."""

    retry: dramatiq.Retry | None
    fail_code: str | None
    reason: str

    @property
    def delay_ms(self) -> int | None:
        return None if self.retry is None else self.retry.delay


def decide(
    error: PlatformError,
    *,
    fail_code: str,
    retries: int,
    single_use: bool = False,
    policy: RetryPolicy = CONNECT_POLICY,
    rng: random.Random | None = None,
) -> Decision:
    """What to do about ``error`` raised by a step whose failure code is ``fail_code``.

    Parameters:
      retries(int): retries this message already had (``Delivery.retries``).
      single_use(bool): the step spends something (an authorization code): a request that may
        have been sent is never repeated and ends as ``exchange_uncertain``.
    """
    rng = rng or random.Random()
    reason = _reason(error)
    if isinstance(error, RequestMaybeSent) and single_use:
        return Decision(None, "exchange_uncertain", reason)
    if isinstance(error, RateLimited):
        delay = int(error.retry_after * 1000)
        if retries >= policy.max_rate_limited or delay > policy.max_retry_after_ms:
            return Decision(None, fail_code, reason)
        # jitter only ever adds: the platform said "not before", never "about then"
        delay += int(rng.uniform(0, 0.1) * max(delay, 1000))
        return Decision(RateLimitRetry(message=reason, delay=delay), None, reason)
    if isinstance(error, Transient):
        if retries >= policy.max_transient:
            return Decision(None, fail_code, reason)
        return Decision(dramatiq.Retry(message=reason, delay=backoff_ms(retries, policy, rng)), None, reason)
    return Decision(None, permanent_code(error, fail_code), reason)


def permanent_code(error: PlatformError, fail_code: str) -> str:
    """A refusal's attempt code: the error's own when it names one, else the step's."""
    if isinstance(error, LoginFailed):
        return error.kind  # login_failed, or app_password_required
    if isinstance(error, InstanceUnreachable):
        return "instance_unreachable"
    return fail_code


def backoff_ms(retries: int, policy: RetryPolicy = CONNECT_POLICY, rng: random.Random | None = None) -> int:
    """Exponential backoff with full jitter in its upper half: ``base * 2**n * U(1, 2)``, capped."""
    rng = rng or random.Random()
    base = policy.min_backoff_ms * (2 ** min(retries, 20))
    return int(min(policy.max_backoff_ms, base * rng.uniform(1.0, 2.0)))


def retry_when(retries: int, exception: BaseException) -> bool:
    """Dramatiq's ``retry_when`` for the connect actors: the budget for whatever reaches it.

    Our own decisions already respect the budget; this bounds the unforeseen exceptions (and
    keeps a Retry raised by mistake from looping forever).
    """
    from workers.runtime import current

    policy = current().retry_policy
    if isinstance(exception, RateLimitRetry):
        return retries < policy.max_rate_limited
    return retries < policy.max_transient


def _reason(error: PlatformError) -> str:
    """A short, secret-free description for history and the retry message (stored in Redis)."""
    parts = [error.kind]
    if error.status is not None:
        parts.append(f"HTTP {error.status}")
    if error.code:
        parts.append(str(error.code)[:64])
    return " ".join(parts)
