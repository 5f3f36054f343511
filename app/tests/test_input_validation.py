"""What PostgreSQL would refuse is refused first: a 422 before any query, nothing written.

NUL characters, lone surrogates, integers past PostgreSQL's `integer`, strings longer
than their column: each is answered 422 in FastAPI's format (never a 503, which would
tell the client to retry the same bad request), without a single statement sent to
the database, and no row changes.
"""

import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
from fastapi import FastAPI
from sqlalchemy import event

from shop.core.config import Settings
from shop.seed import asyncpg_dsn
from tests.conftest import insert_products

TABLES = ("users", "products", "orders", "order_items")
TOO_BIG = 2**31  # one past PostgreSQL's integer


async def seed_user(database_url: str, email: str = "ada@example.com") -> int:
    """A user straight into the table (the sign-up's answer is not what these tests check)."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        return await conn.fetchval(
            "INSERT INTO users (name, email, password_hash) VALUES ('Ada', $1, 'unusable')"
            " RETURNING id",
            email,
        )
    finally:
        await conn.close()


def bearer_headers(settings: Settings, user_id: int) -> dict[str, str]:
    """The Authorization header of a token for `user_id`, signed as the app signs them
    (HS256, sub = the id, with the SHOP_TOKEN_SECRET of these settings). An app without
    that setting authenticates nobody, and needs no header."""
    secret = getattr(settings, "token_secret", None)
    if secret is None:
        return {}
    now = int(time.time())
    claims = {"sub": str(user_id), "iat": now, "exp": now + 600}
    token = jwt.encode(claims, secret.get_secret_value(), algorithm="HS256")
    return {"Authorization": f"Bearer {token}"}


async def row_counts(database_url: str) -> dict[str, int]:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        return {table: await conn.fetchval(f"SELECT count(*) FROM {table}") for table in TABLES}
    finally:
        await conn.close()


@pytest.fixture
def statements(app: FastAPI) -> Iterator[list[str]]:
    """Every SQL statement the app sends while the test runs."""
    sent: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        sent.append(statement)

    engine = app.state.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    yield sent
    event.remove(engine, "before_cursor_execute", record)


@pytest.fixture
async def ready(app: FastAPI, settings: Settings, database_url: str) -> dict[str, Any]:
    """Rows that a request which slipped through would use: a user (and its token) and
    two products, so that an order that got past validation would be written."""
    user_id = await seed_user(database_url)
    products = await insert_products(database_url, [("Pen", "office", 150), ("Ink", "ink", 900)])
    return {"user": user_id, "products": products, "headers": bearer_headers(settings, user_id)}


async def assert_refused_before_any_query(
    response: httpx.Response, statements: list[str], database_url: str, before: dict[str, int]
) -> list[dict[str, Any]]:
    assert response.status_code == 422, response.text
    assert "Retry-After" not in response.headers
    errors = response.json()["detail"]
    assert errors, response.text
    assert all({"loc", "msg", "type"} <= error.keys() and "input" not in error for error in errors)
    assert statements == [], "the request reached the database"
    assert await row_counts(database_url) == before
    return errors


def raw_json(text: str) -> dict[str, Any]:
    """A JSON body sent as written: json.dumps would refuse nothing, but a lone
    surrogate is best written as the escape a client would send."""
    return {"content": text.encode(), "headers": {"content-type": "application/json"}}


SIGN_UP = {"name": "Grace", "email": "grace@example.com", "password": "long enough"}


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("name", "Gr\x00ace", "string_nul"),
        ("email", "grace\x00@example.com", "string_nul"),
        ("email", "grace@example.com\x00", "string_nul"),
        ("password", "long\x00enough", "string_nul"),
        ("name", "x" * 101, "string_too_long"),
        ("email", "g" * 243 + "@example.com", "string_too_long"),
        ("password", "p" * 129, "string_too_long"),
        ("name", "   ", "string_too_short"),
    ],
)
async def test_sign_up_with_a_bad_string_is_422_before_any_query(
    client: httpx.AsyncClient,
    statements: list[str],
    database_url: str,
    field: str,
    value: str,
    error: str,
) -> None:
    before = await row_counts(database_url)
    response = await client.post("/api/users", json=SIGN_UP | {field: value})
    errors = await assert_refused_before_any_query(response, statements, database_url, before)
    assert [(e["loc"], e["type"]) for e in errors] == [(["body", field], error)]


@pytest.mark.parametrize("field", ["name", "email", "password"])
@pytest.mark.parametrize("surrogate", ["\\ud800", "\\udfff", "x\\udc00y"])
async def test_a_lone_surrogate_is_422_and_the_answer_is_valid_utf8(
    client: httpx.AsyncClient, statements: list[str], database_url: str, field: str, surrogate: str
) -> None:
    """JSON may escape a lone surrogate ("\\ud800"); it is no Unicode text, and an answer
    that echoed it could not be encoded (FastAPI's own 422 did, which made it a 500)."""
    before = await row_counts(database_url)
    fields = {k: f'"{v}"' for k, v in SIGN_UP.items()} | {field: f'"{surrogate}@x.example"'}
    body = "{" + ",".join(f'"{k}": {v}' for k, v in fields.items()) + "}"
    response = await client.post("/api/users", **raw_json(body))
    errors = await assert_refused_before_any_query(response, statements, database_url, before)
    assert [e["loc"] for e in errors] == [["body", field]]
    response.content.decode("utf-8")


async def test_a_lone_surrogate_in_an_unknown_key_is_422(
    client: httpx.AsyncClient, statements: list[str], database_url: str
) -> None:
    before = await row_counts(database_url)
    body = (
        '{"name": "Grace", "email": "grace@example.com", "password": "long enough", "\\ud800": 1}'
    )
    response = await client.post("/api/users", **raw_json(body))
    await assert_refused_before_any_query(response, statements, database_url, before)


@pytest.mark.parametrize(
    "path",
    [
        f"/api/users/{TOO_BIG}",
        f"/api/users/{TOO_BIG}/orders",
        "/api/users/1%00",
        "/api/users/" + "9" * 5000,
    ],
)
async def test_an_id_past_postgresql_integer_in_the_path_is_422(
    client: httpx.AsyncClient,
    ready: dict[str, Any],
    statements: list[str],
    database_url: str,
    path: str,
) -> None:
    before = await row_counts(database_url)
    response = await client.get(path, headers=ready["headers"])
    errors = await assert_refused_before_any_query(response, statements, database_url, before)
    assert [e["loc"] for e in errors] == [["path", "user_id"]]


def _order(ready: dict[str, Any], **item: object) -> dict[str, Any]:
    return {"items": [{"product_id": ready["products"][0], "quantity": 1} | item]}


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"product_id": TOO_BIG}, ["body", "items", 0, "product_id"]),
        ({"product_id": -TOO_BIG - 1}, ["body", "items", 0, "product_id"]),
        ({"product_id": 10**40}, ["body", "items", 0, "product_id"]),
        ({"quantity": TOO_BIG}, ["body", "items", 0, "quantity"]),
        ({"quantity": 10**40}, ["body", "items", 0, "quantity"]),
        ({"quantity": 1001}, ["body", "items", 0, "quantity"]),
        ({"quantity": 1.5}, ["body", "items", 0, "quantity"]),
        ({"quantity": "1\x00"}, ["body", "items", 0, "quantity"]),
    ],
)
async def test_an_order_with_a_number_out_of_range_is_422_before_any_query(
    client: httpx.AsyncClient,
    ready: dict[str, Any],
    statements: list[str],
    database_url: str,
    change: dict[str, object],
    loc: list[object],
) -> None:
    before = await row_counts(database_url)
    body = _order(ready, **change) | _owner(ready)
    response = await client.post("/api/orders", json=body, headers=ready["headers"])
    errors = await assert_refused_before_any_query(response, statements, database_url, before)
    assert [e["loc"] for e in errors] == [loc]


