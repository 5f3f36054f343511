"""The async engine: one per worker process, built in the lifespan."""

import asyncio
import logging
import math
import socket
import ssl
from typing import Any
from uuid import uuid4

from sqlalchemy import Engine, event, make_url
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool
from sqlalchemy.util import await_
from sqlalchemy.util.concurrency import in_greenlet

from shop import metrics
from shop.core.config import Settings

log = logging.getLogger(__name__)


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


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of every database connection, or None without db_tls_ca_file.

    verify-full: the server's certificate must chain to the CA in db_tls_ca_file and
    name the host the URL dials (an IP address is matched against the certificate's IP
    names). TLS 1.2 at least, as PgBouncer and PostgreSQL require.
    """
    if settings.db_tls_ca_file is None:
        return None
    context = ssl.create_default_context(cafile=str(settings.db_tls_ca_file))
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def tls_connect_args(settings: Settings) -> dict[str, Any]:
    """asyncpg's `ssl` argument: a verifying context, or nothing (asyncpg's default)."""
    context = tls_context(settings)
    return {"ssl": context} if context is not None else {}


def bounded_connect_args(settings: Settings) -> dict[str, Any]:
    """asyncpg arguments of the app's engine: connect_args() plus a bound on every call.

    `timeout` bounds the TCP connect and the login. `command_timeout` bounds each
    statement on the client's clock, the wait in PgBouncer's queue for a server
    connection included; when it passes, asyncpg sends PostgreSQL a cancel request
    (PgBouncer forwards it), so the server stops working for nobody. Behind PgBouncer
    that is the only statement bound: PgBouncer 1.18 refuses a statement_timeout sent
    as a startup parameter and would drop it silently if told to ignore it. Straight
    to PostgreSQL the server enforces the same bound itself (statement_timeout) as well,
    which also covers a client that died mid-statement.
    """
    args = connect_args(settings.pgbouncer) | tls_connect_args(settings)
    args["timeout"] = settings.db_connect_timeout_seconds
    args["command_timeout"] = settings.db_statement_timeout_seconds
    if not settings.pgbouncer:
        timeout_ms = str(int(settings.db_statement_timeout_seconds * 1000))
        args["server_settings"] = {"statement_timeout": timeout_ms}
    return args


def tcp_keepalive_options(user_timeout_seconds: float) -> list[tuple[int, int, int]]:
    """setsockopt() arguments that make a vanished peer an error within the timeout.

    A peer whose host died, or whose packets are dropped, sends no reset: the kernel
    would wait for minutes. TCP_USER_TIMEOUT bounds how long sent data may stay
    unacknowledged (a query to a dead server); keepalive probes each second find an
    idle pooled connection dead in the same time, before a request picks it up
    (Linux counts TCP_USER_TIMEOUT for the probes too).
    """
    user_timeout_ms = int(user_timeout_seconds * 1000)
    probes = max(1, int(user_timeout_seconds))
    return [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1),
        (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1),
        (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, probes),
        (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, user_timeout_ms),
    ]


def _asyncpg_socket(dbapi_connection: Any) -> Any:
    """The socket under SQLAlchemy's adapter of an asyncpg connection, or None.

    asyncpg takes no socket options, so they are set on its transport's socket once
    the connection is made (asyncpg's Connection keeps the transport as `_transport`).
    """
    driver = getattr(dbapi_connection, "driver_connection", None)
    transport = getattr(driver, "_transport", None)
    return transport.get_extra_info("socket") if transport is not None else None


def set_tcp_keepalive(engine: AsyncEngine, settings: Settings) -> None:
    """Every new connection of the engine gets tcp_keepalive_options()."""
    options = tcp_keepalive_options(settings.db_tcp_user_timeout_seconds)

    @event.listens_for(engine.sync_engine, "connect")
    def _keepalive(dbapi_connection: Any, _: object) -> None:
        sock = _asyncpg_socket(dbapi_connection)
        if sock is None:
            log.warning("no socket found on a new database connection: keepalive not set")
            return
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return  # A Unix socket: its peer cannot vanish unnoticed.
        for level, name, value in options:
            sock.setsockopt(level, name, value)


# How long a broken connection's cancel request may take to reach the server before the
# connection is closed (closing it first would drop the cancel: see below).
_CANCEL_GRACE_SECONDS = 0.25


def discard_timed_out_connections(engine: AsyncEngine) -> None:
    """A connection whose statement ran out of time is closed at once, not reused.

    asyncpg raises TimeoutError and sends the server a cancel request in the
    background. The rollback the pool would run next, and the polite close SQLAlchemy
    tries before it hard-closes (up to 2 s), both wait as long again when the
    statement sits in PgBouncer's queue for a server that is not there. So a timed-out
    connection counts as broken (the rest of the pool stays: one slow statement says
    nothing about the others), and a broken connection is closed without a goodbye,
    once its cancel request went out: closed first, PgBouncer would drop the cancel
    along with the client, and the server would go on with the statement (or its
    wait for a lock) for nobody. A new connection to PgBouncer costs a millisecond.
    """

    @event.listens_for(engine.sync_engine, "handle_error")
    def _timeout_breaks_the_connection(context: ExceptionContext) -> None:
        if isinstance(context.original_exception, TimeoutError):
            context.is_disconnect = True
            context.invalidate_pool_on_disconnect = False

    @event.listens_for(engine.sync_engine.pool, "invalidate")
    def _close_at_once(dbapi_connection: Any, _record: object, _exc: object) -> None:
        driver = getattr(dbapi_connection, "driver_connection", None)
        if driver is None or not hasattr(driver, "terminate"):
            return
        # asyncpg keeps its cancel requests in flight as tasks (`_cancellations`).
        pending = [task for task in getattr(driver, "_cancellations", ()) if not task.done()]
        if pending and in_greenlet():
            await_(asyncio.wait(pending, timeout=_CANCEL_GRACE_SECONDS))
        driver.terminate()


def _peer_closed(dbapi_connection: Any) -> bool:
    """Whether the driver already knows its connection is gone (asyncpg, psycopg)."""
    driver = getattr(dbapi_connection, "driver_connection", None)
    if driver is None:
        return False
    if hasattr(driver, "is_closed"):  # asyncpg
        return bool(driver.is_closed())
    return bool(getattr(driver, "closed", False) or getattr(driver, "broken", False))


def drop_closed_connections(pool: Any) -> None:
    """A pooled connection its peer closed is replaced at checkout, for no round trip.

    SQLAlchemy's pool_pre_ping would test each checkout with a query, and on asyncpg
    its ping is BEGIN, a prepared ";" and ROLLBACK: four round trips through PgBouncer
    for every request, about a third of a primary-key read's cost (bench/README.md).
    What it would catch is known without asking: a PgBouncer or PostgreSQL that went
    away closed the socket (the event loop saw it), and one that vanished without a
    word is turned into a closed socket by the TCP keepalive and user timeout above
    within db_tcp_user_timeout_seconds. Raising DisconnectionError in the checkout
    event makes the pool open a new connection instead (SQLAlchemy's documented
    custom pessimistic handling). A connection whose close races the checkout fails
    its request with a 503 and Retry-After, and is replaced.
    """

    @event.listens_for(pool, "checkout")
    def _alive(dbapi_connection: Any, _record: object, _proxy: object) -> None:
        if _peer_closed(dbapi_connection):
            raise DisconnectionError("the database closed this pooled connection")


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
        # A connection killed by a PgBouncer/PostgreSQL restart is replaced at checkout
        # by drop_closed_connections(), without pool_pre_ping's round trips.
        "pool_pre_ping": False,
    }


def create_engine(settings: Settings, url: str | None = None, **kwargs: Any) -> AsyncEngine:
    engine = create_async_engine(
        url or str(settings.database_url),
        connect_args=bounded_connect_args(settings),
        # Errors are logged with their SQL: never with its values (a password hash).
        hide_parameters=True,
        **pool_args(settings),
        **kwargs,
    )
    set_tcp_keepalive(engine, settings)
    discard_timed_out_connections(engine)
    if settings.db_pool_enabled:
        drop_closed_connections(engine.sync_engine.pool)
    return engine


def create_blocking_engine(settings: Settings) -> Engine:
    """A synchronous psycopg engine on the same database, for SHOP_BLOCKING_IO only."""
    url = make_url(str(settings.database_url)).set(drivername="postgresql+psycopg")
    # psycopg prepares a statement after a few executions; behind PgBouncer's
    # transaction mode the next transaction may not find it.
    connect: dict[str, Any] = {"prepare_threshold": None} if settings.pgbouncer else {}
    # libpq's own bounds, the same as the async engine's (libpq counts whole seconds,
    # at least 2, for the connect timeout).
    user_timeout_ms = int(settings.db_tcp_user_timeout_seconds * 1000)
    connect |= {
        "connect_timeout": max(2, math.ceil(settings.db_connect_timeout_seconds)),
        "keepalives": 1,
        "keepalives_idle": 1,
        "keepalives_interval": 1,
        "keepalives_count": max(1, int(settings.db_tcp_user_timeout_seconds)),
        "tcp_user_timeout": user_timeout_ms,
    }
    if not settings.pgbouncer:
        timeout_ms = int(settings.db_statement_timeout_seconds * 1000)
        connect["options"] = f"-c statement_timeout={timeout_ms}"
    if settings.db_tls_ca_file is not None:
        # libpq's verify-full: the same checks as tls_context() for the async engine.
        connect |= {"sslmode": "verify-full", "sslrootcert": str(settings.db_tls_ca_file)}
    engine = create_sync_engine(url, connect_args=connect, **pool_args(settings))
    if settings.db_pool_enabled:
        drop_closed_connections(engine.pool)
    return engine


_COUNTED = "shop_checked_out"


def instrument_pool(engine: AsyncEngine, settings: Settings) -> None:
    """Keep the pool gauges current from pool events, so a scrape costs nothing."""
    # Without a pool there is no limit to report: 0, and the checked-out gauge still
    # counts the connections open for requests.
    pool_size = settings.db_pool_size + settings.db_max_overflow if settings.db_pool_enabled else 0
    metrics.DB_POOL_SIZE.set(pool_size)
    pool = engine.sync_engine.pool

    # A checkout that fails (its pre-ping or its connect, as while the database is down)
    # is checked in without ever having been checked out: only a connection the
    # checkout event counted is uncounted, or the gauge would drift below zero.
    @event.listens_for(pool, "checkout")
    def _checkout(_dbapi_connection: object, record: Any, _proxy: object) -> None:
        record.info[_COUNTED] = True
        metrics.DB_POOL_CHECKED_OUT.inc()

    @event.listens_for(pool, "checkin")
    def _checkin(_dbapi_connection: object, record: Any) -> None:
        if record is not None and record.info.pop(_COUNTED, False):
            metrics.DB_POOL_CHECKED_OUT.dec()


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    # expire_on_commit=False: responses are built from objects after commit,
    # and reloading them would cost a query each.
    return async_sessionmaker(engine, expire_on_commit=False)


# SQLSTATE classes (the first two characters) that mean the database cannot serve
# right now, not that the request is wrong: a retry may well succeed.
# 08 connection exception, 40 transaction rollback (serialization failure, deadlock),
# 53 insufficient resources (too many connections), 57 operator intervention
# (57014 query_canceled by statement_timeout, 57P01 admin_shutdown, 57P03 cannot
# connect now), 58 system error (I/O), and 55P03 lock_not_available.
_TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58"})
_TRANSIENT_SQLSTATES = frozenset({"55P03"})


def sqlstate(exc: DBAPIError) -> str | None:
    """The SQLSTATE of a driver error (asyncpg's adapter and psycopg both carry it)."""
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return code if isinstance(code, str) and len(code) == 5 else None


def is_transient(exc: DBAPIError) -> bool:
    """No SQLSTATE (the connection broke, the driver gave up) or a transient one."""
    code = sqlstate(exc)
    return (
        code is None
        or code[:2] in _TRANSIENT_SQLSTATE_CLASSES
        or code in _TRANSIENT_SQLSTATES
        or exc.connection_invalidated
    )
