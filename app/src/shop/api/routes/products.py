from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import TypeAdapter

from shop import crud, schemas
from shop.api.deps import CacheDep, SessionDep

router = APIRouter(prefix="/api/products", tags=["products"])

# One cache entry holds the longest list any client may ask for; shorter
# lists are slices of it, so an order invalidates a single key. v2: the entry is
# the products' JSON, one per line (v1 was a JSON list).
POPULAR_CACHE_KEY = "shop:products:popular:v2"
POPULAR_MAX = 100

_POPULAR_ITEM = TypeAdapter(schemas.PopularProduct)


def _json_list(lines: bytes, limit: int) -> bytes:
    """The first `limit` products of a cache entry as a JSON list, cut from the bytes.

    Each product is serialized JSON on its own line (JSON escapes newlines inside
    strings, so a newline only ever separates products), made by the same
    pydantic-core serializer FastAPI uses for the response: the bytes equal those
    of an uncached answer."""
    return b"[" + b",".join(lines.split(b"\n", limit)[:limit]) + b"]"


@router.get("/popular", response_model=list[schemas.PopularProduct])
async def popular_products(
    session: SessionDep,
    cache: CacheDep,
    limit: Annotated[int, Query(ge=1, le=POPULAR_MAX)] = 10,
) -> object:
    cached = await cache.get(POPULAR_CACHE_KEY)
    if cached is not None:
        # The hot path: no parsing, no models, no serialization.
        return Response(_json_list(cached, limit), media_type="application/json")
    if not cache.enabled:
        return await crud.popular_products(session, limit)
    products = await crud.popular_products(session, POPULAR_MAX)
    await cache.set(POPULAR_CACHE_KEY, b"\n".join(_POPULAR_ITEM.dump_json(p) for p in products))
    return products[:limit]


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
