"""The one place that builds and installs the Dramatiq broker.

Importing this module installs nothing. Dramatiq binds an actor to a broker when the actor is
declared, and ``dramatiq.get_broker()`` silently builds a RabbitMQ broker when none was set and
``pika`` is importable; so actors are declared on :func:`actor_broker` instead: the installed
broker, or until one is installed a holder that refuses to send. :func:`install_broker` (called
by each entry point through ``workers.runtime.Runtime.install_broker``) moves every actor onto
the real broker and makes it Dramatiq's global one.

Redis redelivery timing (why the numbers): a worker killed mid-message leaves the message in its
ack set until a live worker runs queue maintenance for that queue *and* sees the dead worker's
heartbeat older than ``heartbeat_timeout``. Dramatiq's defaults (60 s, 1 command in 1000) make
that minutes. An idle consumer polls its queue at least every ``worker_timeout`` (200 ms under
``social-accounts worker``: ``service.cli.IDLE_POLL_MS``; Dramatiq's default is 1 s), every poll
refreshes its process's heartbeat, and each poll runs maintenance with probability
``MAINTENANCE_CHANCE / 1e6``: 10 % and a 10 s heartbeat timeout give redelivery a little over
10 s after the kill. Maintenance is one small Lua script, so ten percent of idle polls is cheap,
and 10 s stays far above the gap between two heartbeats of a live, even busy, process. Both are
public parameters of Dramatiq's ``RedisBroker``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import AgeLimit, CurrentMessage, Retries, TimeLimit

from social_accounts.errors import ConfigError
from social_accounts.settings import Settings
from workers import messages, runtime
from workers.encoding import install_encoder
from workers.events import EventNudge
from workers.metrics_middleware import MessageLatency
from workers.policy_middleware import PolicyMiddleware
from workers.warmup import WarmUp

__all__ = [
    "ExpiredConnectMessages",
    "HEARTBEAT_TIMEOUT_MS",
    "MAINTENANCE_CHANCE",
    "actor_broker",
    "build_broker",
    "get_broker",
    "install_broker",
    "setup",
]

#: a worker silent this long is considered dead and its unacked messages are redelivered
HEARTBEAT_TIMEOUT_MS = 10_000
#: out of 1,000,000 broker commands, how many also run queue maintenance (Dramatiq default: 1000)
MAINTENANCE_CHANCE = 100_000
#: backstop for one message; every HTTP call has its own, much shorter, timeouts
TIME_LIMIT_MS = 5 * 60 * 1000
#: defaults for actors that set nothing themselves (connect actors set their own)
MIN_BACKOFF_MS = 2_000
MAX_BACKOFF_MS = 5 * 60 * 1000
MAX_RETRIES = 5

log = logging.getLogger(__name__)

_lock = threading.Lock()
_installed: dramatiq.Broker | None = None
_waiting: _Declarations | None = None


class ExpiredConnectMessages(dramatiq.Middleware):
    """A connect message skipped unrun (``AgeLimit``: a ``code_received`` older than
    ``messages.CODE_MAX_AGE_MS``) fails its attempt at once with ``timeout``.

    The actor never runs for such a message, so without this the attempt would stay pending
    until the reconciler times it out (``attempt_timeout_seconds``, 30 minutes by default).
    """

    ACTORS = frozenset({messages.CODE_RECEIVED, messages.BLUESKY_LOGIN})

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        if message.actor_name not in self.ACTORS:
            return
        attempt_id = (message.kwargs or {}).get("attempt_id")
        if not isinstance(attempt_id, str):
            return
        try:
            from workers import connect  # late: the web app and the scheduler import this module too

            connect.fail_expired(
                runtime.current(), attempt_id, actor_name=message.actor_name, message_id=message.message_id
            )
        except Exception as exc:  # the reconciler's timeout still ends the attempt
            log.warning("could not end attempt %s after its message expired: %s", attempt_id, type(exc).__name__)


def _middleware() -> list[dramatiq.Middleware]:
    """Dramatiq's defaults with our limits, plus CurrentMessage (actors read their message id),
    MessageLatency (``social_accounts_message_latency_seconds``), ExpiredConnectMessages and EventNudge."""
    middleware: list[dramatiq.Middleware] = []
    for cls in dramatiq.middleware.default_middleware:
        if cls is TimeLimit:
            middleware.append(TimeLimit(time_limit=TIME_LIMIT_MS))
        elif cls is Retries:
            # our retry policy in Retries' place (``workers.policy_middleware``)
            middleware.append(
                PolicyMiddleware(max_retries=MAX_RETRIES, min_backoff=MIN_BACKOFF_MS, max_backoff=MAX_BACKOFF_MS)
            )
        elif cls is AgeLimit:
            middleware.append(AgeLimit())
        else:
            middleware.append(cls())
    middleware.append(CurrentMessage())
    middleware.append(MessageLatency())
    middleware.append(WarmUp())
    middleware.append(ExpiredConnectMessages())
    middleware.append(EventNudge())  # a message that wrote a public event starts the dispatcher
    return middleware


def build_broker(settings: Settings) -> dramatiq.Broker:
    """A broker for ``settings.effective_broker_url``: ``redis://``, ``amqp://`` or ``memory://``.

    Building the process's broker also installs the process's message encoder
    (``workers.encoding.install_encoder``: Dramatiq's encoder is global, and every entry point
    builds its broker here, through ``workers.runtime.Runtime.broker``).

    Raises:
      ConfigError: for any other scheme (the URL itself is never echoed: it may hold a password).
    """
    url = settings.effective_broker_url
    scheme = url.split(":", 1)[0].lower()
    install_encoder()
    if scheme in {"redis", "rediss", "unix"}:
        return RedisBroker(
            url=url,
            namespace=settings.redis_namespace,
            heartbeat_timeout=HEARTBEAT_TIMEOUT_MS,
            maintenance_chance=MAINTENANCE_CHANCE,
            middleware=_middleware(),
        )
    if scheme in {"amqp", "amqps"}:
        return RabbitmqBroker(url=url, middleware=_middleware())
    if scheme == "memory":
        broker = StubBroker(middleware=_middleware())
        broker.emit_after("process_boot")
        return broker
    raise ConfigError(f"BROKER_URL must start with redis://, amqp:// or memory:// (got {scheme}://)")


class _Declarations(StubBroker):
    """Holds the actors declared before any broker is installed, with our middleware (so their
    options validate as on the real broker). Sending through it is a wiring error, never a
    message silently kept in memory."""

    def enqueue(self, message: dramatiq.Message[Any], *, delay: int | None = None) -> dramatiq.Message[Any]:
        raise RuntimeError(
            f"no broker installed: cannot send {message.actor_name} "
            "(call workers.runtime.Runtime.install_broker at start)"
        )


def actor_broker() -> dramatiq.Broker:
    """The broker to declare an actor on: ``@dramatiq.actor(..., broker=actor_broker())``.

    The installed broker, or the holder :func:`install_broker` empties, never Dramatiq's implicit
    default.
    """
    global _waiting
    with _lock:
        if _installed is not None:
            return _installed
        if _waiting is None:
            _waiting = _Declarations(middleware=_middleware())
        return _waiting


def install_broker(broker: dramatiq.Broker) -> dramatiq.Broker:
    """Make ``broker`` the global one, moving every actor already declared onto it.

    Actors bind to a broker when they are declared; moving them lets an entry point (or a test)
    install its broker before or after the actor modules are imported, and install another one
    later, without declaring actors twice.
    """
    global _installed
    with _lock:
        previous, _installed = _installed or _waiting, broker
        if previous is not None and previous is not broker:
            for actor in list(previous.actors.values()):
                actor.broker = broker
                broker.declare_actor(actor)
        dramatiq.set_broker(broker)
        return broker


def setup(settings: Settings) -> dramatiq.Broker:
    """Build the broker for ``settings`` and install it."""
    return install_broker(build_broker(settings))


def get_broker() -> dramatiq.Broker:
    """The installed broker; when none is yet, the process runtime's, installed now."""
    with _lock:
        broker = _installed
    return broker if broker is not None else runtime.current().install_broker()
