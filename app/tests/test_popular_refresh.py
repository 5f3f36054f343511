"""The popular list under load: one refresh at a time (a Redis lock), stale bytes for
everyone else meanwhile, a bounded wait on a cold cache, and the cheaper aggregate."""

import asyncio
import random
import time
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from redis import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from shop import crud, schemas
from shop.api.routes.products import POPULAR_CACHE_KEY, POPULAR_LOCK_KEY, POPULAR_LOCK_MS
from shop.core.cache import create_redis, pack
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

# How long the wrapped query takes: long enough that every concurrent request
# arrives while it runs.
SLOW_SECONDS = 0.5


@pytest.fixture
def query_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """crud.popular_products made slow, and the limits it was called with."""
    calls: list[int] = []
    real = crud.popular_products

    async def slow(session: AsyncSession, limit: int) -> list[schemas.PopularProduct]:
        calls.append(limit)
        await asyncio.sleep(SLOW_SECONDS)
        return await real(session, limit)

    monkeypatch.setattr(crud, "popular_products", slow)
    return calls


async def _client(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async for app in running_app(settings):
        async with client_for(app) as client:
            yield app, client


async def _order(client: httpx.AsyncClient, user: Account, product: int, quantity: int) -> None:
    response = await client.post(
        "/api/orders",
        json={"items": [{"product_id": product, "quantity": quantity}]},
        headers=user.headers,
    )
    assert response.status_code == 201, response.text


async def _sales(client: httpx.AsyncClient, database_url: str) -> list[int]:
    ids = await insert_products(database_url, [("Tea", "food", 300), ("Cup", "kitchen", 800)])
    user = await create_user(client, "buyer@example.com")
    await _order(client, user, ids[0], 5)
    await _order(client, user, ids[1], 2)
    return ids


async def _sell_behind_the_cache(database_url: str, product: int, quantity: int) -> None:
    """A sale written by SQL: no invalidation, so only a refresh can show it."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        order = await conn.fetchval(
            "INSERT INTO orders (user_id) SELECT id FROM users LIMIT 1 RETURNING id"
        )
        await conn.execute(
            "INSERT INTO order_items (order_id, product_id, quantity, unit_price_cents)"
            " VALUES ($1, $2, $3, 100)",
            order,
            product,
            quantity,
        )
    finally:
        await conn.close()


async def _timed_get(client: httpx.AsyncClient) -> tuple[float, httpx.Response]:
    start = time.monotonic()
    response = await client.get("/api/products/popular")
    return time.monotonic() - start, response


def _make_stale(redis_url: str) -> None:
    """Moves the entry's soft expiry into the past, keeping its bytes and hard TTL."""
    redis = Redis.from_url(redis_url)
    raw = redis.get(POPULAR_CACHE_KEY)
    assert raw is not None
    body = raw.partition(b"\n")[2]
    redis.set(POPULAR_CACHE_KEY, pack(body, -1), keepttl=True)


async def test_a_stale_entry_is_served_while_one_worker_refreshes_it(
    database_url: str, redis_url: str, query_calls: list[int]
) -> None:
    async for _app, client in _client(make_settings(database_url, redis_url)):
        _tea, cup = await _sales(client, database_url)
        before = (await client.get("/api/products/popular")).json()
        assert [p["sold"] for p in before] == [5, 2]
        _make_stale(redis_url)
        await _sell_behind_the_cache(database_url, cup, 10)
        query_calls.clear()

        results = await asyncio.gather(*(_timed_get(client) for _ in range(20)))

        assert query_calls == [100]  # one refresh, of the longest list
        assert all(r.status_code == 200 for _, r in results)
        refreshed = [(t, r.json()) for t, r in results if r.json() != before]
        stale = [t for t, r in results if r.json() == before]
        # The lock holder answers the new list; the others did not wait for it.
        assert [body for _, body in refreshed] == [
            [{**before[1], "sold": 12}, before[0]],
        ]
        assert len(stale) == 19
        assert max(stale) < SLOW_SECONDS, stale
        assert refreshed[0][0] >= SLOW_SECONDS
        # The refresh stored a fresh entry and released its lock.
        after = await client.get("/api/products/popular")
        assert after.json() == refreshed[0][1]
        assert query_calls == [100]
        assert Redis.from_url(redis_url).exists(POPULAR_LOCK_KEY) == 0


async def test_concurrent_cold_misses_run_the_query_once(
    database_url: str, redis_url: str, query_calls: list[int]
) -> None:
    async for _app, client in _client(make_settings(database_url, redis_url)):
        await _sales(client, database_url)
        assert Redis.from_url(redis_url).exists(POPULAR_CACHE_KEY) == 0

        results = await asyncio.gather(*(_timed_get(client) for _ in range(20)))

        assert query_calls == [100]
        bodies = [r.json() for _, r in results]
        assert all(r.status_code == 200 for _, r in results)
        assert bodies == [bodies[0]] * 20
        assert [p["sold"] for p in bodies[0]] == [5, 2]


async def test_a_cold_miss_waits_only_so_long_for_the_lock_holder(
    database_url: str, redis_url: str, query_calls: list[int]
) -> None:
    """A lock whose holder died (it never writes the entry): readers compute after the bound."""
    settings = make_settings(database_url, redis_url, cache_lock_wait_seconds=0.3)
    async for _app, client in _client(settings):
        await _sales(client, database_url)
        Redis.from_url(redis_url).set(POPULAR_LOCK_KEY, "dead worker", px=POPULAR_LOCK_MS)

        elapsed, response = await _timed_get(client)

        assert [p["sold"] for p in response.json()] == [5, 2]
        assert query_calls == [100]
        assert 0.3 <= elapsed < 0.3 + SLOW_SECONDS + 1.0
        # The dead worker's lock is not ours to release.
        assert Redis.from_url(redis_url).get(POPULAR_LOCK_KEY) == b"dead worker"


async def test_an_order_makes_the_next_read_fresh_even_when_the_entry_is_stale(
    client: httpx.AsyncClient, database_url: str, redis_url: str
) -> None:
    tea, cup = await _sales(client, database_url)
    assert [p["sold"] for p in (await client.get("/api/products/popular")).json()] == [5, 2]
    _make_stale(redis_url)
    user = await create_user(client, "second@example.com")

    await _order(client, user, cup, 4)

    # The order deleted the entry: no stale copy is left to serve.
    assert Redis.from_url(redis_url).exists(POPULAR_CACHE_KEY) == 0
    fresh = (await client.get("/api/products/popular")).json()
    assert [(p["id"], p["sold"]) for p in fresh] == [(cup, 6), (tea, 5)]


async def test_the_entry_outlives_its_ttl_by_the_stale_window(
    client: httpx.AsyncClient, settings: Settings, redis_url: str
) -> None:
    await client.get("/api/products/popular")
    ttl = Redis.from_url(redis_url).ttl(POPULAR_CACHE_KEY)
    assert (
        settings.cache_ttl_seconds
        < ttl
        <= settings.cache_ttl_seconds + (settings.cache_stale_seconds)
    )


async def test_redis_down_one_query_per_process_then_its_own_copy(
    database_url: str, redis_url: str, query_calls: list[int]
) -> None:
    """Redis down: the lock fails open, so without more every request would run the
    aggregate (the stampede that timed out on make up's data). One process runs it once
    for all its requests, then answers its copy until that would have gone stale."""
    async for _app, client in _client(make_settings(database_url, redis_url)):
        await _sales(client, database_url)
    # Nothing listens on port 1.
    down = make_settings(
        database_url, "redis://127.0.0.1:1/0", cache_lock_wait_seconds=5, cache_ttl_seconds=2
    )
    async for _app, client in _client(down):
        query_calls.clear()
        results = await asyncio.gather(*(_timed_get(client) for _ in range(20)))

        assert all([p["sold"] for p in r.json()] == [5, 2] for _, r in results)
        assert query_calls == [100]
        # None waited for a lock: each took about the one query's time.
        assert max(t for t, _ in results) < SLOW_SECONDS + 1.0

        # The process's copy answers, with no query, while it is fresh...
        elapsed, again = await _timed_get(client)
        assert again.json() == results[0][1].json()
        assert query_calls == [100]
        assert elapsed < SLOW_SECONDS
        # ...and is computed again, once, after its TTL.
        await asyncio.sleep(2.1)
        results = await asyncio.gather(*(_timed_get(client) for _ in range(5)))
        assert all(r.status_code == 200 for _, r in results)
        assert query_calls == [100, 100]


async def test_redis_down_each_process_answers_the_entry_it_last_read(
    database_url: str, redis_url: str, query_calls: list[int]
) -> None:
    """A process that read the entry before Redis went away runs no query at all."""
    async for app, client in _client(make_settings(database_url, redis_url)):
        await _sales(client, database_url)
        # Computed by this process, then read back from Redis (a hit).
        before = (await client.get("/api/products/popular")).json()
        assert (await client.get("/api/products/popular")).json() == before
        query_calls.clear()
        # Redis goes away (nothing listens on port 1): the same client, no more server.
        old = app.state.cache.redis
        app.state.cache.redis = create_redis(make_settings(database_url, "redis://127.0.0.1:1/0"))
        try:
            results = await asyncio.gather(*(_timed_get(client) for _ in range(10)))
        finally:
            await app.state.cache.redis.aclose()
            app.state.cache.redis = old

        assert all(r.json() == before for _, r in results)
        assert query_calls == []
        assert max(t for t, _ in results) < SLOW_SECONDS


async def test_with_redis_up_a_process_does_not_answer_its_own_copy(
    client: httpx.AsyncClient, database_url: str, redis_url: str
) -> None:
    """Only Redis sees an order's invalidation: with Redis up, the entry in Redis decides."""
    tea, cup = await _sales(client, database_url)
    assert [p["sold"] for p in (await client.get("/api/products/popular")).json()] == [5, 2]
    # Gone from Redis (as an order on another host deletes it), with new sales behind it.
    await _sell_behind_the_cache(database_url, cup, 10)
    Redis.from_url(redis_url).delete(POPULAR_CACHE_KEY)

    fresh = (await client.get("/api/products/popular")).json()

    assert [(p["id"], p["sold"]) for p in fresh] == [(cup, 12), (tea, 5)]


async def test_the_lock_is_released_only_by_its_owner(app: FastAPI) -> None:
    cache = app.state.cache
    token = await cache.lock("test:lock", 10_000)
    assert token
    assert await cache.lock("test:lock", 10_000) is None
    assert 0 < await cache.redis.pttl("test:lock") <= 10_000

    await cache.unlock("test:lock", "not the owner")
    assert await cache.lock("test:lock", 10_000) is None
    await cache.unlock("test:lock", token)
    assert await cache.lock("test:lock", 10_000) is not None


# The query before it summed per product first: every order item joined to its product.
OLD_QUERY = """
SELECT p.id, p.name, p.category, p.price_cents, SUM(oi.quantity) AS sold
FROM products p JOIN order_items oi ON oi.product_id = p.id
GROUP BY p.id ORDER BY sold DESC, p.id LIMIT $1
"""


async def test_the_aggregate_matches_the_join_then_group_query(
    client: httpx.AsyncClient, database_url: str, app: FastAPI
) -> None:
    """Many ties (few distinct sums) and unsold products: same rows, same order."""
    rng = random.Random(7)
    ids = await insert_products(database_url, [(f"P{i}", "many", 100 + i) for i in range(300)])
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        user = await create_user(client, "many@example.com")
        order = await conn.fetchval(
            "INSERT INTO orders (user_id) VALUES ($1) RETURNING id", user.id
        )
        sold = rng.sample(ids, 200)
        await conn.executemany(
            "INSERT INTO order_items (order_id, product_id, quantity, unit_price_cents)"
            " VALUES ($1, $2, $3, 1)",
            [(order, rng.choice(sold), rng.randint(1, 3)) for _ in range(2000)],
        )
        for limit in (1, 10, 100, 250):
            expected = [dict(r) for r in await conn.fetch(OLD_QUERY, limit)]
            async with app.state.sessionmaker() as session:
                got = [p.model_dump() for p in await crud.popular_products(session, limit)]
            assert got == expected, limit
    finally:
        await conn.close()
