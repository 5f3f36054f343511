"""Demo data of a chosen size, loaded with COPY (the fastest way into PostgreSQL).

Runs in one transaction behind an advisory lock and does nothing when the
tables already hold data, so running it twice (or on two hosts) is safe.
"""

import random
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from shop.core.security import hash_password

CATEGORIES = (
    "books", "music", "games", "garden", "kitchen", "toys", "sports", "tools",
    "office", "pets", "beauty", "health", "baby", "auto", "outdoor", "shoes",
    "jewelry", "electronics", "computers", "food",
)  # fmt: skip
DEMO_PASSWORD = "demo-password"  # noqa: S105 - public demo accounts
_SEED_LOCK_ID = 7_347_002


@dataclass
class SeedResult:
    skipped: bool
    users: int = 0
    products: int = 0
    orders: int = 0
    order_items: int = 0
    seconds: float = 0.0


def asyncpg_dsn(sqlalchemy_url: str) -> str:
    """asyncpg wants a plain postgresql:// URL, without SQLAlchemy's driver suffix."""
    scheme, sep, rest = sqlalchemy_url.partition("://")
    return f"{scheme.split('+')[0]}{sep}{rest}"


async def seed(
    url: str,
    *,
    users: int,
    orders: int,
    products: int,
    pgbouncer: bool,
    random_seed: int = 1,
    tls: ssl.SSLContext | None = None,
) -> SeedResult:
    if orders and (not users or not products):
        raise ValueError("orders need at least one user and one product")
    started = time.perf_counter()
    rng = random.Random(random_seed)  # noqa: S311 - demo data, not secrets
    # Behind PgBouncer's transaction mode asyncpg must not cache statements.
    # tls: a verifying context (shop.core.db.tls_context); None keeps asyncpg's default.
    conn = await asyncpg.connect(
        asyncpg_dsn(url), statement_cache_size=0 if pgbouncer else 100, ssl=tls
    )
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _SEED_LOCK_ID)
            if await conn.fetchval(
                "SELECT EXISTS (SELECT FROM users) OR EXISTS (SELECT FROM products)"
            ):
                return SeedResult(skipped=True)
            prices = [rng.randint(100, 20_000) for _ in range(products)]
            await _copy_products(conn, rng, prices)
            await _copy_users(conn, users)
            items = await _copy_orders(conn, rng, orders, users, prices)
            for table in ("users", "products", "orders", "order_items"):
                # Rows came with explicit ids: move each identity past them.
                await conn.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) FROM {table}"  # noqa: S608
                )
        # Fresh statistics, so the first queries get good plans right away.
        await conn.execute("ANALYZE users, products, orders, order_items")
    finally:
        await conn.close()
    return SeedResult(
        skipped=False,
        users=users,
        products=products,
        orders=orders,
        order_items=items,
        seconds=time.perf_counter() - started,
    )


async def _copy_products(conn: asyncpg.Connection, rng: random.Random, prices: list[int]) -> None:
    # Zipf-like category sizes, as in real shops: a few big categories and a
    # long tail of small ones (the last is about 1.4% of products).
    weights = [1 / rank for rank in range(1, len(CATEGORIES) + 1)]
    categories = rng.choices(CATEGORIES, weights=weights, k=len(prices))
    records = (
        (i, f"Product {i}", category, price)
        for i, (category, price) in enumerate(zip(categories, prices, strict=True), start=1)
    )
    await conn.copy_records_to_table(
        "products", records=records, columns=["id", "name", "category", "price_cents"]
    )


async def _copy_users(conn: asyncpg.Connection, count: int) -> None:
    # One argon2id hash for every demo account: one per user would take minutes for 10k
    # users. Each login verifies it as any other hash.
    password_hash = hash_password(DEMO_PASSWORD)
    records = ((i, f"User {i}", f"user{i}@example.com", password_hash) for i in range(1, count + 1))
    await conn.copy_records_to_table(
        "users", records=records, columns=["id", "name", "email", "password_hash"]
    )


async def _copy_orders(
    conn: asyncpg.Connection, rng: random.Random, count: int, users: int, prices: list[int]
) -> int:
    now = datetime.now(UTC)
    order_rows = []
    item_rows = []
    for order_id in range(1, count + 1):
        order_rows.append(
            (order_id, rng.randint(1, users), now - timedelta(minutes=rng.randint(0, 525_600)))
        )
        # Cubing skews sales towards low ids, so "popular" has a clear top.
        chosen = {int(len(prices) * rng.random() ** 3) + 1 for _ in range(rng.randint(1, 4))}
        for product_id in chosen:
            quantity = rng.randint(1, 3)
            item_rows.append(
                (len(item_rows) + 1, order_id, product_id, quantity, prices[product_id - 1])
            )
    await conn.copy_records_to_table(
        "orders", records=order_rows, columns=["id", "user_id", "created_at"]
    )
    await conn.copy_records_to_table(
        "order_items",
        records=item_rows,
        columns=["id", "order_id", "product_id", "quantity", "unit_price_cents"],
    )
    return len(item_rows)
