from fastapi import APIRouter, status

from shop import crud, schemas
from shop.api.deps import CacheDep, SessionDep
from shop.api.routes.products import POPULAR_CACHE_KEY

router = APIRouter(prefix="/api/orders", tags=["orders"])


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_order(
    data: schemas.OrderCreate, session: SessionDep, cache: CacheDep
) -> schemas.CreatedOrder:
    order = await crud.create_order(session, data)
    # Sales changed, so the popular list may have: the next read rebuilds it.
    await cache.delete(POPULAR_CACHE_KEY)
    return schemas.CreatedOrder.model_validate(order)
