"""The switches that turn one tip off at a time for the benchmark (SHOP_CACHE_ENABLED,
SHOP_DB_POOL_ENABLED, SHOP_LEAN_MODELS, SHOP_BLOCKING_IO), the cache's fast path and the
bare ASGI hello world. Each test looks at what the switch changes for real: Redis's own
counters, PostgreSQL's sessions, the JSON, the event loop."""

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import psycopg
import pytest
from fastapi import FastAPI
from redis import Redis

from shop import hello
from shop.core.config import Settings
from shop.seed import asyncpg_dsn
from tests.conftest import (
    Account,
    client_for,
    create_user,
    insert_products,
    make_settings,
    running_app,
)
from tests.servers import PostgresServer, free_port, wait_for_port

APP_DIR = Path(__file__).resolve().parents[1]
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))


async def _app_client(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async for app in running_app(settings):
        async with client_for(app) as client:
            yield app, client


async def _shop_with_orders(
    client: httpx.AsyncClient, database_url: str
) -> tuple[Account, list[int]]:
    """A user with two orders over three products; returns the user and product ids."""
    products = await insert_products(
        database_url, [("Pen", "office", 150), ("Ink", "office", 900), ("Pad", "office", 300)]
    )
    user = await create_user(client, "switches@example.com", name="Sam")
    for items in ([(products[0], 2), (products[1], 1)], [(products[2], 5)]):
        response = await client.post(
            "/api/orders",
            json={"items": [{"product_id": p, "quantity": q} for p, q in items]},
            headers=user.headers,
        )
        assert response.status_code == 201, response.text
    return user, products


def test_switches_from_environment(monkeypatch) -> None:
    defaults = Settings(_env_file=None)
    assert (defaults.cache_enabled, defaults.db_pool_enabled, defaults.lean_models) == (
        True,
        True,
        True,
    )
    assert defaults.blocking_io is False
    monkeypatch.setenv("SHOP_CACHE_ENABLED", "false")
    monkeypatch.setenv("SHOP_DB_POOL_ENABLED", "false")
    monkeypatch.setenv("SHOP_LEAN_MODELS", "false")
    monkeypatch.setenv("SHOP_BLOCKING_IO", "true")
    switched = Settings(_env_file=None)
    assert (switched.cache_enabled, switched.db_pool_enabled, switched.lean_models) == (
        False,
        False,
        False,
    )
    assert switched.blocking_io is True


# --- SHOP_CACHE_ENABLED=false ---------------------------------------------------------------


def _redis_commands(redis: Redis) -> dict[str, int]:
    return {name: stats["calls"] for name, stats in redis.info("commandstats").items()}


async def test_cache_disabled_sends_nothing_to_redis(database_url: str, redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    connections = redis.info("stats")["total_connections_received"]
    commands = _redis_commands(redis)

    settings = make_settings(database_url, redis_url, cache_enabled=False)
    async for app, client in _app_client(settings):
        user, (pen, _ink, pad) = await _shop_with_orders(client, database_url)
        first = (await client.get("/api/products/popular")).json()
        # Sales that bypass the API (and so any invalidation) show at once: no cache.
        conn = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            await conn.execute(
                "INSERT INTO order_items (order_id, product_id, quantity, unit_price_cents) "
                "SELECT id, $1, 100, 150 FROM orders WHERE user_id = $2 LIMIT 1",
                pen,
                user.id,
            )
        finally:
            await conn.close()
        second = (await client.get("/api/products/popular", params={"limit": 1})).json()
        ready = await client.get("/health/ready")
        assert app.state.cache.enabled is False

    assert [p["id"] for p in first] == [pad, pen, _ink]
    assert second == [{**first[1], "sold": 102}]
    assert ready.json() == {"status": "ok", "database": "ok", "redis": "disabled"}
    # Redis's own counters: no connection, no command but this test's INFO calls, no key.
    assert redis.info("stats")["total_connections_received"] == connections
    after = _redis_commands(redis)
    assert {k: v for k, v in after.items() if k != "cmdstat_info"} == {
        k: v for k, v in commands.items() if k != "cmdstat_info"
    }
    assert redis.dbsize() == 0


async def test_cache_enabled_keeps_popular_products_in_redis(
    client: httpx.AsyncClient, redis_url: str
) -> None:
    """The counterpart: the same read with the cache on leaves its entry in Redis."""
    assert (await client.get("/api/products/popular")).json() == []
    assert (await client.get("/health/ready")).json()["redis"] == "ok"
    assert Redis.from_url(redis_url).exists("shop:products:popular:v3") == 1


# --- the cache hit's fast path ----------------------------------------------------------------

# Names that JSON must escape, or that a byte-level cut could get wrong.
AWKWARD_NAMES = [
    'Thé "vert" \\ 100 %',
    "two\nlines,\tand a tab",
    "</script><b>",
    "emoji 🍵 and ünïcödé",
    "",
]


async def test_cache_hit_bytes_equal_the_uncached_json(database_url: str, redis_url: str) -> None:
    products = await insert_products(
        database_url, [(name or "x", "odd", 100 + i) for i, name in enumerate(AWKWARD_NAMES)]
    )
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        # An empty name, which the API could not create, still must round-trip.
        await conn.execute("UPDATE products SET name = '' WHERE id = $1", products[-1])
    finally:
        await conn.close()

    limits = [1, 3, 10, 100]
    uncached: dict[int, httpx.Response] = {}
    async for _app, client in _app_client(
        make_settings(database_url, redis_url, cache_enabled=False)
    ):
        user = await create_user(client, "odd@example.com")
        for i, product in enumerate(products):
            response = await client.post(
                "/api/orders",
                json={"items": [{"product_id": product, "quantity": 10 - i}]},
                headers=user.headers,
            )
            assert response.status_code == 201
        for limit in limits:
            uncached[limit] = await client.get("/api/products/popular", params={"limit": limit})

    assert [p["name"] for p in uncached[100].json()] == AWKWARD_NAMES
    async for app, client in _app_client(make_settings(database_url, redis_url)):
        miss = await client.get("/api/products/popular", params={"limit": 3})
        hits = {
            limit: await client.get("/api/products/popular", params={"limit": limit})
            for limit in limits
        }
        raw = await app.state.cache.redis.get("shop:products:popular:v3")

    assert miss.content == uncached[3].content
    for limit in limits:
        assert hits[limit].content == uncached[limit].content, limit
        assert hits[limit].headers["content-type"] == uncached[limit].headers["content-type"]
        assert hits[limit].headers["content-length"] == uncached[limit].headers["content-length"]
    # The entry is its soft expiry, then one product per line: what the hit path
    # cuts without parsing.
    assert raw.count(b"\n") == 1 + len(AWKWARD_NAMES) - 1


async def test_cache_hit_of_an_empty_list(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/products/popular")).content == b"[]"
    assert (await client.get("/api/products/popular")).content == b"[]"


# --- SHOP_DB_POOL_ENABLED=false ---------------------------------------------------------------


async def _sessions_and_backends(postgres: PostgresServer, database: str) -> tuple[int, list[int]]:
    """PostgreSQL's count of sessions ever opened on `database`, and the backends on it now.

    Asked from another database, so the question adds no session of its own."""
    conn = await asyncpg.connect(host="127.0.0.1", port=postgres.port, user=postgres.user)
    try:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        sessions = await conn.fetchval(
            "SELECT sessions FROM pg_stat_database WHERE datname = $1", database
        )
        pids = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 ORDER BY pid", database
        )
    finally:
        await conn.close()
    return sessions, [row["pid"] for row in pids]


async def _settled(postgres: PostgresServer, database: str, sessions: int) -> list[int]:
    """Waits until PostgreSQL counted `sessions` sessions (a backend reports its own when
    it ends) and returns the backends still on the database."""
    for _ in range(100):
        counted, pids = await _sessions_and_backends(postgres, database)
        if counted >= sessions:
            assert counted == sessions
            return pids
        await asyncio.sleep(0.1)
    raise AssertionError(f"PostgreSQL counted {counted} sessions, expected {sessions}")


@pytest.mark.parametrize("pool", [True, False], ids=["pool", "nullpool"])
async def test_without_a_pool_every_request_opens_a_new_connection(
    postgres: PostgresServer, database: str, redis_url: str, pool: bool
) -> None:
    requests = 5
    settings = make_settings(
        postgres.url(database), redis_url, db_pool_enabled=pool, cache_enabled=False
    )
    before, _ = await _sessions_and_backends(postgres, database)
    backends_between_requests = []
    async for _app, client in _app_client(settings):
        for _ in range(requests):
            assert (await client.get("/api/products", params={"category": "c"})).status_code == 200
            await asyncio.sleep(0.05)
            backends_between_requests.append((await _sessions_and_backends(postgres, database))[1])

    if pool:
        # One connection, opened once and kept between requests.
        pid = backends_between_requests[0]
        assert len(pid) == 1
        assert backends_between_requests == [pid] * requests
        assert await _settled(postgres, database, before + 1) == []
    else:
        # A login per request, and nothing left open between them.
        assert await _settled(postgres, database, before + requests) == []
        assert all(len(pids) <= 1 for pids in backends_between_requests)
        assert backends_between_requests.count([]) >= requests - 1


# --- SHOP_LEAN_MODELS=false -------------------------------------------------------------------


async def test_full_models_carry_every_column_but_the_password_hash(
    database_url: str, redis_url: str
) -> None:
    settings = make_settings(database_url, redis_url, lean_models=False)
    async for _app, client in _app_client(settings):
        user, (pen, ink, pad) = await _shop_with_orders(client, database_url)
        me = (await client.get("/api/users/me", headers=user.headers)).json()
        single = (await client.get(f"/api/users/{user.id}")).json()
        with_orders = (
            await client.get(f"/api/users/{user.id}/orders", headers=user.headers)
        ).json()
        order = await client.post(
            "/api/orders",
            json={"items": [{"product_id": ink, "quantity": 1}]},
            headers=user.headers,
        )

    assert me == single
    assert set(single) == {"id", "name", "email", "created_at"}
    assert single["email"] == "switches@example.com"
    assert set(with_orders) == {"id", "name", "email", "created_at", "orders"}
    first = with_orders["orders"][0]
    assert set(first) == {"id", "user_id", "created_at", "total_cents", "items"}
    assert first["user_id"] == user.id
    assert first["items"][0] == {
        "id": first["items"][0]["id"],
        "order_id": first["id"],
        "product_id": pen,
        "quantity": 2,
        "unit_price_cents": 150,
        "product": {"id": pen, "name": "Pen", "category": "office", "price_cents": 150},
    }
    assert with_orders["orders"][1]["items"][0]["product"]["id"] == pad
    assert set(order.json()) == {"id", "user_id", "created_at", "total_cents", "items"}
    assert order.json()["items"][0]["product"]["category"] == "office"
    for body in (single, with_orders, order.json()):
        assert "password" not in str(body)
        assert "argon2" not in str(body)


# --- SHOP_BLOCKING_IO=true --------------------------------------------------------------------


async def _user_reads(client: httpx.AsyncClient, user: Account) -> list[tuple[int, bytes]]:
    paths = [f"/api/users/{user.id}", f"/api/users/{user.id}/orders", "/api/users/999999"]
    paths += ["/api/users/999999/orders", "/api/users/me"]
    responses = [await client.get(p, headers=user.headers) for p in paths]
    return [(r.status_code, r.content) for r in responses]


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "full"])
async def test_blocking_reads_return_the_same_json(
    database_url: str, redis_url: str, lean: bool
) -> None:
    async for _app, client in _app_client(make_settings(database_url, redis_url, lean_models=lean)):
        user, _ = await _shop_with_orders(client, database_url)
        expected = await _user_reads(client, user)
    blocking = make_settings(database_url, redis_url, lean_models=lean, blocking_io=True)
    async for app, client in _app_client(blocking):
        got = await _user_reads(client, user)
        assert app.state.blocking_engine.dialect.driver == "psycopg"

    assert [status for status, _ in expected] == [200, 200, 404, 404, 200]
    assert got == expected


