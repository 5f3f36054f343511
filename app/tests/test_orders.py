import httpx
import pytest

from tests.conftest import create_user, insert_products


async def test_create_order(client: httpx.AsyncClient, database_url: str) -> None:
    mug, tea = await insert_products(database_url, [("Mug", "kitchen", 1200), ("Tea", "food", 450)])
    user = await create_user(client, "order@example.com")

    response = await client.post(
        "/api/orders",
        json={
            "user_id": user,
            "items": [{"product_id": mug, "quantity": 1}, {"product_id": tea, "quantity": 3}],
        },
    )

    assert response.status_code == 201
    order = response.json()
    assert order["user_id"] == user
    assert order["total_cents"] == 1200 + 3 * 450
    assert order["created_at"]
    assert order["items"] == [
        {"product": {"id": mug, "name": "Mug"}, "quantity": 1, "unit_price_cents": 1200},
        {"product": {"id": tea, "name": "Tea"}, "quantity": 3, "unit_price_cents": 450},
    ]
    listed = (await client.get(f"/api/users/{user}/orders")).json()["orders"]
    assert [o["id"] for o in listed] == [order["id"]]


async def test_unknown_product_is_404_and_nothing_is_stored(
    client: httpx.AsyncClient, database_url: str
) -> None:
    (mug,) = await insert_products(database_url, [("Mug", "kitchen", 1200)])
    user = await create_user(client, "p404@example.com")

    response = await client.post(
        "/api/orders",
        json={
            "user_id": user,
            "items": [{"product_id": mug, "quantity": 1}, {"product_id": 424242, "quantity": 1}],
        },
    )

    assert response.status_code == 404
    assert response.json() == {"detail": "product(s) not found: 424242"}
    assert (await client.get(f"/api/users/{user}/orders")).json()["orders"] == []


async def test_unknown_user_is_404(client: httpx.AsyncClient, database_url: str) -> None:
    (mug,) = await insert_products(database_url, [("Mug", "kitchen", 1200)])
    response = await client.post(
        "/api/orders", json={"user_id": 777777, "items": [{"product_id": mug, "quantity": 1}]}
    )
    assert response.status_code == 404
    assert response.json() == {"detail": "user 777777 not found"}


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"user_id": 1, "items": []}, "at least 1 item"),
        ({"user_id": 1, "items": [{"product_id": 1, "quantity": 0}]}, "greater than or equal to 1"),
        (
            {"user_id": 1, "items": [{"product_id": 1, "quantity": 1001}]},
            "less than or equal to 1000",
        ),
        ({"user_id": 1, "items": [{"product_id": 1, "quantity": "two"}]}, "valid integer"),
        ({"user_id": 2**31, "items": [{"product_id": 1, "quantity": 1}]}, "less than or equal to"),
        ({"user_id": 1, "items": [{"product_id": 2**40, "quantity": 1}]}, "less than or equal to"),
        ({"items": [{"product_id": 1, "quantity": 1}]}, "Field required"),
        (
            {"user_id": 1, "items": [{"product_id": 1, "quantity": 1}], "coupon": "x"},
            "Extra inputs",
        ),
        (
            {
                "user_id": 1,
                "items": [{"product_id": 1, "quantity": 1}, {"product_id": 1, "quantity": 2}],
            },
            "listed twice",
        ),
    ],
)
async def test_bad_order_is_422_with_a_clear_message(
    client: httpx.AsyncClient, payload: dict, message: str
) -> None:
    response = await client.post("/api/orders", json=payload)

    assert response.status_code == 422
    assert message in " ".join(error["msg"] for error in response.json()["detail"])


async def test_malformed_json_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/orders", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
