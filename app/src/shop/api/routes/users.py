from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, status

from shop import crud, schemas
from shop.api.deps import SessionDep
from shop.core.security import hash_password

router = APIRouter(prefix="/api/users", tags=["users"])

UserId = Annotated[int, Path(ge=1, le=schemas.INT32_MAX)]


@router.get("/{user_id}")
async def read_user(user_id: UserId, session: SessionDep) -> schemas.UserOut:
    user = await crud.get_user(session, user_id)
    if user is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"user {user_id} not found")
    return schemas.UserOut.model_validate(user)


@router.get("/{user_id}/orders")
async def read_user_orders(user_id: UserId, session: SessionDep) -> schemas.UserWithOrders:
    user = await crud.get_user_with_orders(session, user_id)
    if user is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"user {user_id} not found")
    return schemas.UserWithOrders.model_validate(user)


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_user(data: schemas.UserCreate, session: SessionDep) -> schemas.UserOut:
    # scrypt blocks for tens of milliseconds: in a thread, the event loop keeps
    # serving the worker's other requests meanwhile.
    password_hash = await hash_password(data.password)
    user = await crud.create_user(session, data, password_hash)
    return schemas.UserOut.model_validate(user)
