import asyncio
import logging
import time
from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import TypeAdapter
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shop import crud, schemas
from shop.api.deps import CacheDep, SessionDep, SessionmakerDep
from shop.core.cache import Cache, CacheOutage, pack, unpack
from shop.core.db import is_transient
from shop.core.inputs import Text

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
log = logging.getLogger(__name__)

# products.category is varchar(50); matched exactly, so not stripped.
Category = Text(max_length=50, strip=False)


def _json_list(lines: bytes, limit: int) -> bytes:
    """The first `limit` products of a cache entry as a JSON list, cut from the bytes.

    Each product is serialized JSON on its own line (JSON escapes newlines inside
    strings, so a newline only ever separates products), made by the same
    pydantic-core serializer FastAPI uses for the response: the bytes equal those
    of an uncached answer."""
    return b"[" + b",".join(lines.split(b"\n", limit)[:limit]) + b"]"


async def _compute(sessions: async_sessionmaker[AsyncSession], cache: Cache) -> bytes:
    """The entry's body, computed from the database and stored (in Redis, and in this
    process for Redis outages)."""
    async with sessions() as session:
        products = await crud.popular_products(session, POPULAR_MAX)
    body = b"\n".join(_POPULAR_ITEM.dump_json(p) for p in products)
    packed = pack(body, cache.ttl_seconds)
    ttl = cache.ttl_seconds + cache.stale_seconds
    cache.keep_local(POPULAR_CACHE_KEY, packed)
    await cache.set(POPULAR_CACHE_KEY, packed, ttl_seconds=ttl)
    return body


async def _compute_once(sessions: async_sessionmaker[AsyncSession], cache: Cache) -> bytes:
    """_compute, shared by every request of this process that needs it meanwhile."""
    return await cache.flights.do(POPULAR_CACHE_KEY, lambda: _compute(sessions, cache))


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


async def _without_redis(sessions: async_sessionmaker[AsyncSession], cache: Cache) -> bytes:
    """Redis is down: this process's copy while it is fresh (or while this process
    refreshes it), else one computation per process, not one per request."""
    local = cache.local(POPULAR_CACHE_KEY)
    if local is not None:
        fresh, body = unpack(local)
        if fresh or cache.flights.running(POPULAR_CACHE_KEY):
            return body
    return await _compute_once(sessions, cache)


async def _compute_or_last_copy(sessions: async_sessionmaker[AsyncSession], cache: Cache) -> bytes:
    """_compute_once; when the database does not answer (the errors the app answers 503
    for), this process's last copy of the entry instead, if it has one (stale-if-error).

    An order deletes the entry in Redis, so without this a read right after an order
    fails for as long as the database is away (a failover, a restart), although every
    process holds a copy no older than a stale entry may be."""
    try:
        return await _compute_once(sessions, cache)
    except (DBAPIError, PoolTimeoutError, OSError) as exc:
        local = cache.local(POPULAR_CACHE_KEY)
        if local is None or (isinstance(exc, DBAPIError) and not is_transient(exc)):
            raise
        log.warning("popular list from this process's copy, the database failed: %s", exc)
        return unpack(local)[1]


def _answer(body: bytes, limit: int) -> Response:
    return Response(_json_list(body, limit), media_type="application/json")


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
    Redis down: each process answers its own copy of the entry it last read, or
    computes it once for all its requests. Database down while computing: that copy
    too, if the process has one. A database session is opened only to
    compute: a hit costs none."""
    if not cache.enabled:
        async with sessions() as session:
            return await crud.popular_products(session, limit)
    assert isinstance(cache, Cache)
    try:
        cached = await cache.lookup(POPULAR_CACHE_KEY)
    except CacheOutage:
        return _answer(await _without_redis(sessions, cache), limit)
    if cached is not None:
        # Kept for a Redis outage: then every process has a recent copy to answer.
        cache.keep_local(POPULAR_CACHE_KEY, cached)
        fresh, body = unpack(cached)
        if fresh:
            # The hot path: no parsing, no models, no serialization.
            return _answer(body, limit)
    token = await cache.lock(POPULAR_LOCK_KEY, POPULAR_LOCK_MS)
    if token is None:
        if cached is None:
            cached = await _wait_for_entry(cache)
        if cached is not None:
            return _answer(unpack(cached)[1], limit)
        return _answer(await _compute_or_last_copy(sessions, cache), limit)
    try:
        return _answer(await _compute_or_last_copy(sessions, cache), limit)
    finally:
        await cache.unlock(POPULAR_LOCK_KEY, token)


@router.get("")
async def list_products(
    session: SessionDep,
    category: Annotated[Category, Query()],
    after: Annotated[
        int, Query(ge=0, le=schemas.INT32_MAX, description="next_cursor of the previous page")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> schemas.ProductPage:
    return await crud.products_page(session, category, after, limit)
