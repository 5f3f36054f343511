from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, status
from sqlalchemy.orm import Session

from shop import crud, schemas
from shop.api.deps import BlockingEngineDep, SessionDep
from shop.core.security import hash_password

UserId = Annotated[int, Path(ge=1, le=schemas.INT32_MAX)]


def _found(user: object, user_id: int) -> object:
    if user is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"user {user_id} not found")
    return user


def build_router(*, lean: bool = True, blocking: bool = False) -> APIRouter:
    """The user routes; `lean` picks the response models, `blocking` the driver of the reads.

    Chosen once per app (SHOP_LEAN_MODELS, SHOP_BLOCKING_IO), so a request pays for no
    switch. response_model has FastAPI validate and serialize in pydantic-core, as a
    declared return type would.
    """
    router = APIRouter(prefix="/api/users", tags=["users"])
    user_model = schemas.UserOut if lean else schemas.UserFull
    orders_model = schemas.UserWithOrders if lean else schemas.UserWithOrdersFull

    if blocking:
        # On purpose, for the benchmark only: synchronous I/O inside `async def` stops
        # the worker's event loop for every round trip, so its other requests wait.

        @router.get("/{user_id}", response_model=user_model)
        async def read_user(user_id: UserId, engine: BlockingEngineDep) -> object:
            with Session(engine) as session:
                user = _found(crud.get_user_blocking(session, user_id, lean), user_id)
                return user_model.model_validate(user)

        @router.get("/{user_id}/orders", response_model=orders_model)
        async def read_user_orders(user_id: UserId, engine: BlockingEngineDep) -> object:
            with Session(engine) as session:
                user = _found(crud.get_user_with_orders_blocking(session, user_id, lean), user_id)
                return orders_model.model_validate(user)

    else:

        @router.get("/{user_id}", response_model=user_model)
        async def read_user(user_id: UserId, session: SessionDep) -> object:
            user = _found(await crud.get_user(session, user_id, lean), user_id)
            return user_model.model_validate(user)

        @router.get("/{user_id}/orders", response_model=orders_model)
        async def read_user_orders(user_id: UserId, session: SessionDep) -> object:
            user = _found(await crud.get_user_with_orders(session, user_id, lean), user_id)
            return orders_model.model_validate(user)

    @router.post("", status_code=status.HTTP_201_CREATED, response_model=user_model)
    async def create_user(data: schemas.UserCreate, session: SessionDep) -> object:
        # scrypt blocks for tens of milliseconds: in a thread, the event loop keeps
        # serving the worker's other requests meanwhile.
        password_hash = await hash_password(data.password)
        user = await crud.create_user(session, data, password_hash)
        return user_model.model_validate(user)

    return router
