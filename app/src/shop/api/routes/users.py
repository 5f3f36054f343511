from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, status
from sqlalchemy.orm import Session

from shop import crud, schemas
from shop.api.deps import (
    BlockingEngineDep,
    CurrentUser,
    HashSlotsDep,
    SessionDep,
    SettingsDep,
)
from shop.api.routes.auth import BUSY, UNAUTHORIZED, busy, not_found
from shop.core.security import HashSlotsFullError, hash_password

UserId = Annotated[int, Path(ge=1, le=schemas.INT32_MAX)]

# The same answer whether the email was new or taken: sign-up reveals no account.
SIGNED_UP = schemas.Detail(
    detail="sign-up accepted: if this email had no account, it has one now;"
    " get a token from POST /api/auth/token"
)


def _found(user: object, user_id: int) -> object:
    if user is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"user {user_id} not found")
    return user


def _own(user_id: int, caller: int) -> None:
    """Another user's data does not exist for the caller: the same 404 as an unknown id."""
    if user_id != caller:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"user {user_id} not found")


def build_router(*, lean: bool = True, blocking: bool = False) -> APIRouter:
    """The user routes; `lean` picks the response models, `blocking` the driver of the reads.

    Chosen once per app (SHOP_LEAN_MODELS, SHOP_BLOCKING_IO), so a request pays for no
    switch. response_model has FastAPI validate and serialize in pydantic-core, as a
    declared return type would. /me comes before /{user_id}, which would match it too.
    """
    router = APIRouter(prefix="/api/users", tags=["users"])
    user_model = schemas.UserOut if lean else schemas.UserFull
    orders_model = schemas.UserWithOrders if lean else schemas.UserWithOrdersFull
    own = UNAUTHORIZED | not_found("User")

    if blocking:
        # On purpose, for the benchmark only: synchronous I/O inside `async def` stops
        # the worker's event loop for every round trip, so its other requests wait.

        @router.get("/me", response_model=user_model, responses=own)
        async def read_me(caller: CurrentUser, engine: BlockingEngineDep) -> object:
            with Session(engine) as session:
                user = _found(crud.get_user_blocking(session, caller, lean), caller)
                return user_model.model_validate(user)

        @router.get("/{user_id}", response_model=user_model, responses=not_found("User"))
        async def read_user(user_id: UserId, engine: BlockingEngineDep) -> object:
            with Session(engine) as session:
                user = _found(crud.get_user_blocking(session, user_id, lean), user_id)
                return user_model.model_validate(user)

        @router.get("/{user_id}/orders", response_model=orders_model, responses=own)
        async def read_user_orders(
            user_id: UserId, caller: CurrentUser, engine: BlockingEngineDep
        ) -> object:
            _own(user_id, caller)
            with Session(engine) as session:
                user = _found(crud.get_user_with_orders_blocking(session, user_id, lean), user_id)
                return orders_model.model_validate(user)

    else:

        @router.get("/me", response_model=user_model, responses=own)
        async def read_me(caller: CurrentUser, session: SessionDep) -> object:
            user = _found(await crud.get_user(session, caller, lean), caller)
            return user_model.model_validate(user)

        @router.get("/{user_id}", response_model=user_model, responses=not_found("User"))
        async def read_user(user_id: UserId, session: SessionDep) -> object:
            user = _found(await crud.get_user(session, user_id, lean), user_id)
            return user_model.model_validate(user)

        @router.get("/{user_id}/orders", response_model=orders_model, responses=own)
        async def read_user_orders(
            user_id: UserId, caller: CurrentUser, session: SessionDep
        ) -> object:
            _own(user_id, caller)
            user = _found(await crud.get_user_with_orders(session, user_id, lean), user_id)
            return orders_model.model_validate(user)

    @router.post("", status_code=status.HTTP_202_ACCEPTED, responses=BUSY)
    async def sign_up(
        data: schemas.UserCreate, session: SessionDep, slots: HashSlotsDep, settings: SettingsDep
    ) -> schemas.Detail:
        # A taken email costs the same hash and the same statement, which then writes
        # nothing. The hash comes first: no connection is held while it runs.
        try:
            password_hash = await slots.run(hash_password, data.password)
        except HashSlotsFullError:
            raise busy(settings.retry_after_seconds) from None
        await crud.create_user(session, data, password_hash)
        return SIGNED_UP

    return router
