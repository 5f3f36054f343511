"""The production path: the app and its migrations through a real PgBouncer 1.18
in transaction mode, where prepared statements do not survive a transaction."""

import asyncio

import httpx

from shop import migrations
from shop.core.config import Settings
from tests.conftest import client_for, create_user, insert_products, make_settings, running_app
from tests.servers import PostgresServer


async def _exercise(client: httpx.AsyncClient, direct_url: str, email_prefix: str) -> None:
    products = await insert_products(
        direct_url, [(f"P{i}", "bouncy", 100 * i + 1) for i in range(5)]
    )
    user = await create_user(client, f"{email_prefix}@example.com")

    async def order(i: int) -> int:
        items = [{"product_id": products[i % 5], "quantity": 1 + i % 3}]
        response = await client.post("/api/orders", json={"items": items}, headers=user.headers)
        return response.status_code

    async def reads() -> list[int]:
        responses = [
            await client.get(f"/api/users/{user.id}/orders", headers=user.headers),
            await client.get("/api/products", params={"category": "bouncy", "limit": 2}),
            await client.get("/api/products/popular"),
            await client.get(f"/api/users/{user.id}"),
        ]
        return [r.status_code for r in responses]

    # Many concurrent transactions over 2 server connections: each client
    # connection lands on different server connections from one statement to the next.
    results = await asyncio.gather(*(order(i) for i in range(30)), *(reads() for _ in range(15)))
    assert results[:30] == [201] * 30
    assert all(codes == [200, 200, 200, 200] for codes in results[30:])
    orders = (await client.get(f"/api/users/{user.id}/orders", headers=user.headers)).json()[
        "orders"
    ]
    assert len(orders) == 30


async def test_app_through_pgbouncer_transaction_mode(
    postgres: PostgresServer, pgbouncer_port: int, empty_database: str, redis_url: str
) -> None:
    url = postgres.url(empty_database, port=pgbouncer_port)
    # Migrations through PgBouncer too (SHOP_MIGRATION_DATABASE_URL may bypass it).
    await asyncio.to_thread(
        migrations.upgrade, Settings(_env_file=None, pgbouncer=True), "head", url
    )

    settings = make_settings(url, redis_url, pgbouncer=True, db_pool_size=10, db_max_overflow=10)
    async for app in running_app(settings):
        async with client_for(app) as client:
            assert (await client.get("/health/ready")).json()["database"] == "ok"
            await _exercise(client, postgres.url(empty_database), "bouncer")


async def test_pgbouncer_setting_against_plain_postgresql(
    database_url: str, redis_url: str
) -> None:
    settings = make_settings(database_url, redis_url, pgbouncer=True)
    async for app in running_app(settings):
        async with client_for(app) as client:
            await _exercise(client, database_url, "direct")
