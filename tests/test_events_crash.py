"""Events survive a worker killed with SIGKILL between a status change and its delivery: real
``social-accounts worker`` processes (``tests.test_crashes``' cluster), real Redis and PostgreSQL,
and a real receiver on loopback."""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

from models.tables import SocialWebhookDelivery, table_of
from tests import test_crashes
from tests.test_crashes import REDELIVERY_BOUND, SLOW, Cluster
from tests.waiting import wait_until
from tests.webhook_receiver import SECRET, Receiver

# the crash tests' private Redis and worker processes
private_redis = test_crashes.private_redis
cluster_factory = test_crashes.cluster_factory
DELIVERIES = table_of(SocialWebhookDelivery)


def test_a_worker_killed_before_the_delivery_answered_still_delivers_once(
    cluster_factory: Callable[..., Cluster], pg_url: str, receiver: Receiver
) -> None:
    cluster = cluster_factory(pg_url, WEBHOOK_URLS=receiver.url, WEBHOOK_SECRETS=SECRET)
    first = cluster.start_worker()
    receiver.answer_next((503, SLOW))  # the first try hangs; its worker dies meanwhile
    account_id = cluster.connect()  # the status change: committed with its outbox row
    wait_until(lambda: receiver.arrived == 1, timeout=30, what="the first delivery in flight")
    cluster.kill(first)
    cluster.start_worker()

    delivered = wait_until(receiver.delivered, timeout=REDELIVERY_BOUND + SLOW, what="the redelivery")
    [event] = delivered  # verified with standardwebhooks
    assert (event.event["type"], event.event["data"]["account_id"]) == ("account.connected", account_id)
    held = [r for r in receiver.all() if r.status == 503]
    assert [r.id for r in held] == [event.id]  # the same webhook-id as the try that was cut off

    def settled() -> bool:
        with cluster.engine.connect() as conn:
            return [r.status for r in conn.execute(sa.select(DELIVERIES))] == ["delivered"]

    wait_until(settled, timeout=30, what="the delivery row")
    assert len(receiver.delivered()) == 1
