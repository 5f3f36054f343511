from fastapi import APIRouter

from shop.api.routes import auth, health, metrics, orders, products, users
from shop.core.config import Settings


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