async def _done_after(client: httpx.AsyncClient, path: str, start: float, delay: float) -> float:
    """Seconds from `start` until a GET of `path`, sent after `delay`, was answered."""
    await asyncio.sleep(delay)
    assert (await client.get(path)).status_code == 200
    return time.monotonic() - start


@pytest.mark.parametrize("blocking", [False, True], ids=["async", "blocking"])
async def test_blocking_reads_stop_the_event_loop(
    database_url: str, redis_url: str, blocking: bool
) -> None:
    """A user read waits for a table lock held for 1 s. Meanwhile another request of the
    same worker answers at once when the read is async, and only after the lock is gone
    when it blocks the event loop."""
    hold_seconds = 1.0
    settings = make_settings(database_url, redis_url, blocking_io=blocking)
    async for _app, client in _app_client(settings):
        user = await create_user(client, "locked@example.com")
        locker = psycopg.connect(asyncpg_dsn(database_url))
        try:
            locker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
            # From a thread: with the loop blocked, no coroutine could release the lock.
            threading.Timer(hold_seconds, locker.commit).start()
            start = time.monotonic()
            read_done, live_done = await asyncio.gather(
                _done_after(client, f"/api/users/{user.id}", start, 0),
                _done_after(client, "/health/live", start, 0.2),
            )
        finally:
            locker.close()

    assert read_done >= hold_seconds
    if blocking:
        assert live_done >= hold_seconds
    else:
        assert live_done < hold_seconds


