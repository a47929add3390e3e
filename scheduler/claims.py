"""Claiming due accounts: the only database work the scheduler does.

A claim selects accounts whose due time has come and, in the same statement, pushes that time
forward by a lease, then commits before anything is enqueued::

    UPDATE social_accounts SET <due column> = :lease_until
    WHERE id IN (SELECT id FROM social_accounts
                 WHERE status = 'active' AND <due column> <= :now
                 ORDER BY <due column> LIMIT :batch
                 FOR UPDATE SKIP LOCKED)
    RETURNING id

So two claimers (two scheduler replicas around a hand-over) never get the same row, and an
account whose worker died becomes due again when its lease runs out: nothing is lost, nothing
waits on a message that no longer exists. The inner select walks the partial index
``ix_social_accounts_next_refresh_active`` (see the README for the EXPLAIN).
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from models.tables import SocialAccount

__all__ = ["claim_due"]

_TABLE = SocialAccount.__table__  # type: ignore[attr-defined]


def claim_statement(column_name: str, *, now: datetime, lease_until: datetime, batch: int) -> sa.Update:
    column = _TABLE.c[column_name]
    due = (
        sa.select(_TABLE.c.id)
        .where(_TABLE.c.status == "active", column <= now)
        .order_by(column)
        .limit(batch)
        .with_for_update(skip_locked=True)
    )
    return (
        sa.update(_TABLE)
        .where(_TABLE.c.id.in_(due.scalar_subquery()))
        .values({column_name: lease_until})
        .returning(_TABLE.c.id)
    )


def claim_due(
    engine: Engine, column_name: str, *, now: datetime, lease_until: datetime, batch: int = 1000
) -> list[str]:
    """Claim up to ``batch`` due accounts in one committed transaction; returns their ids."""
    stmt = claim_statement(column_name, now=now, lease_until=lease_until, batch=batch)
    with engine.begin() as conn:
        return [str(row[0]) for row in conn.execute(stmt)]
