import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from shop import migrations
from shop.core.config import Settings
from shop.models import Base
from shop.seed import asyncpg_dsn
from tests.servers import PostgresServer

SHOP = str(Path(sys.executable).with_name("shop"))
TABLES = {"alembic_version", "users", "products", "orders", "order_items"}


def _tables(url: str) -> set[str]:
    async def fetch() -> set[str]:
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:
            rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        finally:
            await conn.close()
        return {row[0] for row in rows}

    return asyncio.run(fetch())


def _indexes(url: str) -> set[str]:
    async def fetch() -> set[str]:
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:
            rows = await conn.fetch("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")
        finally:
            await conn.close()
        return {row[0] for row in rows}

    return asyncio.run(fetch())


def test_upgrade_downgrade_upgrade(postgres: PostgresServer, empty_database: str) -> None:
    url = postgres.url(empty_database)
    settings = Settings(_env_file=None)

    migrations.upgrade(settings, url=url)
    assert _tables(url) == TABLES
    assert {"ix_products_category_id", "ix_orders_user_id", "ix_order_items_order_id"} <= _indexes(
        url
    )

    migrations.downgrade(settings, "base", url=url)
    assert _tables(url) == {"alembic_version"}

    migrations.upgrade(settings, url=url)
    assert _tables(url) == TABLES


def test_models_and_migrations_agree(postgres: PostgresServer, database: str) -> None:
    """Autogenerate finds nothing to add: the migration creates exactly the model."""

    async def diff() -> list:
        async_engine = create_async_engine(postgres.url(database))
        try:
            async with async_engine.connect() as conn:
                return await conn.run_sync(
                    lambda sync_conn: compare_metadata(
                        MigrationContext.configure(sync_conn, opts={"compare_type": True}),
                        Base.metadata,
                    )
                )
        finally:
            await async_engine.dispose()

    assert asyncio.run(diff()) == []


def _shop(*args: str, url: str, tmp_path: Path) -> subprocess.CompletedProcess:
    # Another working directory than app/: the installed package must find its
    # migrations by itself.
    env = {**os.environ, "SHOP_DATABASE_URL": url}
    return subprocess.run(
        [SHOP, *args], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    )


def test_cli_migrate_is_idempotent_and_seed_runs_once(
    postgres: PostgresServer, empty_database: str, tmp_path: Path
) -> None:
    url = postgres.url(empty_database)
    _shop("migrate", url=url, tmp_path=tmp_path)
    again = _shop("migrate", url=url, tmp_path=tmp_path)
    assert "head" in again.stdout

    first = _shop(
        "seed", "--users", "200", "--orders", "1000", "--products", "50", url=url, tmp_path=tmp_path
    )
    second = _shop("seed", "--users", "200", "--orders", "1000", url=url, tmp_path=tmp_path)

    assert "seeded 200 users, 50 products, 1000 orders" in first.stdout
    assert "nothing seeded" in second.stdout

    async def counts() -> list[int]:
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:
            found = [
                await conn.fetchval(f"SELECT count(*) FROM {table}")
                for table in ("users", "products", "orders")
            ]
            new_id = await conn.fetchval(
                "INSERT INTO users (name, email, password_hash)"
                " VALUES ('n', 'new@example.com', 'x') RETURNING id"
            )
            return [*found, new_id]
        finally:
            await conn.close()

    # The identity sequences moved past the copied ids: new rows do not clash.
    assert asyncio.run(counts()) == [200, 50, 1000, 201]

    downgraded = _shop("downgrade", "base", url=url, tmp_path=tmp_path)
    assert "base" in downgraded.stdout
    assert _tables(url) == {"alembic_version"}