async def _hold_a_server_connection(dsn: str) -> asyncpg.Connection:
    """A PgBouncer client inside a transaction: it keeps one server connection."""
    conn = await asyncpg.connect(dsn, statement_cache_size=0)
    await conn.execute("BEGIN; SELECT 1")
    return conn


async def test_blocking_reads_through_pgbouncer_transaction_mode(
    postgres: PostgresServer, pgbouncer_port: int, database: str, redis_url: str
) -> None:
    """The blocking reads go through PgBouncer's transaction mode from one client
    connection to several server connections: the test holds one of PgBouncer's 2 server
    connections in a transaction while the other serves the reads, then swaps them.
    psycopg would prepare a statement run 5 times in one session (it forgets the count on
    each rollback, which ends every request): SHOP_PGBOUNCER turns that off."""
    url = postgres.url(database, port=pgbouncer_port)
    settings = make_settings(url, redis_url, pgbouncer=True, blocking_io=True)
    async for app, client in _app_client(settings):
        user, _ = await _shop_with_orders(client, postgres.url(database))
        with app.state.blocking_engine.connect() as conn:
            assert conn.connection.dbapi_connection.prepare_threshold is None
        # Never more than one server connection held by the test: a blocking read that
        # waited for one would block the event loop that could release it.
        second = await _hold_a_server_connection(asyncpg_dsn(url))
        try:
            for _ in range(8):
                assert (await client.get(f"/api/users/{user.id}")).status_code == 200
            first = await _hold_a_server_connection(asyncpg_dsn(url))
            await second.close()
            try:
                swapped = await client.get(f"/api/users/{user.id}")
                assert swapped.status_code == 200, swapped.text
                own = await client.get(f"/api/users/{user.id}/orders", headers=user.headers)
                assert own.status_code == 200
            finally:
                await first.close()
        finally:
            await second.close()


