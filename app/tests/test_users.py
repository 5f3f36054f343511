import asyncpg
import httpx
import pytest

from shop.core.security import verify_password
from shop.seed import asyncpg_dsn
from tests.conftest import (
    PASSWORD,
    Account,
    create_user,
    insert_products,
    log_in,
    recorded_statements,
)


async def test_read_user_returns_only_id_and_name(client: httpx.AsyncClient) -> None:
    user = await create_user(client, "ada@example.com", name="Ada Lovelace")

    response = await client.get(f"/api/users/{user.id}")

    assert response.status_code == 200
    assert response.json() == {"id": user.id, "name": "Ada Lovelace"}


async def test_me_is_the_caller(client: httpx.AsyncClient) -> None:
    ada = await create_user(client, "ada@example.com", name="Ada")
    bob = await create_user(client, "bob@example.com", name="Bob")

    assert (await client.get("/api/users/me", headers=ada.headers)).json() == {
        "id": ada.id,
        "name": "Ada",
    }
    assert (await client.get("/api/users/me", headers=bob.headers)).json()["name"] == "Bob"
    assert (await client.get("/api/users/me")).status_code == 401


async def test_unknown_user_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/users/999999")
    assert response.status_code == 404
    assert response.json() == {"detail": "user 999999 not found"}


@pytest.mark.parametrize("bad_id", ["abc", "0", "-3", str(2**31)])
async def test_invalid_user_id_is_422(client: httpx.AsyncClient, bad_id: str) -> None:
    user = await create_user(client, "valid@example.com")
    assert (await client.get(f"/api/users/{bad_id}")).status_code == 422
    assert (
        await client.get(f"/api/users/{bad_id}/orders", headers=user.headers)
    ).status_code == 422


async def test_sign_up_stores_an_argon2id_hash(
    client: httpx.AsyncClient, database_url: str
) -> None:
    response = await client.post(
        "/api/users",
        json={"name": " Grace ", "email": "Grace@Example.com", "password": "s3cret-enough"},
    )

    assert response.status_code == 202
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        row = await conn.fetchrow("SELECT name, password_hash FROM users")
    finally:
        await conn.close()
    assert row["name"] == "Grace"
    # OWASP's argon2id minimum: 19 MiB, 2 iterations, 1 lane.
    assert row["password_hash"].startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert verify_password("s3cret-enough", row["password_hash"]) == (True, None)
    assert verify_password("wrong password", row["password_hash"]) == (False, None)
    await log_in(client, "grace@example.com", "s3cret-enough")


async def test_sign_up_answers_the_same_for_a_new_and_a_taken_email(
    client: httpx.AsyncClient, database_url: str
) -> None:
    """A taken email gets the very same answer, and nothing changes: sign-up tells no
    one which emails have an account."""
    first = await client.post(
        "/api/users", json={"name": "Linus", "email": "linus@example.com", "password": PASSWORD}
    )
    again = await client.post(
        "/api/users",
        json={"name": "Mallory", "email": "LINUS@example.com", "password": "another-one"},
    )

    assert first.status_code == again.status_code == 202
    assert first.content == again.content
    assert "/api/auth/token" in first.json()["detail"]
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        assert await conn.fetchval("SELECT array_agg(name) FROM users") == ["Linus"]
    finally:
        await conn.close()
    await log_in(client, "linus@example.com")
    wrong = await client.post(
        "/api/auth/token", data={"username": "linus@example.com", "password": "another-one"}
    )
    assert wrong.status_code == 401


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


async def _order(client: httpx.AsyncClient, user: Account, product_ids: list[int]) -> None:
    items = [{"product_id": pid, "quantity": 2} for pid in product_ids]
    response = await client.post("/api/orders", json={"items": items}, headers=user.headers)
    assert response.status_code == 201, response.text


async def test_user_orders_lists_orders_items_and_products(
    client: httpx.AsyncClient, database_url: str
) -> None:
    pen, ink = await insert_products(database_url, [("Pen", "office", 150), ("Ink", "office", 900)])
    user = await create_user(client, "orders@example.com")
    await _order(client, user, [pen, ink])
    await _order(client, user, [ink])

    response = await client.get(f"/api/users/{user.id}/orders", headers=user.headers)

    assert response.status_code == 200
    body = response.json()
    assert (body["id"], body["name"]) == (user.id, "Ada")
    assert [order["total_cents"] for order in body["orders"]] == [2100, 1800]
    assert body["orders"][0]["items"] == [
        {"product": {"id": pen, "name": "Pen"}, "quantity": 2, "unit_price_cents": 150},
        {"product": {"id": ink, "name": "Ink"}, "quantity": 2, "unit_price_cents": 900},
    ]


async def test_only_the_owner_reads_their_orders(
    client: httpx.AsyncClient, database_url: str
) -> None:
    (pen,) = await insert_products(database_url, [("Pen", "office", 150)])
    owner = await create_user(client, "owner@example.com")
    other = await create_user(client, "other@example.com")
    await _order(client, owner, [pen])

    theirs = await client.get(f"/api/users/{owner.id}/orders", headers=other.headers)
    unknown = await client.get("/api/users/999999/orders", headers=other.headers)
    anonymous = await client.get(f"/api/users/{owner.id}/orders")

    # Another user's orders look exactly like those of a user that does not exist.
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.json() == {"detail": f"user {owner.id} not found"}
    assert anonymous.status_code == 401
    assert (await client.get(f"/api/users/{other.id}/orders", headers=other.headers)).json()[
        "orders"
    ] == []


async def _statements_for_user_orders(client: httpx.AsyncClient, app, user: Account) -> int:
    with recorded_statements(app) as statements:
        response = await client.get(f"/api/users/{user.id}/orders", headers=user.headers)
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
