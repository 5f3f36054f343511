"""Dependencies hand out the per-worker objects the lifespan created."""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shop.core.auth import InvalidTokenError, TokenKeys, bearer_token, unauthorized
from shop.core.cache import Cache, DisabledCache
from shop.core.config import Settings
from shop.core.security import HashSlots

# Every dependency is `async def`: FastAPI runs a plain `def` dependency in the
# thread pool, a thread handoff per dependency per request for a mere attribute read.


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_engine(request: Request) -> AsyncEngine:
    return request.app.state.engine


async def get_blocking_engine(request: Request) -> Engine:
    return request.app.state.blocking_engine


async def get_cache(request: Request) -> Cache | DisabledCache:
    return request.app.state.cache


async def get_sessionmaker(request: Request) -> async_sessionmaker[AsyncSession]:
    return request.app.state.sessionmaker


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.sessionmaker() as session:
        yield session


async def get_token_keys(request: Request) -> TokenKeys:
    return request.app.state.token_keys


async def get_hash_slots(request: Request) -> HashSlots:
    return request.app.state.hash_slots


async def get_current_user(
    token: Annotated[str, Depends(bearer_token)],
    keys: Annotated[TokenKeys, Depends(get_token_keys)],
) -> int:
    """The id of the user whose bearer token came with the request; 401 without a valid
    one. Signature and expiry only, no database query: a user deleted since the token
    was issued is noticed by the query that needs the user."""
    try:
        return keys.user_id(token)
    except InvalidTokenError:
        raise unauthorized("invalid or expired token") from None


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[AsyncEngine, Depends(get_engine)]
BlockingEngineDep = Annotated[Engine, Depends(get_blocking_engine)]
CacheDep = Annotated[Cache | DisabledCache, Depends(get_cache)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]
# For endpoints that need a session only sometimes (a cache miss): they open one then.
SessionmakerDep = Annotated[async_sessionmaker[AsyncSession], Depends(get_sessionmaker)]
TokenKeysDep = Annotated[TokenKeys, Depends(get_token_keys)]
HashSlotsDep = Annotated[HashSlots, Depends(get_hash_slots)]
# The caller's user id, from `Authorization: Bearer <token>`.
CurrentUser = Annotated[int, Depends(get_current_user)]
