"""A dependency that fails costs a client a quick 503 with Retry-After, never a hang, and
the app is back as soon as the dependency is, without a restart (issue 14).

The bounds asserted are the issue's own: every answer within 3 s while the database is
down or slow, success within 2 s of it answering again. The app runs with its default
bounds (Settings), and PgBouncer with the server-side settings roles/pgbouncer sets.
"""

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from pydantic import ValidationError
from redis import Redis
from sqlalchemy.exc import DBAPIError

from shop import migrations
from shop.api.routes.products import POPULAR_LOCK_KEY, POPULAR_LOCK_MS
from shop.core.config import Settings
from shop.main import create_app
from tests.conftest import (
    Account,
    client_for,
    create_user,
    insert_products,
    make_settings,
    running_app,
)
from tests.servers import PostgresServer, start_pgbouncer, start_postgres

DEADLINE_SECONDS = 3.0  # every answer while a dependency is down or slow
RECOVERY_SECONDS = 2.0  # from the dependency answering again to the first success

# roles/pgbouncer's defaults for noticing a dead server and retrying one that came back.
PGBOUNCER_SERVER_SETTINGS = """
server_connect_timeout = 1
server_login_retry = 0.5
server_check_delay = 2
query_wait_timeout = 5
"""


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL of its own: these tests stop and start it."""
    server, stop = start_postgres()
    try:
        server.execute("CREATE DATABASE shop")
        migrations.upgrade(Settings(_env_file=None), url=server.url("shop"))
        yield server
    finally:
        stop()


@pytest.fixture(scope="module")
def own_pgbouncer(own_postgres: PostgresServer) -> Iterator[int]:
    port, stop = start_pgbouncer(own_postgres, PGBOUNCER_SERVER_SETTINGS)
    try:
        yield port
    finally:
        stop()


@pytest.fixture
def running_postgres(own_postgres: PostgresServer) -> Iterator[PostgresServer]:
    """The server, started again after a test that stopped it and failed."""
    yield own_postgres
    try:
        own_postgres.execute("SELECT 1")
    except OSError:
        own_postgres.start_server()


async def _client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async for app in running_app(settings):
        async with client_for(app) as client:
            yield client


def _unavailable_count(cause: str) -> float:
    return REGISTRY.get_sample_value("shop_unavailable_responses_total", {"cause": cause}) or 0.0


async def _timed(request: asyncio.Future) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    response = await request
    return response, time.monotonic() - start


def _assert_unavailable(response: httpx.Response, seconds: float) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) >= 1
    assert seconds < DEADLINE_SECONDS, f"answered after {seconds:.2f} s"


async def _requests_while_down(client: httpx.AsyncClient, user: Account, product: int) -> None:
    """Reads, writes and readiness, several at once, for longer than one deadline."""
    order = {"items": [{"product_id": product, "quantity": 1}]}
    sign_up = {"name": "Down", "email": "down@example.com", "password": "correct horse"}
    end = time.monotonic() + DEADLINE_SECONDS + 1
    while time.monotonic() < end:
        results = await asyncio.gather(
            _timed(client.get(f"/api/users/{user.id}")),
            _timed(client.get(f"/api/users/{user.id}/orders", headers=user.headers)),
            _timed(client.post("/api/orders", json=order, headers=user.headers)),
            _timed(client.post("/api/users", json=sign_up)),
        )
        for response, seconds in results:
            _assert_unavailable(response, seconds)
        ready, seconds = await _timed(client.get("/health/ready"))
        assert ready.status_code == 503
        assert seconds < DEADLINE_SECONDS


async def _seconds_until_success(client: httpx.AsyncClient, user: Account) -> float:
    start = time.monotonic()
    while time.monotonic() - start < 10 * RECOVERY_SECONDS:
        response = await client.get(f"/api/users/{user.id}")
        if response.status_code == 200:
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    pytest.fail("no success within 20 s of PostgreSQL answering again")


@pytest.mark.parametrize("via_pgbouncer", [True, False], ids=["pgbouncer", "direct"])
async def test_postgresql_stopped_fast_503_then_back_without_restart(
    running_postgres: PostgresServer, own_pgbouncer: int, redis_url: str, via_pgbouncer: bool
) -> None:
    postgres = running_postgres
    direct_url = postgres.url("shop")
    url = postgres.url("shop", port=own_pgbouncer) if via_pgbouncer else direct_url
    (product,) = await insert_products(direct_url, [("Fault", "faults", 100)])
    async for client in _client(make_settings(url, redis_url, pgbouncer=via_pgbouncer)):
        user = await create_user(client, f"fault-{via_pgbouncer}@example.com")
        # Warm pooled connections, which the stop breaks.
        assert all(
            r.status_code == 200
            for r in await asyncio.gather(*(client.get(f"/api/users/{user.id}") for _ in range(5)))
        )

        checked_out = REGISTRY.get_sample_value("shop_db_pool_checked_out")
        postgres.stop_server()
        before = _unavailable_count("database")
        await _requests_while_down(client, user, product)
        # The database's own bounds answered, not the request deadline.
        assert _unavailable_count("database") > before

        await asyncio.to_thread(postgres.start_server)  # returns once PostgreSQL answers
        assert await _seconds_until_success(client, user) < RECOVERY_SECONDS
        # Then every request succeeds: no broken connection is left in the pool.
        responses = await asyncio.gather(*(client.get(f"/api/users/{user.id}") for _ in range(20)))
        assert [r.status_code for r in responses] == [200] * 20
        assert (await client.get("/health/ready")).status_code == 200
        # Failed checkouts were not counted as connections in use, nor uncounted.
        assert REGISTRY.get_sample_value("shop_db_pool_checked_out") == checked_out


async def test_popular_list_answers_the_last_copy_while_the_database_is_down(
    running_postgres: PostgresServer, redis_url: str
) -> None:
    """An order deletes the popular entry in Redis; a read right after it, while the
    database is away (a failover), answers the process's last copy instead of a 503."""
    postgres = running_postgres
    url = postgres.url("shop")
    (product,) = await insert_products(url, [("Stale if error", "faults", 100)])
    async for client in _client(make_settings(url, redis_url, pgbouncer=False)):
        user = await create_user(client, "stale-if-error@example.com")
        order = {"items": [{"product_id": product, "quantity": 1}]}
        assert (
            await client.post("/api/orders", json=order, headers=user.headers)
        ).status_code == 201
        before = await client.get("/api/products/popular")
        assert before.status_code == 200, before.text
        assert before.json()
        assert (
            await client.post("/api/orders", json=order, headers=user.headers)
        ).status_code == 201
        postgres.stop_server()
        try:
            during, seconds = await _timed(client.get("/api/products/popular"))
            assert during.status_code == 200, during.text
            assert during.json() == before.json()
            assert seconds < DEADLINE_SECONDS
            # What has no copy still answers 503.
            _assert_unavailable(*await _timed(client.get(f"/api/users/{user.id}")))
        finally:
            await asyncio.to_thread(postgres.start_server)


