"""Bearer tokens from POST /api/auth/token, and the password hashing behind them."""

import asyncio
import base64
import hashlib
import secrets
import time
from collections.abc import AsyncIterator

import asyncpg
import httpx
import jwt
import pytest
from argon2 import PasswordHasher
from fastapi import FastAPI
from prometheus_client import REGISTRY
from pydantic import ValidationError

from shop.core.auth import MissingTokenSecretError
from shop.core.config import Settings
from shop.core.security import HashSlotsFullError
from shop.main import create_app
from shop.seed import DEMO_PASSWORD, asyncpg_dsn, seed
from tests.conftest import (
    PASSWORD,
    TOKEN_SECRET,
    client_for,
    create_user,
    log_in,
    make_settings,
    recorded_statements,
    running_app,
)

OTHER_SECRET = "another-secret-of-at-least-32-characters"


def _failures() -> float:
    return REGISTRY.get_sample_value("shop_login_failures_total") or 0.0


async def _password_hash(database_url: str, email: str) -> str:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        return await conn.fetchval("SELECT password_hash FROM users WHERE email = $1", email)
    finally:
        await conn.close()


async def _insert_user(database_url: str, email: str, password_hash: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await conn.execute(
            "INSERT INTO users (name, email, password_hash) VALUES ('Old', $1, $2)",
            email,
            password_hash,
        )
    finally:
        await conn.close()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _token(key: str, user_id: int, *, issued: float | None = None, ttl: int = 900) -> str:
    now = int(issued if issued is not None else time.time())
    claims = {"sub": str(user_id), "iat": now, "exp": now + ttl}
    return jwt.encode(claims, key, algorithm="HS256")


async def test_token_is_a_short_lived_jwt_naming_the_user(client: httpx.AsyncClient) -> None:
    user = await create_user(client, "token@example.com")

    response = await client.post(
        "/api/auth/token",
        data={"username": " Token@Example.com ", "password": PASSWORD, "grant_type": "password"},
    )

    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 900
    claims = jwt.decode(body["access_token"], TOKEN_SECRET, algorithms=["HS256"])
    assert claims["sub"] == str(user.id)
    assert claims["exp"] - claims["iat"] == 900
    assert abs(claims["iat"] - time.time()) < 60
    me = await client.get("/api/users/me", headers=_bearer(body["access_token"]))
    assert me.json() == {"id": user.id, "name": "Ada"}


@pytest.mark.parametrize(
    ("username", "password"),
    [("wrong@example.com", "not the password"), ("nobody@example.com", PASSWORD)],
    ids=["wrong-password", "unknown-email"],
)
async def test_bad_credentials_are_401_and_counted(
    client: httpx.AsyncClient, username: str, password: str
) -> None:
    await create_user(client, "wrong@example.com")
    before = _failures()

    response = await client.post(
        "/api/auth/token", data={"username": username, "password": password}
    )

    assert response.status_code == 401
    # The same answer for both: it does not tell whether the email has an account.
    assert response.json() == {"detail": "incorrect email or password"}
    assert response.headers["www-authenticate"] == "Bearer"
    assert _failures() == before + 1


@pytest.mark.parametrize(
    "data",
    [
        {"username": "a@example.com"},
        {"username": "a@example.com", "password": "x" * 129},
        {"username": "a" * 250 + "@example.com", "password": "long enough"},
        {"username": "a@example.com", "password": "long enough", "grant_type": "client"},
    ],
    ids=["no-password", "long-password", "long-email", "other-grant"],
)
async def test_malformed_token_request_is_422(client: httpx.AsyncClient, data: dict) -> None:
    before = _failures()
    assert (await client.post("/api/auth/token", data=data)).status_code == 422
    assert _failures() == before


async def test_nul_in_email_is_refused_before_any_work(client: httpx.AsyncClient) -> None:
    before = _failures()
    response = await client.post(
        "/api/auth/token", data={"username": "a\x00@example.com", "password": PASSWORD}
    )
    assert response.status_code == 422
    assert _failures() == before


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer not-a-jwt"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer " + _token(TOKEN_SECRET, 1, issued=time.time() - 3600)},
        {"Authorization": "Bearer " + _token(OTHER_SECRET, 1)},
        {"Authorization": "Bearer " + jwt.encode({"sub": "1"}, TOKEN_SECRET, algorithm="HS256")},
        {"Authorization": "Bearer " + _token(TOKEN_SECRET, 1).replace(".", ".x", 1)},
    ],
    ids=["none", "garbage", "basic", "expired", "unknown-key", "no-exp", "tampered"],
)
async def test_requests_without_a_valid_token_are_401(
    client: httpx.AsyncClient, headers: dict
) -> None:
    for response in (
        await client.get("/api/users/me", headers=headers),
        await client.get("/api/users/1/orders", headers=headers),
        await client.post(
            "/api/orders", headers=headers, json={"items": [{"product_id": 1, "quantity": 1}]}
        ),
    ):
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == "Bearer"


