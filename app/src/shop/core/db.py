"""The async engine: one per worker process, built in the lifespan."""

from typing import Any
from uuid import uuid4

from sqlalchemy import Engine, event, make_url
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

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


def pool_args(settings: Settings) -> dict[str, Any]:
    """Pool options shared by the async engine and the blocking one."""
    if not settings.db_pool_enabled:
        # Every checkout opens a new connection and every checkin closes it: a ping
        # would test a connection that was just made.
        return {"poolclass": NullPool}
    return {
        "pool_size": settings.db_pool_size,
        "max_overflow": settings.db_max_overflow,
        "pool_timeout": settings.db_pool_timeout_seconds,
        # A connection killed by a PgBouncer/PostgreSQL restart is replaced
        # instead of failing the next request.
        "pool_pre_ping": True,
    }


def create_engine(settings: Settings, url: str | None = None, **kwargs: Any) -> AsyncEngine:
    return create_async_engine(
        url or str(settings.database_url),
        connect_args=connect_args(settings.pgbouncer),
        **pool_args(settings),
        **kwargs,
    )


def create_blocking_engine(settings: Settings) -> Engine:
    """A synchronous psycopg engine on the same database, for SHOP_BLOCKING_IO only."""
    url = make_url(str(settings.database_url)).set(drivername="postgresql+psycopg")
    # psycopg prepares a statement after a few executions; behind PgBouncer's
    # transaction mode the next transaction may not find it.
    connect = {"prepare_threshold": None} if settings.pgbouncer else {}
    return create_sync_engine(url, connect_args=connect, **pool_args(settings))


def instrument_pool(engine: AsyncEngine, settings: Settings) -> None:
    """Keep the pool gauges current from pool events, so a scrape costs nothing."""
    # Without a pool there is no limit to report: 0, and the checked-out gauge still
    # counts the connections open for requests.
    pool_size = settings.db_pool_size + settings.db_max_overflow if settings.db_pool_enabled else 0
    metrics.DB_POOL_SIZE.set(pool_size)
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
