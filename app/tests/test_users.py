import asyncpg
import httpx
import pytest
from sqlalchemy import event

from shop.core.security import verify_password_sync
from shop.seed import asyncpg_dsn
from tests.conftest import create_user, insert_products


async def test_read_user_returns_only_id_and_name(client: httpx.AsyncClient) -> None:
    user_id = await create_user(client, "ada@example.com", name="Ada Lovelace")

    response = await client.get(f"/api/users/{user_id}")

    assert response.status_code == 200
    assert response.json() == {"id": user_id, "name": "Ada Lovelace"}


async def test_unknown_user_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/users/999999")
    assert response.status_code == 404
    assert response.json() == {"detail": "user 999999 not found"}
    assert (await client.get("/api/users/999999/orders")).status_code == 404


@pytest.mark.parametrize("bad_id", ["abc", "0", "-3", str(2**31)])
async def test_invalid_user_id_is_422(client: httpx.AsyncClient, bad_id: str) -> None:
    assert (await client.get(f"/api/users/{bad_id}")).status_code == 422
    assert (await client.get(f"/api/users/{bad_id}/orders")).status_code == 422


async def test_create_user_stores_a_scrypt_hash(
    client: httpx.AsyncClient, database_url: str
) -> None:
    response = await client.post(
        "/api/users",
        json={"name": " Grace ", "email": "Grace@Example.com", "password": "s3cret-enough"},
    )

    assert response.status_code == 201
    body = response.json()
    assert body == {"id": body["id"], "name": "Grace"}
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        row = await conn.fetchrow(
            "SELECT email, password_hash FROM users WHERE id = $1", body["id"]
        )
    finally:
        await conn.close()
    assert row["email"] == "grace@example.com"
    assert row["password_hash"].startswith("scrypt$")
    assert verify_password_sync("s3cret-enough", row["password_hash"])
    assert not verify_password_sync("wrong password", row["password_hash"])


async def test_duplicate_email_is_409(client: httpx.AsyncClient) -> None:
    await create_user(client, "linus@example.com")

    response = await client.post(
        "/api/users", json={"name": "L", "email": "LINUS@example.com", "password": "another-one"}
    )

    assert response.status_code == 409
    assert "email" in response.json()["detail"]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"name": "A", "email": "not-an-email", "password": "long enough"}, "email"),
        ({"name": "A", "email": "a@example.com", "password": "short"}, "password"),
        ({"name": "", "email": "a@example.com", "password": "long enough"}, "name"),
        ({"email": "a@example.com", "password": "long enough"}, "name"),
        (
            {"name": "A", "email": "a@example.com", "password": "long enough", "admin": True},
            "admin",
        ),
    ],
)
async def test_bad_user_input_is_422_naming_the_field(
    client: httpx.AsyncClient, payload: dict, field: str
) -> None:
    response = await client.post("/api/users", json=payload)

    assert response.status_code == 422
    assert [error["loc"][-1] for error in response.json()["detail"]] == [field]


async def _order(client: httpx.AsyncClient, user_id: int, product_ids: list[int]) -> None:
    items = [{"product_id": pid, "quantity": 2} for pid in product_ids]
    response = await client.post("/api/orders", json={"user_id": user_id, "items": items})
    assert response.status_code == 201, response.text


async def test_user_orders_lists_orders_items_and_products(
    client: httpx.AsyncClient, database_url: str
) -> None:
    pen, ink = await insert_products(database_url, [("Pen", "office", 150), ("Ink", "office", 900)])
    user_id = await create_user(client, "orders@example.com")
    await _order(client, user_id, [pen, ink])
    await _order(client, user_id, [ink])

    response = await client.get(f"/api/users/{user_id}/orders")

    assert response.status_code == 200
    body = response.json()
    assert (body["id"], body["name"]) == (user_id, "Ada")
    assert [order["total_cents"] for order in body["orders"]] == [2100, 1800]
    assert body["orders"][0]["items"] == [
        {"product": {"id": pen, "name": "Pen"}, "quantity": 2, "unit_price_cents": 150},
        {"product": {"id": ink, "name": "Ink"}, "quantity": 2, "unit_price_cents": 900},
    ]


async def _statements_for_user_orders(client: httpx.AsyncClient, app, user_id: int) -> int:
    statements: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:
        statements.append(statement)

    engine = app.state.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        response = await client.get(f"/api/users/{user_id}/orders")
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert response.status_code == 200
    return len(statements)


async def test_user_orders_query_count_does_not_grow_with_orders(
    client: httpx.AsyncClient, app, database_url: str
) -> None:
    """The N+1 guard: 1 order and 20 orders (of 3 products each) cost the same statements."""
    products = await insert_products(database_url, [(f"P{i}", "misc", 100 + i) for i in range(3)])
    one = await create_user(client, "one@example.com")
    twenty = await create_user(client, "twenty@example.com")
    await _order(client, one, products)
    for _ in range(20):
        await _order(client, twenty, products)

    with_one = await _statements_for_user_orders(client, app, one)
    with_twenty = await _statements_for_user_orders(client, app, twenty)

    assert with_one == with_twenty == 3  # user, orders, items joined with products