async def test_the_token_is_checked_without_a_database_query(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    """Another user's orders are refused from the token alone: no statement runs."""
    user = await create_user(client, "cheap@example.com")
    with recorded_statements(app) as statements:
        response = await client.get(f"/api/users/{user.id + 1}/orders", headers=user.headers)

    assert response.status_code == 404
    assert statements == []


@pytest.fixture
async def rotated(database_url: str, redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The app after a key rotation: OTHER_SECRET signs, TOKEN_SECRET only verifies."""
    settings = make_settings(
        database_url, redis_url, token_secret=OTHER_SECRET, token_previous_secret=TOKEN_SECRET
    )
    async for app in running_app(settings):
        async with client_for(app) as client:
            yield client


async def test_rotation_accepts_the_previous_key_and_signs_with_the_new(
    rotated: httpx.AsyncClient,
) -> None:
    user = await create_user(rotated, "rotation@example.com")
    new_token = user.headers["Authorization"].removeprefix("Bearer ")
    assert jwt.decode(new_token, OTHER_SECRET, algorithms=["HS256"])["sub"] == str(user.id)

    old_key = await rotated.get("/api/users/me", headers=_bearer(_token(TOKEN_SECRET, user.id)))
    assert old_key.status_code == 200

    unknown = _token("a-third-secret-nobody-configured-at-all", user.id)
    refused = await rotated.get("/api/users/me", headers=_bearer(unknown))
    assert refused.status_code == 401
    # The previous key gives no way around expiry either.
    expired = _token(TOKEN_SECRET, user.id, issued=time.time() - 3600)
    assert (await rotated.get("/api/users/me", headers=_bearer(expired))).status_code == 401


async def test_after_the_rotation_the_old_key_is_refused(database_url: str, redis_url: str) -> None:
    settings = make_settings(database_url, redis_url, token_secret=OTHER_SECRET)
    async for app in running_app(settings):
        async with client_for(app) as client:
            user = await create_user(client, "rotated@example.com")
            old = _bearer(_token(TOKEN_SECRET, user.id))
            assert (await client.get("/api/users/me", headers=old)).status_code == 401


def _scrypt_hash(password: str) -> str:
    """A hash as the first version of the service stored it."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1, maxmem=64 << 20)
    return f"scrypt$16384$8$1${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


@pytest.mark.parametrize(
    "old_hash",
    [
        _scrypt_hash(PASSWORD),
        PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(PASSWORD),
    ],
    ids=["scrypt", "weak-argon2"],
)
async def test_an_old_hash_is_upgraded_to_argon2id_at_login(
    client: httpx.AsyncClient, database_url: str, old_hash: str
) -> None:
    await _insert_user(database_url, "old@example.com", old_hash)

    wrong = await client.post(
        "/api/auth/token", data={"username": "old@example.com", "password": "wrong password"}
    )
    assert wrong.status_code == 401
    assert await _password_hash(database_url, "old@example.com") == old_hash

    await log_in(client, "old@example.com")

    upgraded = await _password_hash(database_url, "old@example.com")
    assert upgraded.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert PasswordHasher().verify(upgraded, PASSWORD)
    await log_in(client, "old@example.com")
    assert await _password_hash(database_url, "old@example.com") == upgraded


async def test_seeded_demo_users_log_in_with_the_demo_password(
    client: httpx.AsyncClient, database_url: str
) -> None:
    await seed(database_url, users=3, orders=0, products=1, pgbouncer=False)

    headers = await log_in(client, "user3@example.com", DEMO_PASSWORD)

    assert (await client.get("/api/users/me", headers=headers)).json() == {
        "id": 3,
        "name": "User 3",
    }
    # One argon2id hash for all of them, which the login leaves as it is.
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        hashes = await conn.fetchval("SELECT array_agg(DISTINCT password_hash) FROM users")
    finally:
        await conn.close()
    assert len(hashes) == 1
    assert hashes[0].startswith("$argon2id$v=19$m=19456,t=2,p=1$")


@pytest.fixture
async def one_slot(database_url: str, redis_url: str) -> AsyncIterator[FastAPI]:
    settings = make_settings(
        database_url, redis_url, password_hash_concurrency=1, password_hash_wait_seconds=0.05
    )
    async for app in running_app(settings):
        yield app


async def test_busy_hashing_slots_answer_429(one_slot: FastAPI) -> None:
    async with client_for(one_slot) as client:
        await create_user(client, "busy@example.com")
        # Something else holds this worker's only hashing slot for a while.
        holder = asyncio.create_task(one_slot.state.hash_slots.run(time.sleep, 0.5))
        await asyncio.sleep(0.01)
        attempts = {
            "login": client.post(
                "/api/auth/token", data={"username": "busy@example.com", "password": PASSWORD}
            ),
            # An unknown email waits for a slot too: it is hashed like any other.
            "unknown email": client.post(
                "/api/auth/token", data={"username": "nobody@example.com", "password": PASSWORD}
            ),
            "sign-up": client.post(
                "/api/users", json={"name": "B", "email": "b@example.com", "password": PASSWORD}
            ),
        }
        for what, attempt in attempts.items():
            response = await attempt
            assert response.status_code == 429, what
            assert response.headers["retry-after"] == "1"
            assert response.json() == {"detail": "too many password checks in progress, retry"}

        await holder
        await log_in(client, "busy@example.com")


async def test_a_cancelled_request_keeps_its_slot_until_its_hash_ends(one_slot: FastAPI) -> None:
    slots = one_slot.state.hash_slots
    waiter = asyncio.create_task(slots.run(time.sleep, 0.3))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    # The thread still runs: no second hash may start until it ends.
    with pytest.raises(HashSlotsFullError):
        await slots.run(time.sleep, 0)
    await asyncio.sleep(0.4)
    await slots.run(time.sleep, 0)


async def test_the_app_refuses_to_start_without_a_token_secret(
    database_url: str, redis_url: str
) -> None:
    app = create_app(make_settings(database_url, redis_url, token_secret=None))
    with pytest.raises(MissingTokenSecretError, match="SHOP_TOKEN_SECRET is not set"):
        async with app.router.lifespan_context(app):
            pass


def test_token_settings(monkeypatch) -> None:
    defaults = Settings(_env_file=None)
    assert defaults.token_secret is None
    assert defaults.token_previous_secret is None
    assert defaults.token_ttl_seconds == 900
    assert defaults.password_hash_concurrency == 2
    assert defaults.password_hash_wait_seconds == 1.0

    monkeypatch.setenv("SHOP_TOKEN_SECRET", TOKEN_SECRET)
    monkeypatch.setenv("SHOP_TOKEN_PREVIOUS_SECRET", "")
    settings = Settings(_env_file=None)
    assert settings.token_secret.get_secret_value() == TOKEN_SECRET
    assert settings.token_previous_secret is None
    assert TOKEN_SECRET not in repr(settings)

    monkeypatch.setenv("SHOP_TOKEN_SECRET", "too-short")
    with pytest.raises(ValidationError, match="at least 32 characters"):
        Settings(_env_file=None)
    monkeypatch.setenv("SHOP_TOKEN_SECRET", TOKEN_SECRET)
    monkeypatch.setenv("SHOP_PASSWORD_HASH_WAIT_SECONDS", "5")
    with pytest.raises(ValidationError, match="password_hash_wait_seconds"):
        Settings(_env_file=None)