async def _lock_waiters_gone(conn: asyncpg.Connection) -> bool:
    for _ in range(40):
        waiting = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND datname = 'shop'"
        )
        if waiting == 0:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_pgbouncer_restarted_fast_503_then_back_without_restart(
    running_postgres: PostgresServer, redis_url: str
) -> None:
    postgres = running_postgres
    port, stop = start_pgbouncer(postgres, PGBOUNCER_SERVER_SETTINGS)
    try:
        url = postgres.url("shop", port=port)
        (product,) = await insert_products(postgres.url("shop"), [("Bouncer", "faults", 1)])
        async for client in _client(make_settings(url, redis_url, pgbouncer=True)):
            user = await create_user(client, "bouncer-restart@example.com")
            assert (await client.get(f"/api/users/{user.id}")).status_code == 200

            stop()  # Its pooled client connections are closed with it.
            await _requests_while_down(client, user, product)

            _, stop = await asyncio.to_thread(
                start_pgbouncer, postgres, PGBOUNCER_SERVER_SETTINGS, port
            )  # returns once it listens
            assert await _seconds_until_success(client, user) < RECOVERY_SECONDS
            responses = await asyncio.gather(
                *(client.get(f"/api/users/{user.id}") for _ in range(20))
            )
            assert [r.status_code for r in responses] == [200] * 20
    finally:
        stop()


