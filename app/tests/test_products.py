import asyncpg
import httpx
import pytest
from prometheus_client import REGISTRY

from shop.seed import CATEGORIES, asyncpg_dsn, seed
from tests.conftest import client_for, create_user, insert_products, make_settings, running_app


def _cache_count(result: str) -> float:
    return REGISTRY.get_sample_value("shop_cache_requests_total", {"result": result}) or 0.0


async def test_keyset_pagination_walks_a_category_once(
    client: httpx.AsyncClient, database_url: str
) -> None:
    rows = [(f"Book {i}", "books", 100) for i in range(7)] + [("Hammer", "tools", 900)]
    ids = await insert_products(database_url, rows)
    books = ids[:7]

    seen, after, pages = [], 0, 0
    while True:
        response = await client.get(
            "/api/products", params={"category": "books", "after": after, "limit": 3}
        )
        assert response.status_code == 200
        page = response.json()
        seen += [item["id"] for item in page["items"]]
        pages += 1
        if page["next_cursor"] is None:
            break
        after = page["next_cursor"]

    assert seen == books
    assert pages == 3
    first = (await client.get("/api/products", params={"category": "books", "limit": 1})).json()
    assert first["items"] == [
        {"id": books[0], "name": "Book 0", "category": "books", "price_cents": 100}
    ]


async def test_unknown_category_is_an_empty_page(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/products", params={"category": "nothing-here"})
    assert response.json() == {"items": [], "next_cursor": None}


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"category": ""},
        {"category": "books", "limit": 0},
        {"category": "books", "limit": 101},
        {"category": "books", "after": -1},
        {"category": "books", "after": "x"},
    ],
)
async def test_bad_product_query_is_422(client: httpx.AsyncClient, params: dict) -> None:
    assert (await client.get("/api/products", params=params)).status_code == 422


async def test_category_query_uses_its_index(database_url: str) -> None:
    """EXPLAIN of the statement the endpoint runs, on 20k seeded products with
    fresh statistics and the planner free to choose any plan. The long-tail
    category is where the index matters: scanning by id would read ~70 rows
    for each one returned."""
    await seed(database_url, users=0, orders=0, products=20_000, pgbouncer=False)
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        plan = "\n".join(
            row[0]
            for row in await conn.fetch(
                "EXPLAIN SELECT id, name, category, price_cents FROM products "
                "WHERE category = $1 AND id > $2 ORDER BY id LIMIT $3",
                CATEGORIES[-1],
                0,
                21,
            )
        )
    finally:
        await conn.close()
    assert "ix_products_category_id" in plan, plan
    assert "Seq Scan" not in plan, plan


async def _popular_fixture(client: httpx.AsyncClient, database_url: str) -> list[int]:
    ids = await insert_products(
        database_url, [("Tea", "food", 300), ("Cup", "kitchen", 800), ("Pot", "kitchen", 2500)]
    )
    tea, cup, pot = ids
    user = await create_user(client, "buyer@example.com")
    for product_id, quantity in ((tea, 5), (cup, 2), (tea, 1), (pot, 3)):
        response = await client.post(
            "/api/orders",
            json={"items": [{"product_id": product_id, "quantity": quantity}]},
            headers=user.headers,
        )
        assert response.status_code == 201
    return ids


async def test_popular_products_are_ranked_by_units_sold(
    client: httpx.AsyncClient, database_url: str
) -> None:
    tea, _cup, pot = await _popular_fixture(client, database_url)

    response = await client.get("/api/products/popular", params={"limit": 2})

    assert response.status_code == 200
    assert response.json() == [
        {"id": tea, "name": "Tea", "category": "food", "price_cents": 300, "sold": 6},
        {"id": pot, "name": "Pot", "category": "kitchen", "price_cents": 2500, "sold": 3},
    ]


@pytest.mark.parametrize("limit", ["0", "101", "many"])
async def test_popular_limit_is_validated(client: httpx.AsyncClient, limit: str) -> None:
    assert (await client.get("/api/products/popular", params={"limit": limit})).status_code == 422


async def test_cache_hit_returns_what_the_miss_returned(
    client: httpx.AsyncClient, database_url: str
) -> None:
    await _popular_fixture(client, database_url)
    misses, hits = _cache_count("miss"), _cache_count("hit")

    first = await client.get("/api/products/popular")
    assert (_cache_count("miss"), _cache_count("hit")) == (misses + 1, hits)
    second = await client.get("/api/products/popular")
    assert (_cache_count("miss"), _cache_count("hit")) == (misses + 1, hits + 1)
    shorter = await client.get("/api/products/popular", params={"limit": 1})

    assert second.status_code == 200
    assert second.json() == first.json()
    assert shorter.json() == first.json()[:1]


async def test_a_new_order_refreshes_the_popular_list(
    client: httpx.AsyncClient, database_url: str
) -> None:
    tea, cup, _pot = await _popular_fixture(client, database_url)
    before = (await client.get("/api/products/popular")).json()
    assert before[0]["id"] == tea
    user = await create_user(client, "bulk@example.com")

    await client.post(
        "/api/orders", json={"items": [{"product_id": cup, "quantity": 50}]}, headers=user.headers
    )
    after = (await client.get("/api/products/popular")).json()

    assert after[0] == {
        "id": cup,
        "name": "Cup",
        "category": "kitchen",
        "price_cents": 800,
        "sold": 52,
    }


async def test_popular_products_survive_a_redis_outage(
    database_url: str, redis_proc_to_stop
) -> None:
    """A real Redis serves the first request, then its process is stopped."""
    redis_url = f"redis://{redis_proc_to_stop.host}:{redis_proc_to_stop.port}/0"
    settings = make_settings(database_url, redis_url)
    async for app in running_app(settings):
        async with client_for(app) as client:
            await _popular_fixture(client, database_url)
            cached = await client.get("/api/products/popular")
            assert (await client.get("/api/products/popular")).json() == cached.json()

            redis_proc_to_stop.stop()
            errors = _cache_count("error")

            response = await client.get("/api/products/popular")
            assert response.status_code == 200
            assert response.json() == cached.json()
            assert _cache_count("error") == errors + 1
            # Writes that would invalidate the cache still succeed.
            user = await create_user(client, "outage@example.com")
            order = await client.post(
                "/api/orders",
                json={"items": [{"product_id": cached.json()[0]["id"], "quantity": 1}]},
                headers=user.headers,
            )
            assert order.status_code == 201
            ready = await client.get("/health/ready")
            assert ready.status_code == 200
            assert ready.json() == {"status": "ok", "database": "ok", "redis": "error"}
