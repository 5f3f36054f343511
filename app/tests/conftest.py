"""Fixtures: one PostgreSQL and one Redis server per test session, a fresh
database (copied from a migrated template) and an empty Redis for each test."""

import itertools
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from pytest_redis import factories
from redis import Redis
from sqlalchemy import event

from shop import migrations
from shop.core.config import Settings
from shop.main import create_app
from shop.seed import asyncpg_dsn
from tests.servers import PostgresServer, start_pgbouncer, start_postgres

TEMPLATE_DB = "shop_template"
_db_numbers = itertools.count()

# A second Redis that one test stops, so the shared one stays up for the rest.
redis_proc_to_stop = factories.redis_proc()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server, stop = start_postgres()
    try:
        yield server
    finally:
        stop()


@pytest.fixture(scope="session")
def migrated_template(postgres: PostgresServer) -> str:
    postgres.execute(f"CREATE DATABASE {TEMPLATE_DB}")
    migrations.upgrade(Settings(_env_file=None), url=postgres.url(TEMPLATE_DB))
    return TEMPLATE_DB


def _fresh_database(postgres: PostgresServer, template: str = "template0") -> Iterator[str]:
    name = f"shop_test_{next(_db_numbers)}"
    postgres.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
    try:
        yield name
    finally:
        postgres.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def database(postgres: PostgresServer, migrated_template: str) -> Iterator[str]:
    """A database with the current schema and no rows."""
    yield from _fresh_database(postgres, migrated_template)


@pytest.fixture
def empty_database(postgres: PostgresServer) -> Iterator[str]:
    """A database without any schema, for migration tests."""
    yield from _fresh_database(postgres)


@pytest.fixture
def database_url(postgres: PostgresServer, database: str) -> str:
    return postgres.url(database)


@pytest.fixture
def redis_url(redis_proc) -> str:
    Redis(host=redis_proc.host, port=redis_proc.port).flushall()
    return f"redis://{redis_proc.host}:{redis_proc.port}/0"


@pytest.fixture(scope="session")
def pgbouncer_port(postgres: PostgresServer, migrated_template: str) -> Iterator[int]:
    port, stop = start_pgbouncer(postgres)
    try:
        yield port
    finally:
        stop()


# Signs the tests' bearer tokens; the app refuses to start without a key.
TOKEN_SECRET = "test-only-token-secret-0123456789abcdef"


def make_settings(database_url: str, redis_url: str, **overrides: object) -> Settings:
    overrides.setdefault("token_secret", TOKEN_SECRET)
    # The shipped 0.1 s bound for one Redis call is for a server on a quiet network. On
    # a busy test machine (CI builds an image meanwhile) opening a connection to the
    # local Redis can take longer; that counts as an outage and the request falls back
    # to the database, which fails tests about the cache with Redis up. Tests about an
    # unreachable Redis pass the shipped bound themselves.
    overrides.setdefault("redis_timeout_seconds", 0.5)
    return Settings(_env_file=None, database_url=database_url, redis_url=redis_url, **overrides)


@pytest.fixture
def settings(database_url: str, redis_url: str) -> Settings:
    return make_settings(database_url, redis_url)


async def running_app(settings: Settings) -> AsyncIterator[FastAPI]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


def client_for(app: FastAPI) -> httpx.AsyncClient:
    # ASGITransport re-raises unhandled exceptions: a would-be 500 fails the test.
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://shop.test")


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    async for running in running_app(settings):
        yield running


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app) as client:
        yield client


async def insert_products(database_url: str, rows: list[tuple[str, str, int]]) -> list[int]:
    """Products have no API of their own: (name, category, price_cents) rows go in by SQL."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        records = await conn.fetchmany(
            "INSERT INTO products (name, category, price_cents) VALUES ($1, $2, $3) RETURNING id",
            rows,
        )
    finally:
        await conn.close()
    return [record["id"] for record in records]


PASSWORD = "correct horse"


@dataclass(frozen=True)
class Account:
    """A signed-up user: its id and the headers that authenticate as it."""

    id: int
    email: str
    headers: dict[str, str]


async def log_in(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> dict[str, str]:
    """The Authorization header of a fresh token for this user."""
    response = await client.post("/api/auth/token", data={"username": email, "password": password})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def create_user(client: httpx.AsyncClient, email: str, name: str = "Ada") -> Account:
    """Signs up, logs in, and asks who it is (sign-up does not say: it reveals nothing)."""
    response = await client.post(
        "/api/users", json={"name": name, "email": email, "password": PASSWORD}
    )
    assert response.status_code == 202, response.text
    headers = await log_in(client, email)
    me = await client.get("/api/users/me", headers=headers)
    assert me.status_code == 200, me.text
    return Account(me.json()["id"], email, headers)


@contextmanager
def recorded_statements(app: FastAPI) -> Iterator[list[str]]:
    """The SQL statements the app's engine sends while the block runs."""
    statements: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:
        statements.append(statement)

    engine = app.state.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)