def _owner(ready: dict[str, Any]) -> dict[str, int]:
    """Before bearer tokens the body named the user; with them, a user_id is refused."""
    return {} if ready["headers"] else {"user_id": ready["user"]}


async def test_an_order_for_a_user_id_past_integer_is_422(
    client: httpx.AsyncClient, ready: dict[str, Any], statements: list[str], database_url: str
) -> None:
    """Refused either way: out of range, or (with bearer tokens) not a field at all."""
    before = await row_counts(database_url)
    body = _order(ready) | {"user_id": TOO_BIG}
    response = await client.post("/api/orders", json=body, headers=ready["headers"])
    errors = await assert_refused_before_any_query(response, statements, database_url, before)
    assert [e["loc"] for e in errors] == [["body", "user_id"]]


async def test_an_order_with_too_many_lines_is_422(
    client: httpx.AsyncClient, ready: dict[str, Any], statements: list[str], database_url: str
) -> None:
    before = await row_counts(database_url)
    items = [{"product_id": n, "quantity": 1} for n in range(1, 102)]
    body = {"items": items} | _owner(ready)
    response = await client.post("/api/orders", json=body, headers=ready["headers"])
    errors = await assert_refused_before_any_query(response, statements, database_url, before)
    assert [e["loc"] for e in errors] == [["body", "items"]]


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,  # past Python's recursion limit: FastAPI said 400
        # Past Python's limit on the digits of an int (4300): FastAPI said 400 as well.
        b'{"items": [{"product_id": ' + b"9" * 5000 + b', "quantity": 1}]}',
        b'{"items": [',
        b"\xff\xfe\x00{",
        b"null",
    ],
)
async def test_a_body_that_is_not_an_order_is_422(
    client: httpx.AsyncClient,
    ready: dict[str, Any],
    statements: list[str],
    database_url: str,
    body: bytes,
) -> None:
    before = await row_counts(database_url)
    headers = ready["headers"] | {"content-type": "application/json"}
    response = await client.post("/api/orders", content=body, headers=headers)
    errors = await assert_refused_before_any_query(response, statements, database_url, before)
    assert errors[0]["loc"][0] == "body"


