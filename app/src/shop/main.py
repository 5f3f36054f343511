"""The ASGI application: `shop.main:app` for Gunicorn's Uvicorn workers."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException

from shop import __version__, crud, metrics
from shop.api.main import COMMON_RESPONSES, routers
from shop.core.cache import create_cache
from shop.core.config import Settings, get_settings
from shop.core.db import (
    create_blocking_engine,
    create_engine,
    instrument_pool,
    is_transient,
    session_factory,
    sqlstate,
)
from shop.core.deadline import RequestDeadlineMiddleware
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


def _encodable(value: Any) -> Any:
    """The value with every string made encodable as UTF-8: a lone surrogate the
    client sent (a key of its JSON object, named in an error's loc) becomes "?"."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {_encodable(key): _encodable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_encodable(item) for item in value]
    return value


def _invalid(errors: list[dict[str, Any]]) -> JSONResponse:
    """A 422 in FastAPI's format (HTTPValidationError in the OpenAPI document)."""
    return JSONResponse(
        {"detail": _encodable(jsonable_encoder(errors))},
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
    )


# FastAPI's 400 for a body it could not parse at all (not a JSONDecodeError: JSON nested
# past Python's recursion limit, a broken form).
_UNPARSABLE_BODY = "There was an error parsing the body"


def _install_error_handlers(app: FastAPI, retry_after_seconds: int) -> None:
    """Map every expected failure to a 4xx or a 503, each with a JSON body.

    What the client sent is the client's to fix (4xx): the input types (core/inputs.py)
    refuse what the database would, before any query. A database that does not answer,
    or answers "not now", is a 503 with Retry-After. Anything else is a bug, and a 500
    says so.
    """

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own answer less each error's `input`: echoed back, the client's
        # value (a password, a megabyte of text) would travel twice, and one holding a
        # lone surrogate could not even be encoded (a 500).
        return _invalid([{k: v for k, v in e.items() if k != "input"} for e in exc.errors()])

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == status.HTTP_400_BAD_REQUEST and exc.detail == _UNPARSABLE_BODY:
            # The same answer as for any other body that is not what the operation takes:
            # the 422 every operation with a body declares.
            return _invalid(
                [{"type": "body_invalid", "loc": ["body"], "msg": "the body could not be parsed"}]
            )
        return await http_exception_handler(request, exc)

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
        # asyncpg's TimeoutError (a connect or a statement ran out of time) has no text.
        log.error("database unavailable: %s", str(exc) or f"{type(exc).__name__}: timed out")
        metrics.UNAVAILABLE.labels("database").inc()
        response = _error(status.HTTP_503_SERVICE_UNAVAILABLE, "database unavailable, retry")
        response.headers["Retry-After"] = str(retry_after_seconds)
        return response

    @app.exception_handler(DBAPIError)
    async def database_error(request: Request, exc: DBAPIError) -> JSONResponse:
        code = sqlstate(exc)
        if is_transient(exc):
            return await unavailable(request, exc)
        if code is not None and code.startswith("22"):
            # A data exception: a value PostgreSQL refuses (a NUL character in a
            # string, a number out of range, an invalid date). Still the client's to
            # fix, but the input types should have refused it before the query.
            log.error(
                "data exception %s mapped to 422, an input type misses a bound: %s", code, exc.orig
            )
            return _invalid(
                [
                    {
                        "loc": [],
                        "msg": "the database refused a value of the request",
                        "type": "value_refused",
                    }
                ]
            )
        log.error("database error %s: %s", code, exc, exc_info=exc)
        return _error(status.HTTP_500_INTERNAL_SERVER_ERROR, "internal error")

    # The pool had no free connection in time; a connect or statement timed out
    # (asyncpg raises TimeoutError, an OSError) or the network failed.
    for exc_class in (PoolTimeoutError, OSError):
        app.add_exception_handler(exc_class, unavailable)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(title="shop", version=__version__, lifespan=lifespan, responses=COMMON_RESPONSES)
    app.state.settings = settings

    for router in routers(settings):
        app.include_router(router)
    _install_error_handlers(app, settings.retry_after_seconds)

    if settings.serve_static:
        # Local development only: in production nginx serves these files.
        app.mount("/static", StaticFiles(directory=settings.static_dir, html=True), name="static")

    # add_middleware wraps what is already there, so the last one added runs first.
    # The deadline sits innermost: its 503 still gets CORS headers and is counted.
    app.add_middleware(
        RequestDeadlineMiddleware,
        timeout_seconds=settings.request_timeout_seconds,
        retry_after_seconds=settings.retry_after_seconds,
    )
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
