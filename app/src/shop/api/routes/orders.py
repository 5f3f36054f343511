from fastapi import APIRouter, status

from shop import crud, schemas
from shop.api.deps import CacheDep, CurrentUser, SessionDep
from shop.api.routes.auth import UNAUTHORIZED, not_found
from shop.api.routes.products import POPULAR_CACHE_KEY

CONFLICT = {409: {"model": schemas.Detail, "description": "Data changed meanwhile: retry."}}


def build_router(*, lean: bool = True) -> APIRouter:
    """The order routes; `lean` picks the response model (SHOP_LEAN_MODELS)."""
    router = APIRouter(prefix="/api/orders", tags=["orders"])
    order_model = schemas.CreatedOrder if lean else schemas.OrderFull

    @router.post(
        "",
        status_code=status.HTTP_201_CREATED,
        response_model=order_model,
        responses=UNAUTHORIZED | not_found("User or product") | CONFLICT,
    )
    async def create_order(
        data: schemas.OrderCreate, caller: CurrentUser, session: SessionDep, cache: CacheDep
    ) -> object:
        # The order is the caller's: the user comes from the token, never from the body.
        order = await crud.create_order(session, caller, data, lean)
        # Sales changed, so the popular list may have: the next read rebuilds it.
        await cache.delete(POPULAR_CACHE_KEY)
        return order_model.model_validate(order)

    return router
