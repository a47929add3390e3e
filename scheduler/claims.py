"""Claiming due accounts: the only database work the scheduler does.

A claim selects accounts whose due time has come and, in the same statement, pushes that time
forward by a lease, then commits before anything is enqueued::

    UPDATE social_accounts SET <due column> = :lease_until
    WHERE id = ANY(ARRAY(SELECT id FROM social_accounts
                         WHERE status = 'active' AND <due column> <= :now
                         ORDER BY <due column> LIMIT :batch
                         FOR UPDATE SKIP LOCKED))
    RETURNING id

So two claimers (two scheduler replicas around a hand-over) never get the same row, and an
account whose worker died becomes due again when its lease runs out: nothing is lost, nothing
waits on a message that no longer exists. The inner select walks the partial index
``ix_social_accounts_next_refresh_active`` (or ``..._next_sync_active``) and the update finds
its rows by primary key (bench/README.md has the EXPLAIN at a million rows). On SQLite (the
embedded ``run``, one process) the same claim is a plain ``IN (subquery)``.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Engine

from models.tables import SocialAccount

__all__ = ["claim_due"]

_TABLE = SocialAccount.__table__  # type: ignore[attr-defined]


def claim_statement(
    column_name: str, *, now: datetime, lease_until: datetime, batch: int, dialect_name: str = "postgresql"
) -> sa.Update:
    """The claim as one UPDATE statement (see the module docstring); exposed for the benchmark's EXPLAIN."""
    column = _TABLE.c[column_name]
    due = (
        sa.select(_TABLE.c.id)
        # a literal, not a bound parameter: psycopg prepares a statement run five times, and a
        # generic plan for ``status = $1`` could not use the partial index (``WHERE status = 'active'``)
        .where(_TABLE.c.status == sa.literal_column("'active'"), column <= now)
        .order_by(column)
        .limit(batch)
        .with_for_update(skip_locked=True)
    )
    if dialect_name == "postgresql":
        # ``id = ANY(ARRAY(subquery))``: the subquery runs once (an InitPlan) and the update finds
        # its rows through the primary key. ``IN (subquery)`` or a CTE joined back let the planner
        # hash-join against a sequential scan of the whole table (seen at 100k rows).
        picked = sa.func.array(due.scalar_subquery(), type_=postgresql.ARRAY(sa.String()))
        where = _TABLE.c.id == sa.any_(picked)
    else:  # SQLite (the embedded ``run``): one writer at a time, no row locks to skip
        where = _TABLE.c.id.in_(due.scalar_subquery())
    return sa.update(_TABLE).where(where).values({column_name: lease_until}).returning(_TABLE.c.id)


def claim_due(
    engine: Engine, column_name: str, *, now: datetime, lease_until: datetime, batch: int = 1000
) -> list[str]:
    """Claim up to ``batch`` due accounts in one committed transaction; returns their ids."""
    stmt = claim_statement(column_name, now=now, lease_until=lease_until, batch=batch, dialect_name=engine.dialect.name)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # A claim lost in a database crash only makes its accounts due again (claimed and sent
            # once more; refreshes are idempotent), so the commit need not wait for the WAL flush.
            conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
        return [str(row[0]) for row in conn.execute(stmt)]
