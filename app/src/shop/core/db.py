"""The async engine: one per worker process, built in the lifespan."""

from typing import Any
from uuid import uuid4

from sqlalchemy import event
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from shop import metrics
from shop.core.config import Settings


def connect_args(pgbouncer: bool) -> dict[str, Any]:
    """asyncpg arguments; behind PgBouncer's transaction mode every cache is off.

    A server connection is shared by many clients between transactions, so a
    statement prepared by one client may be missing (or clash by name) for the
    next. Unique names plus no caches keep each prepared statement inside the
    transaction that made it.
    """
    if not pgbouncer:
        return {}
    return {
        "statement_cache_size": 0,
        "prepared_statement_cache_size": 0,
        "prepared_statement_name_func": lambda: f"__asyncpg_{uuid4()}__",
    }


def create_engine(settings: Settings, url: str | None = None, **kwargs: Any) -> AsyncEngine:
    return create_async_engine(
        url or str(settings.database_url),
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
        # A connection killed by a PgBouncer/PostgreSQL restart is replaced
        # instead of failing the next request.
        pool_pre_ping=True,
        connect_args=connect_args(settings.pgbouncer),
        **kwargs,
    )


def instrument_pool(engine: AsyncEngine, settings: Settings) -> None:
    """Keep the pool gauges current from pool events, so a scrape costs nothing."""
    metrics.DB_POOL_SIZE.set(settings.db_pool_size + settings.db_max_overflow)
    pool = engine.sync_engine.pool

    @event.listens_for(pool, "checkout")
    def _checkout(*_: object) -> None:
        metrics.DB_POOL_CHECKED_OUT.inc()

    @event.listens_for(pool, "checkin")
    def _checkin(*_: object) -> None:
        metrics.DB_POOL_CHECKED_OUT.dec()


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    # expire_on_commit=False: responses are built from objects after commit,
    # and reloading them would cost a query each.
    return async_sessionmaker(engine, expire_on_commit=False)
