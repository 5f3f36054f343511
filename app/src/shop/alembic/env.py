"""Alembic environment: async engine, one transaction, serialized by an advisory lock."""

import asyncio

from alembic import context
from sqlalchemy import Connection, pool, text
from sqlalchemy.ext.asyncio import create_async_engine

from shop.core.db import connect_args
from shop.models import Base

# Any fixed number: two `shop migrate` runs (say, two app hosts deploying at
# once) queue on it instead of racing through the same DDL.
_MIGRATION_LOCK_ID = 7_347_001

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        # Transaction-scoped, so it also works through PgBouncer's transaction mode.
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
        context.run_migrations()


async def _run_async() -> None:
    engine = create_async_engine(
        config.attributes["url"],
        poolclass=pool.NullPool,
        connect_args=connect_args(config.attributes.get("pgbouncer", False))
        | config.attributes.get("tls_connect_args", {}),
    )
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported")
asyncio.run(_run_async())
