"""Dependencies hand out the per-worker objects the lifespan created."""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shop.core.cache import Cache, DisabledCache
from shop.core.config import Settings

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


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[AsyncEngine, Depends(get_engine)]
BlockingEngineDep = Annotated[Engine, Depends(get_blocking_engine)]
CacheDep = Annotated[Cache | DisabledCache, Depends(get_cache)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]
# For endpoints that need a session only sometimes (a cache miss): they open one then.
SessionmakerDep = Annotated[async_sessionmaker[AsyncSession], Depends(get_sessionmaker)]
