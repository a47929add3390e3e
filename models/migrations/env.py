"""Alembic environment: always runs on a connection handed in by ``models.migrate``.

There is no ini file and no URL here on purpose: ``models.migrate`` builds the engine (with the
same settings as the service) and passes an open connection in ``config.attributes``. SQLite
gets ``render_as_batch`` so later ALTERs are done by table copy, which is SQLite's only way.
"""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import models.tables  # noqa: F401  (registers the tables on SQLModel.metadata)

target_metadata = SQLModel.metadata


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations through models.migrate.upgrade(url), not the alembic CLI")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("offline (SQL script) migrations are not supported")
run_migrations_online()