@pytest.mark.parametrize(
    ("query", "loc"),
    [
        ("category=of%00fice", ["query", "category"]),
        ("category=%00", ["query", "category"]),
        ("category=" + "c" * 51, ["query", "category"]),
        ("category=", ["query", "category"]),
        (f"category=office&after={TOO_BIG}", ["query", "after"]),
        ("category=office&after=-1", ["query", "after"]),
        ("category=office&limit=" + "9" * 40, ["query", "limit"]),
    ],
)
async def test_a_product_query_out_of_bounds_is_422_before_any_query(
    client: httpx.AsyncClient,
    ready: dict[str, Any],
    statements: list[str],
    database_url: str,
    query: str,
    loc: list[str],
) -> None:
    before = await row_counts(database_url)
    response = await client.get(f"/api/products?{query}")
    errors = await assert_refused_before_any_query(response, statements, database_url, before)
    assert [e["loc"] for e in errors] == [loc]


@pytest.mark.parametrize("limit", [str(TOO_BIG), "0", "1%00", "1e3"])
async def test_a_popular_limit_out_of_bounds_is_422(
    client: httpx.AsyncClient, statements: list[str], database_url: str, limit: str
) -> None:
    before = await row_counts(database_url)
    response = await client.get(f"/api/products/popular?limit={limit}")
    await assert_refused_before_any_query(response, statements, database_url, before)


async def test_the_same_requests_with_clean_values_are_served(
    client: httpx.AsyncClient, ready: dict[str, Any], database_url: str
) -> None:
    """The refusals above are about the values, not the requests."""
    assert (await client.get("/api/products", params={"category": "office"})).status_code == 200
    assert (await client.get(f"/api/users/{ready['user']}")).status_code == 200
    body = _order(ready) | _owner(ready)
    response = await client.post("/api/orders", json=body, headers=ready["headers"])
    assert response.status_code == 201, response.text
    assert (await row_counts(database_url))["orders"] == 1