# --- shop.hello:app ----------------------------------------------------------------------------


async def test_hello_answers_every_get() -> None:
    transport = httpx.ASGITransport(app=hello.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://hello.test") as client:
        for path in ("/", "/api/users/1", "/anything?x=1"):
            response = await client.get(path)
            assert response.status_code == 200
            assert response.text == "hello"
            assert response.headers["content-type"].startswith("text/plain")
        assert (await client.head("/")).content == b""
        refused = await client.post("/", content=b"x")
        assert refused.status_code == 405


def test_hello_imports_nothing_heavy() -> None:
    heavy = ["fastapi", "starlette", "pydantic", "sqlalchemy", "asyncpg", "redis", "psycopg"]
    probe = (
        "import sys, shop.hello; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}))"
    )
    output = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout
    assert output.strip() == "[]"


def test_hello_under_gunicorn_with_the_shop_worker(tmp_path: Path) -> None:
    """app_module: "shop.hello:app" with the same Gunicorn config and worker class."""
    port = free_port()
    env = {
        **os.environ,
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "WEB_CONCURRENCY": "1",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus"),
    }
    log = (tmp_path / "gunicorn.log").open("w")
    process = subprocess.Popen(
        [GUNICORN, "-c", str(APP_DIR / "gunicorn.conf.py"), "shop.hello:app"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, process)
        response = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        log.close()
    assert response.status_code == 200, (tmp_path / "gunicorn.log").read_text()
    assert response.text == "hello"
    assert process.returncode == 0, (tmp_path / "gunicorn.log").read_text()
