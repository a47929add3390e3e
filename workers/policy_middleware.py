"""ONE Dramatiq middleware that applies ``workers.retrying.decide`` to every failed message.

It takes the place of Dramatiq's ``Retries`` in the broker and works the same way: per-actor
options (``actor_options``), the decision in ``after_process_message``, and a retry is the same
message put back with a delay through ``broker.enqueue`` (same id and timestamp, ``retries``
counted in its options). What it adds: the error tree and the failing step decide, a NotNow is
put back without spending a retry, and a wait that would outlast the actor's ``max_age``
(``AgeLimit``'s option) gives up now instead of being dropped unrun later.

Actor options:
  retry_policy(RetryPolicy | Callable[[], RetryPolicy]): the budgets (read at decision time).
  step(Step): the actor's own step: errors raised outside a named step, and unforeseen ones.
  steps(Sequence[Step]): the other steps its errors may name (``workers.retrying.step``).
  on_decision(Callable[[MessageProxy, Decision], None]): records the outcome (attempt history,
    account events) before it is applied; a failing hook is logged and the decision still applies.
  max_retries(int): Dramatiq's option, for actors with no ``retry_policy``.
  throws: Dramatiq's option: the worker logs these as expected (one line, no traceback); errors
    of our tree are still decided by the policy, any other listed exception fails at once.

Giving up on an error of our tree acks the message (the hook recorded the outcome); giving up
on an unforeseen exception fails it into Dramatiq's dead-letter queue, as ``Retries`` does.
The traceback kept in the message names frames and a secret-free reason, never an error's text.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import traceback
from collections.abc import Callable
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.common import current_millis

from social_accounts.errors import SocialAccountsError
from workers.retrying import Decision, RetryPolicy, Step, decide

__all__ = ["PolicyMiddleware"]

log = logging.getLogger(__name__)

#: the step of an actor that declares none
DEFAULT_STEP = Step("message", fail_code="failed")


class PolicyMiddleware(dramatiq.Middleware):
    """Retry, defer or give up, as the error and the actor's options say.

    Parameters:
      max_retries, min_backoff, max_backoff: the budgets of actors that set no ``retry_policy``.
    """

    def __init__(self, *, max_retries: int = 5, min_backoff: int = 2_000, max_backoff: int = 300_000) -> None:
        self.default_policy = RetryPolicy(
            max_transient=max_retries,
            max_rate_limited=max_retries,
            min_backoff_ms=min_backoff,
            max_backoff_ms=max_backoff,
        )

    @property
    def actor_options(self) -> set[str]:
        return {"retry_policy", "step", "steps", "on_decision", "max_retries", "throws"}

    def policy_for(self, actor: dramatiq.Actor[Any, Any]) -> RetryPolicy:
        policy = actor.options.get("retry_policy")
        if callable(policy):
            policy = policy()
        if isinstance(policy, RetryPolicy):
            return policy
        max_retries = actor.options.get("max_retries")
        if max_retries is None:
            return self.default_policy
        return dataclasses.replace(self.default_policy, max_transient=max_retries, max_rate_limited=max_retries)

    def decision_for(
        self, actor: dramatiq.Actor[Any, Any], message: MessageProxy, exception: BaseException
    ) -> Decision:
        """The policy's answer for ``exception`` raised by ``message`` (no side effect)."""
        own: Step = actor.options.get("step") or DEFAULT_STEP
        steps: dict[str, Step] = {s.name: s for s in (own, *actor.options.get("steps", ()))}
        named = exception.step if isinstance(exception, SocialAccountsError) else None
        max_age = message.options.get("max_age") or actor.options.get("max_age")
        wait_limit = int(max_age) - (current_millis() - message.message_timestamp) if max_age else None
        return decide(
            exception,
            step=steps.get(named or "", own),
            retries=int(message.options.get("retries", 0)),
            policy=self.policy_for(actor),
            wait_limit_ms=wait_limit,
        )

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is None:
            return
        actor = broker.get_actor(message.actor_name)
        throws = message.options.get("throws") or actor.options.get("throws")
        if throws and isinstance(exception, throws) and not isinstance(exception, SocialAccountsError):
            log.info("Aborting message %r.", message.message_id)
            message.fail()
            return
        decision = self.decision_for(actor, message, exception)
        hook: Callable[[MessageProxy, Decision], None] | None = actor.options.get("on_decision")
        if hook is not None:
            try:
                hook(message, decision)
            except Exception as exc:  # the database may be what failed; the decision still applies
                log.warning(
                    "could not record the %s of message %r: %s", decision.action, message.message_id, type(exc).__name__
                )
        if decision.action == "give_up":
            log.info("Giving up on message %r: %s (%s).", message.message_id, decision.code, decision.reason)
            if decision.unforeseen:
                message.options["traceback"] = _traceback(exception, decision)
                message.fail()
            return
        assert decision.delay_ms is not None
        if decision.action == "retry":
            message.options["retries"] = decision.retries + 1
            message.options["traceback"] = _traceback(exception, decision)
            message.options["requeue_timestamp"] = int(time.time() * 1000)
        log.info("%s message %r in %d milliseconds.", decision.action.title(), message.message_id, decision.delay_ms)
        broker.enqueue(message.copy(), delay=decision.delay_ms)


def _traceback(exception: BaseException, decision: Decision) -> str:
    """Dramatiq's ``traceback`` option without the exception's text (a driver's could quote a value)."""
    frames = "".join(traceback.format_tb(exception.__traceback__, limit=30))
    return f"Traceback (most recent call last):\n{frames}{type(exception).__name__}: {decision.reason}"
