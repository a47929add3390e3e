"""Key rotation: re-encrypt every stored secret under the newest key of TOKEN_KEYS.

Operator flow: put the new key first in TOKEN_KEYS (``k2:...,k1:...``) on every process, run
``social-accounts keys rotate``, then drop the old key. Why it is built this way:

* Each batch is its own short transaction, so a large table never holds locks for long and a
  crash loses at most one batch of work.
* Rows are paged by primary key (keyset pagination, ``id > last_id``), and only values whose key
  id is not the current one are selected, so a re-run after a crash simply continues: rows
  already re-encrypted are not even read again, and a finished rotation rotates 0.
* Each value is written with a compare-and-set on the old ciphertext: if a token refresh wrote a
  new value meanwhile (already under the new key), rotation leaves it alone.
* The plaintext never changes, so ``token_version`` is untouched (an in-flight refresh is not
  made to lose its compare-and-set).

A ``keys_rotated`` event records the counts — never a key or a secret.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from sqlmodel import SQLModel

from models.crypto import VERSION, KeyRing
from models.repository import record_event
from models.tables import ENCRYPTED_COLUMNS, utcnow

__all__ = ["Progress", "rotate_keys"]

#: ``progress(table, rows_done, rows_total)`` after every committed batch
Progress = Callable[[str, int, int], None]


def _stale(table: sa.Table, columns: tuple[str, ...], kid: str) -> sa.ColumnElement[bool]:
    """Rows with at least one value not under key ``kid``."""
    prefix = f"{VERSION}:{kid}:"
    return sa.or_(*(sa.and_(table.c[c].is_not(None), ~table.c[c].startswith(prefix, autoescape=True)) for c in columns))


def _rotate_batch(
    conn: sa.Connection, ring: KeyRing, table: sa.Table, columns: tuple[str, ...], rows: list[sa.Row]
) -> dict[str, int]:
    done = dict.fromkeys(columns, 0)
    for row in rows:
        for column in columns:
            old = row._mapping[column]
            if old is None or not ring.needs_rotation(old):
                continue
            new = ring.rotate(old, table=table.name, column=column, row_id=row.id)
            result = conn.execute(
                sa.update(table).where(table.c.id == row.id, table.c[column] == old).values({column: new})
            )
            done[column] += result.rowcount
    return done


def _rotate_table(
    engine: Engine, ring: KeyRing, table: sa.Table, columns: tuple[str, ...], batch_size: int, progress: Progress | None
) -> dict[str, int]:
    stale = _stale(table, columns, ring.current_kid)
    with engine.connect() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(table).where(stale)).scalar_one()
    counts = dict.fromkeys(columns, 0)
    seen, last_id = 0, ""
    if progress:
        progress(table.name, 0, total)
    while True:
        with engine.begin() as conn:
            query = (
                sa.select(table.c.id, *(table.c[c] for c in columns))
                .where(stale, table.c.id > last_id)
                .order_by(table.c.id)
                .limit(batch_size)
            )
            rows = list(conn.execute(query))
            if not rows:
                break
            for column, n in _rotate_batch(conn, ring, table, columns, rows).items():
                counts[column] += n
        last_id = rows[-1].id
        seen += len(rows)
        if progress:
            progress(table.name, min(seen, total), total)
    return counts


def rotate_keys(
    engine: Engine, ring: KeyRing, batch_size: int = 500, progress: Progress | None = None
) -> dict[str, int]:
    """Re-encrypt every secret not under ``ring``'s first key.

    Returns the number of values re-encrypted per ``"table.column"``. Raises ``UnknownKeyError``
    when a value's key is not in the ring (the batches before it stay committed; fix TOKEN_KEYS
    and run again).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    counts: dict[str, int] = {}
    for table_name, columns in ENCRYPTED_COLUMNS.items():
        table = SQLModel.metadata.tables[table_name]
        for column, n in _rotate_table(engine, ring, table, columns, batch_size, progress).items():
            counts[f"{table_name}.{column}"] = n
    with Session(engine) as session, session.begin():
        record_event(
            session,
            kind="keys_rotated",
            reason=f"re-encrypted under key {ring.current_kid}",
            data={"kid": ring.current_kid, "counts": counts, "total": sum(counts.values())},
            now=utcnow(),
        )
    return counts
