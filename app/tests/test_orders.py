import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import create_user, insert_products


async def test_create_order(client: httpx.AsyncClient, database_url: str) -> None:
    mug, tea = await insert_products(database_url, [("Mug", "kitchen", 1200), ("Tea", "food", 450)])
    user = await create_user(client, "order@example.com")

    response = await client.post(
        "/api/orders",
        json={"items": [{"product_id": mug, "quantity": 1}, {"product_id": tea, "quantity": 3}]},
        headers=user.headers,
    )

    assert response.status_code == 201
    order = response.json()
    assert order["user_id"] == user.id  # the caller's, from the token
    assert order["total_cents"] == 1200 + 3 * 450
    assert order["created_at"]
    assert order["items"] == [
        {"product": {"id": mug, "name": "Mug"}, "quantity": 1, "unit_price_cents": 1200},
        {"product": {"id": tea, "name": "Tea"}, "quantity": 3, "unit_price_cents": 450},
    ]
    listed = await client.get(f"/api/users/{user.id}/orders", headers=user.headers)
    assert [o["id"] for o in listed.json()["orders"]] == [order["id"]]


async def test_an_order_needs_a_token(client: httpx.AsyncClient, database_url: str) -> None:
    (mug,) = await insert_products(database_url, [("Mug", "kitchen", 1200)])

    response = await client.post(
        "/api/orders", json={"items": [{"product_id": mug, "quantity": 1}]}
    )

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


async def test_an_order_for_someone_else_is_refused(
    client: httpx.AsyncClient, database_url: str
) -> None:
    (mug,) = await insert_products(database_url, [("Mug", "kitchen", 1200)])
    caller = await create_user(client, "caller@example.com")
    victim = await create_user(client, "victim@example.com")

    response = await client.post(
        "/api/orders",
        json={"user_id": victim.id, "items": [{"product_id": mug, "quantity": 1}]},
        headers=caller.headers,
    )

    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["detail"]] == [["body", "user_id"]]
    for user in (caller, victim):
        orders = await client.get(f"/api/users/{user.id}/orders", headers=user.headers)
        assert orders.json()["orders"] == []


async def test_unknown_product_is_404_and_nothing_is_stored(
    client: httpx.AsyncClient, database_url: str
) -> None:
    (mug,) = await insert_products(database_url, [("Mug", "kitchen", 1200)])
    user = await create_user(client, "p404@example.com")

    response = await client.post(
        "/api/orders",
        json={"items": [{"product_id": mug, "quantity": 1}, {"product_id": 424242, "quantity": 1}]},
        headers=user.headers,
    )

    assert response.status_code == 404
    assert response.json() == {"detail": "product(s) not found: 424242"}
    listed = await client.get(f"/api/users/{user.id}/orders", headers=user.headers)
    assert listed.json()["orders"] == []


async def test_a_deleted_users_token_places_no_order(
    client: httpx.AsyncClient, app: FastAPI, database_url: str
) -> None:
    """A valid token whose user no longer exists (tokens are checked without a query)."""
    (mug,) = await insert_products(database_url, [("Mug", "kitchen", 1200)])
    token = app.state.token_keys.issue(777777)

    response = await client.post(
        "/api/orders",
        json={"items": [{"product_id": mug, "quantity": 1}]},
        headers={"Authorization": f"Bearer {token}"},
    )

    assert response.status_code == 404
    assert response.json() == {"detail": "user 777777 not found"}


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"items": []}, "at least 1 item"),
        ({"items": [{"product_id": 1, "quantity": 0}]}, "greater than or equal to 1"),
        ({"items": [{"product_id": 1, "quantity": 1001}]}, "less than or equal to 1000"),
        ({"items": [{"product_id": 1, "quantity": "two"}]}, "valid integer"),
        ({"items": [{"product_id": 2**40, "quantity": 1}]}, "less than or equal to"),
        ({}, "Field required"),
        ({"items": [{"product_id": 1, "quantity": 1}], "coupon": "x"}, "Extra inputs"),
        ({"user_id": 1, "items": [{"product_id": 1, "quantity": 1}]}, "Extra inputs"),
        (
            {"items": [{"product_id": 1, "quantity": 1}, {"product_id": 1, "quantity": 2}]},
            "listed twice",
        ),
    ],
)
async def test_bad_order_is_422_with_a_clear_message(
    client: httpx.AsyncClient, payload: dict, message: str
) -> None:
    user = await create_user(client, "bad-order@example.com")

    response = await client.post("/api/orders", json=payload, headers=user.headers)

    assert response.status_code == 422
    assert message in " ".join(error["msg"] for error in response.json()["detail"])


async def test_malformed_json_is_422(client: httpx.AsyncClient) -> None:
    user = await create_user(client, "malformed@example.com")
    response = await client.post(
        "/api/orders",
        content=b"{not json",
        headers={"content-type": "application/json", **user.headers},
    )
    assert response.status_code == 422
