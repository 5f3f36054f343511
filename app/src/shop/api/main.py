from typing import Any

from fastapi import APIRouter

from shop import schemas
from shop.api.routes import auth, health, metrics, orders, products, users
from shop.core.config import Settings

Responses = dict[int | str, dict[str, Any]]

RETRY_AFTER: dict[str, Any] = {
    "Retry-After": {
        "description": "Seconds to wait before a retry.",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
    }
}

# What any operation may answer besides its own statuses, declared for the whole app
# (create_app): nginx limits every client's request rate on /api/ and /health/, and the
# request deadline (core/deadline.py) applies to every route. A 503 means a dependency
# (PostgreSQL, PgBouncer) is down or overloaded, never that the request was wrong.
COMMON_RESPONSES: Responses = {
    429: {
        "model": schemas.Detail,
        "description": "Too many requests from this client (nginx's rate limit): retry later.",
    },
    503: {
        "model": schemas.Detail,
        "description": "A dependency is down or overloaded, or the request missed its"
        " deadline: retry after Retry-After seconds.",
        "headers": RETRY_AFTER,
    },
}


# Each router carries its full prefix (/api/users, ...) rather than being
# nested under an /api router: the route object FastAPI hands to middleware
# then has the whole template, which the request metrics use as their label.
def routers(settings: Settings) -> list[APIRouter]:
    return [
        auth.router,
        users.build_router(lean=settings.lean_models, blocking=settings.blocking_io),
        products.router,
        orders.build_router(lean=settings.lean_models),
        health.router,
        metrics.router,
    ]
