"""The ASGI application: `shop.main:app` for Gunicorn's Uvicorn workers."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, status
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from shop import __version__, crud
from shop.api.main import routers
from shop.core.cache import create_cache
from shop.core.config import Settings, get_settings
from shop.core.db import create_blocking_engine, create_engine, instrument_pool, session_factory
from shop.metrics import PrometheusMiddleware
from shop.profiling import ProfilingMiddleware

log = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Runs once in every worker after the fork: connections and sockets must
    # not be shared between processes, and creating them per request would
    # pay for a TCP (and PostgreSQL auth) handshake every time.
    settings: Settings = app.state.settings
    engine = create_engine(settings)
    instrument_pool(engine, settings)
    cache = create_cache(settings)
    app.state.engine = engine
    app.state.sessionmaker = session_factory(engine)
    app.state.cache = cache
    blocking_engine = create_blocking_engine(settings) if settings.blocking_io else None
    app.state.blocking_engine = blocking_engine
    try:
        yield
    finally:
        await cache.aclose()
        await engine.dispose()
        if blocking_engine is not None:
            blocking_engine.dispose()


def _error(status_code: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status_code)


def _install_error_handlers(app: FastAPI) -> None:
    """Map every expected failure to a 4xx/503, so clients never see a bare 500."""

    @app.exception_handler(crud.NotFoundError)
    async def not_found(_: Request, exc: crud.NotFoundError) -> JSONResponse:
        return _error(status.HTTP_404_NOT_FOUND, str(exc))

    @app.exception_handler(crud.ConflictError)
    async def conflict(_: Request, exc: crud.ConflictError) -> JSONResponse:
        return _error(status.HTTP_409_CONFLICT, str(exc))

    @app.exception_handler(IntegrityError)
    async def integrity(_: Request, exc: IntegrityError) -> JSONResponse:
        log.warning("integrity error mapped to 409: %s", exc.orig)
        return _error(status.HTTP_409_CONFLICT, "the request conflicts with existing data")

    async def unavailable(_: Request, exc: Exception) -> JSONResponse:
        log.error("database unavailable: %s", exc)
        response = _error(status.HTTP_503_SERVICE_UNAVAILABLE, "database unavailable, retry")
        response.headers["Retry-After"] = "1"
        return response

    for exc_class in (DBAPIError, PoolTimeoutError, OSError):
        app.add_exception_handler(exc_class, unavailable)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(title="shop", version=__version__, lifespan=lifespan)
    app.state.settings = settings

    for router in routers(settings):
        app.include_router(router)
    _install_error_handlers(app)

    if settings.serve_static:
        # Local development only: in production nginx serves these files.
        app.mount("/static", StaticFiles(directory=settings.static_dir, html=True), name="static")

    # add_middleware wraps what is already there, so the last one added runs first.
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type"],
        )
    if token := settings.profiling_token:
        app.add_middleware(ProfilingMiddleware, token=token)
    app.add_middleware(PrometheusMiddleware)
    return app


app = create_app()
