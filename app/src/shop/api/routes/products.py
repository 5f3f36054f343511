from typing import Annotated

from fastapi import APIRouter, Query

from shop import crud, schemas
from shop.api.deps import CacheDep, SessionDep

router = APIRouter(prefix="/api/products", tags=["products"])

# One cache entry holds the longest list any client may ask for; shorter
# lists are slices of it, so an order invalidates a single key.
POPULAR_CACHE_KEY = "shop:products:popular:v1"
POPULAR_MAX = 100


@router.get("/popular")
async def popular_products(
    session: SessionDep,
    cache: CacheDep,
    limit: Annotated[int, Query(ge=1, le=POPULAR_MAX)] = 10,
) -> list[schemas.PopularProduct]:
    cached = await cache.get(POPULAR_CACHE_KEY)
    if cached is not None:
        return [schemas.PopularProduct.model_validate(p) for p in cached[:limit]]
    products = await crud.popular_products(session, POPULAR_MAX)
    await cache.set(POPULAR_CACHE_KEY, [p.model_dump() for p in products])
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