@pytest.mark.parametrize("via_pgbouncer", [True, False], ids=["pgbouncer", "direct"])
async def test_slow_database_answers_503_within_the_statement_bound(
    running_postgres: PostgresServer, own_pgbouncer: int, redis_url: str, via_pgbouncer: bool
) -> None:
    """A lock held on the users table: reads of it wait until the statement bound
    cancels them on the server, then the next request works on the same pool."""
    postgres = running_postgres
    direct_url = postgres.url("shop")
    url = postgres.url("shop", port=own_pgbouncer) if via_pgbouncer else direct_url
    settings = make_settings(url, redis_url, pgbouncer=via_pgbouncer)
    async for client in _client(settings):
        user = await create_user(client, f"slow-{via_pgbouncer}@example.com")
        locker = await asyncpg.connect(
            host="127.0.0.1", port=postgres.port, user=postgres.user, database="shop"
        )
        try:
            async with locker.transaction():
                await locker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
                results = await asyncio.gather(
                    *(_timed(client.get(f"/api/users/{user.id}")) for _ in range(3))
                )
                for response, seconds in results:
                    _assert_unavailable(response, seconds)
                    assert seconds >= settings.db_statement_timeout_seconds * 0.9
                # Cancelled on the server, not left waiting for the lock (which it would
                # do until the lock goes: a statement whose cancel got lost never leaves).
                assert await _lock_waiters_gone(locker)
        finally:
            await locker.close()
        assert (await client.get(f"/api/users/{user.id}")).status_code == 200


async def test_the_request_deadline_answers_whatever_the_request_waits_for(
    database_url: str, redis_url: str
) -> None:
    """A wait no dependency bound covers: a cold popular list whose lock holder died,
    with a lock wait longer than the deadline. The deadline answers."""
    settings = make_settings(
        database_url,
        redis_url,
        request_timeout_seconds=1.5,
        db_statement_timeout_seconds=0.4,
        db_pool_timeout_seconds=1,
        cache_lock_wait_seconds=10,
    )
    async for client in _client(settings):
        Redis.from_url(redis_url).set(POPULAR_LOCK_KEY, "dead worker", px=POPULAR_LOCK_MS)
        before = _unavailable_count("deadline")
        response, seconds = await _timed(client.get("/api/products/popular"))
        _assert_unavailable(response, seconds)
        assert _unavailable_count("deadline") == before + 1
        assert response.json() == {"detail": "the service did not answer in time, retry"}
        assert seconds >= settings.request_timeout_seconds
        # The worker serves the next request as usual.
        Redis.from_url(redis_url).delete(POPULAR_LOCK_KEY)
        assert (await client.get("/api/products/popular")).status_code == 200


async def test_the_deadline_cuts_a_statement_short_and_the_pool_stays_sound(
    running_postgres: PostgresServer, own_pgbouncer: int, redis_url: str
) -> None:
    """The deadline passes while a statement waits on the server (through PgBouncer,
    where only the driver's cancel can stop it): the request is answered 503, the
    statement is cancelled on the server and the worker's next requests succeed."""
    postgres = running_postgres
    settings = make_settings(
        postgres.url("shop", port=own_pgbouncer),
        redis_url,
        pgbouncer=True,
        request_timeout_seconds=1.5,
        db_pool_timeout_seconds=0.2,
        db_statement_timeout_seconds=1.2,
        cache_lock_wait_seconds=0.5,
    )
    async for client in _client(settings):
        user = await create_user(client, "cut-short@example.com")
        # A dead lock holder: the request waits 0.5 s for it, then queries itself, and
        # the query waits for the table lock; the deadline comes before the statement bound.
        Redis.from_url(redis_url).set(POPULAR_LOCK_KEY, "dead worker", px=POPULAR_LOCK_MS)
        locker = await asyncpg.connect(
            host="127.0.0.1", port=postgres.port, user=postgres.user, database="shop"
        )
        try:
            async with locker.transaction():
                await locker.execute("LOCK TABLE products IN ACCESS EXCLUSIVE MODE")
                before = _unavailable_count("deadline")
                response, seconds = await _timed(client.get("/api/products/popular"))
                _assert_unavailable(response, seconds)
                assert _unavailable_count("deadline") == before + 1
                assert await _lock_waiters_gone(locker)
        finally:
            await locker.close()
        Redis.from_url(redis_url).delete(POPULAR_LOCK_KEY)
        responses = await asyncio.gather(
            client.get("/api/products/popular"),
            *(client.get(f"/api/users/{user.id}") for _ in range(10)),
        )
        assert [r.status_code for r in responses] == [200] * 11


