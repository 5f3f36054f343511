import asyncio
import time
from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import TypeAdapter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shop import crud, schemas
from shop.api.deps import CacheDep, SessionDep, SessionmakerDep
from shop.core.cache import Cache, CacheOutage, pack, unpack

router = APIRouter(prefix="/api/products", tags=["products"])

# One cache entry holds the longest list any client may ask for; shorter
# lists are slices of it, so an order invalidates a single key (deletes it: the
# next read computes a fresh list). v3: a first line holds the entry's soft expiry
# (cache.pack), then the products' JSON, one per line (v2 had no expiry line, v1
# was a JSON list).
POPULAR_CACHE_KEY = "shop:products:popular:v3"
POPULAR_MAX = 100
# Held by the one worker, on any host, that recomputes the list. Its expiry bounds
# how long a worker that died mid-query keeps the others from refreshing.
POPULAR_LOCK_KEY = POPULAR_CACHE_KEY + ":refresh"
POPULAR_LOCK_MS = 30_000
_POLL_SECONDS = 0.05

_POPULAR_ITEM = TypeAdapter(schemas.PopularProduct)


def _json_list(lines: bytes, limit: int) -> bytes:
    """The first `limit` products of a cache entry as a JSON list, cut from the bytes.

    Each product is serialized JSON on its own line (JSON escapes newlines inside
    strings, so a newline only ever separates products), made by the same
    pydantic-core serializer FastAPI uses for the response: the bytes equal those
    of an uncached answer."""
    return b"[" + b",".join(lines.split(b"\n", limit)[:limit]) + b"]"


async def _compute(
    sessions: async_sessionmaker[AsyncSession], cache: Cache
) -> list[schemas.PopularProduct]:
    async with sessions() as session:
        products = await crud.popular_products(session, POPULAR_MAX)
    body = b"\n".join(_POPULAR_ITEM.dump_json(p) for p in products)
    await cache.set(
        POPULAR_CACHE_KEY,
        pack(body, cache.ttl_seconds),
        ttl_seconds=cache.ttl_seconds + cache.stale_seconds,
    )
    return products


async def _wait_for_entry(cache: Cache) -> bytes | None:
    """The entry another worker is computing, polled until cache.lock_wait_seconds pass."""
    deadline = time.monotonic() + cache.lock_wait_seconds
    while time.monotonic() < deadline:
        await asyncio.sleep(_POLL_SECONDS)
        try:
            raw = await cache.peek(POPULAR_CACHE_KEY)
        except CacheOutage:
            return None
        if raw is not None:
            return raw
    return None


@router.get("/popular", response_model=list[schemas.PopularProduct])
async def popular_products(
    sessions: SessionmakerDep,
    cache: CacheDep,
    limit: Annotated[int, Query(ge=1, le=POPULAR_MAX)] = 10,
) -> object:
    """One aggregate over all sales, computed by one worker at a time.

    Fresh entry: its bytes. Stale entry (past the TTL, kept cache_stale_seconds
    longer): the worker that takes the lock recomputes it, every other request
    answers the stale bytes meanwhile. No entry: the lock holder computes it, the
    others wait up to cache_lock_wait_seconds for it, then compute it themselves.
    A database session is opened only to compute: a hit costs none."""
    cached = await cache.get(POPULAR_CACHE_KEY)
    if cached is not None:
        fresh, body = unpack(cached)
        if fresh:
            # The hot path: no parsing, no models, no serialization.
            return Response(_json_list(body, limit), media_type="application/json")
    if not cache.enabled:
        async with sessions() as session:
            return await crud.popular_products(session, limit)
    assert isinstance(cache, Cache)
    token = await cache.lock(POPULAR_LOCK_KEY, POPULAR_LOCK_MS)
    if token is None:
        if cached is None:
            cached = await _wait_for_entry(cache)
        if cached is not None:
            body = unpack(cached)[1]
            return Response(_json_list(body, limit), media_type="application/json")
        return (await _compute(sessions, cache))[:limit]
    try:
        return (await _compute(sessions, cache))[:limit]
    finally:
        await cache.unlock(POPULAR_LOCK_KEY, token)


@router.get("")
async def list_products(
    session: SessionDep,
    category: Annotated[str, Query(min_length=1, max_length=50)],
    after: Annotated[
        int, Query(ge=0, le=schemas.INT32_MAX, description="next_cursor of the previous page")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> schemas.ProductPage:
    return await crud.products_page(session, category, after, limit)
