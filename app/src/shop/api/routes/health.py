import asyncio

from fastapi import APIRouter, Response, status
from sqlalchemy import text

from shop import schemas
from shop.api.deps import CacheDep, EngineDep, SettingsDep

router = APIRouter(prefix="/health", tags=["health"])

_DB_CHECK_TIMEOUT_SECONDS = 2.0


@router.get("/live")
async def live(settings: SettingsDep) -> schemas.Health:
    """The process is up and serving; touches nothing else."""
    return schemas.Health(status="ok", release=settings.release)


@router.get("/ready", responses={503: {"model": schemas.Readiness | schemas.Detail}})
async def ready(engine: EngineDep, cache: CacheDep, response: Response) -> schemas.Readiness:
    """Ready when the database answers. Redis is reported but not required:
    without it the app serves from the database."""
    try:
        async with asyncio.timeout(_DB_CHECK_TIMEOUT_SECONDS), engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        database = "ok"
    except Exception:
        database = "error"
    redis = "disabled"
    if cache.enabled:
        redis = "ok" if await cache.ping() else "error"
    if database != "ok":
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return schemas.Readiness(
        status="ok" if database == "ok" else "unavailable", database=database, redis=redis
    )