@pytest.fixture
def silent_redis() -> Iterator[str]:
    """A port that accepts connections and never answers: a Redis that hangs."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(128)
        yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"


@pytest.fixture
def refusing_redis() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


@pytest.mark.parametrize("kind", ["silent", "refusing"])
async def test_redis_unreachable_requests_still_succeed_quickly(
    database_url: str, request: pytest.FixtureRequest, kind: str
) -> None:
    redis_url = request.getfixturevalue(f"{kind}_redis")
    settings = make_settings(database_url, redis_url, redis_timeout_seconds=0.1)
    async for client in _client(settings):
        await insert_products(database_url, [(f"P{i}", "cached", 100 + i) for i in range(3)])
        user = await create_user(client, f"{kind}@example.com")
        order = {"items": [{"product_id": 1, "quantity": 2}]}
        for request_ in (
            client.get("/api/products/popular"),
            client.get("/api/products", params={"category": "cached"}),
            client.post("/api/orders", json=order, headers=user.headers),
            client.get(f"/api/users/{user.id}/orders", headers=user.headers),
        ):
            response, seconds = await _timed(request_)
            assert response.status_code in (200, 201), response.text
            # Each Redis call costs at most its timeout (0.1 s); a request makes a few.
            assert seconds < 1.0, f"took {seconds:.2f} s"
        ready = (await client.get("/health/ready")).json()
        assert ready == {"status": "ok", "database": "ok", "redis": "error"}


async def test_database_connections_notice_a_vanished_peer(app: FastAPI) -> None:
    """Keepalive probes each second and TCP_USER_TIMEOUT on every pooled connection's
    socket: a peer whose host died, sending no reset, is an error within 2 s, not after
    the kernel's default of minutes."""
    async with app.state.engine.connect() as conn:
        raw = await conn.get_raw_connection()
        sock = raw.driver_connection._transport.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 2000


@pytest.mark.parametrize(
    "bounds",
    [
        {"db_pool_timeout_seconds": 1.5, "db_statement_timeout_seconds": 1.5},
        {"db_connect_timeout_seconds": 3},
        {"redis_timeout_seconds": 3},
        {"password_hash_wait_seconds": 3},
    ],
)
def test_bounds_that_do_not_fit_the_deadline_are_refused(bounds: dict[str, float]) -> None:
    with pytest.raises(ValidationError, match="must be below request_timeout_seconds"):
        Settings(_env_file=None, request_timeout_seconds=3, **bounds)


class _DriverError(Exception):
    """What a driver raises: an error with its SQLSTATE."""

    def __init__(self, sqlstate: str | None) -> None:
        super().__init__(f"driver error {sqlstate}")
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("sqlstate", "status"),
    [
        ("22021", 422),  # character_not_in_repertoire (a NUL in text)
        ("22003", 422),  # numeric_value_out_of_range
        ("08006", 503),  # connection_failure
        ("57014", 503),  # query_canceled (statement_timeout)
        ("57P01", 503),  # admin_shutdown
        ("57P03", 503),  # cannot_connect_now (starting up, shutting down)
        ("53300", 503),  # too_many_connections
        ("40001", 503),  # serialization_failure
        ("40P01", 503),  # deadlock_detected
        ("55P03", 503),  # lock_not_available
        (None, 503),  # no SQLSTATE: the driver lost the connection
        ("42P01", 500),  # undefined_table: a bug (or missing migrations), not the client's
    ],
)
async def test_database_errors_are_classified_by_sqlstate(
    settings: Settings, sqlstate: str | None, status: int
) -> None:
    app = create_app(settings)

    async def fail() -> None:
        raise DBAPIError("SELECT 1", None, _DriverError(sqlstate))

    app.add_api_route("/fail", fail)
    async with client_for(app) as client:
        response = await client.get("/fail")
    assert response.status_code == status
    assert ("Retry-After" in response.headers) == (status == 503)
