"""Publishing messages: the only functions other packages call to reach the workers.

Every function takes an optional ``broker``; without one it uses the process's installed broker
(``workers.broker.get_broker()``, built from settings), never Dramatiq's implicit default, which
would silently be RabbitMQ when ``pika`` is importable. Publishing does not import any actor
module, so the web app and the scheduler stay light.

All functions return the Dramatiq ``message_id`` and raise
``dramatiq.errors.BrokerConnectionError`` (message without secrets) when the broker cannot be
reached, so the callback endpoint can answer 503 and lose nothing but the user's click.
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.errors import BrokerConnectionError, BrokerError

from platforms.http import scrub
from workers import messages

__all__ = [
    "code_received_kwargs",
    "code_received_message",
    "enqueue_bluesky_login",
    "enqueue_code_received",
    "request_disconnect",
    "request_refresh",
    "request_sync",
]


def enqueue_code_received(
    broker: dramatiq.Broker | None = None,
    *,
    attempt_id: str,
    code_enc: str | None = None,
    error: str | None = None,
    error_description: str | None = None,
) -> str:
    """Hand an OAuth callback to the workers (the callback endpoint's only side effect).

    Parameters:
      broker(Broker | None): the broker to use; None for the installed one.
      attempt_id(str): the attempt the verified ``state`` names.
      code_enc(str | None): the authorization code, already encrypted with
        ``ring.encrypt(code, table="message", column="code", row_id=attempt_id)``.
      error(str | None): the platform's ``error`` parameter (``access_denied``...).
      error_description(str | None): the platform's words; scrubbed and capped here.
    """
    message = code_received_message(
        attempt_id=attempt_id, code_enc=code_enc, error=error, error_description=error_description
    )
    return _send(broker, message)


def code_received_message(
    *, attempt_id: str, code_enc: str | None = None, error: str | None = None, error_description: str | None = None
) -> dramatiq.Message[Any]:
    """The message ``enqueue_code_received`` sends, built but not sent."""
    return messages.build_message(
        messages.CODE_RECEIVED,
        **code_received_kwargs(
            attempt_id=attempt_id, code_enc=code_enc, error=error, error_description=error_description
        ),
    )


def code_received_kwargs(
    *, attempt_id: str, code_enc: str | None = None, error: str | None = None, error_description: str | None = None
) -> dict[str, Any]:
    """The keyword arguments of a ``code_received`` message (the platform's words scrubbed and
    capped), the one place that shapes them. The callback endpoint hands them to its batcher
    (``web_callback.batching``), which encodes them with ``workers.messages``."""
    return {
        "attempt_id": attempt_id,
        "code_enc": code_enc,
        "error": scrub(error, 64) if error else None,
        "error_description": scrub(error_description) if error_description else None,
    }


def enqueue_bluesky_login(attempt_id: str, *, broker: dramatiq.Broker | None = None) -> str:
    """Ask a worker to log in to Bluesky with the app password stored (encrypted) on the attempt."""
    return _publish(broker, messages.BLUESKY_LOGIN, attempt_id=attempt_id)


def request_refresh(account_id: str, reason: str = "requested", *, broker: dramatiq.Broker | None = None) -> str:
    """Public (README, "For other modules"): refresh one account's token now; ``reason`` lands in its event trail."""
    return _publish(broker, messages.REFRESH_ACCOUNT, account_id=account_id, reason=scrub(reason, 100))


def request_sync(account_id: str, *, broker: dramatiq.Broker | None = None) -> str:
    """Public (README, "For other modules"): fetch one account's stats now."""
    return _publish(broker, messages.SYNC_ACCOUNT, account_id=account_id)


def request_disconnect(account_id: str, *, purge: bool = False, broker: dramatiq.Broker | None = None) -> str:
    """Revoke the account's grant where the platform allows it, then remove the account's tokens,
    or with ``purge`` the account itself and every trace of it."""
    if purge:
        return _publish(broker, messages.DISCONNECT_ACCOUNT, account_id=account_id, purge=True)
    return _publish(broker, messages.DISCONNECT_ACCOUNT, account_id=account_id)


def _publish(broker: dramatiq.Broker | None, actor_name: str, **kwargs: Any) -> str:
    """Build the message and enqueue it; broker failures become one secret-free error."""
    return _send(broker, messages.build_message(actor_name, **kwargs))


def _send(broker: dramatiq.Broker | None, message: dramatiq.Message[Any]) -> str:
    if broker is None:
        from workers.broker import get_broker  # lazy: settings are read only when needed

        broker = get_broker()
    try:
        broker.declare_queue(message.queue_name)
        broker.enqueue(message)
    except BrokerError:
        raise
    except Exception as exc:  # redis.RedisError, pika errors, OSError: all mean "broker down"
        raise BrokerConnectionError(f"could not enqueue {message.actor_name} ({type(exc).__name__})") from None
    return message.message_id
