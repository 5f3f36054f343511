from fastapi import APIRouter

from shop.api.routes import health, metrics, orders, products, users

# Each router carries its full prefix (/api/users, ...) rather than being
# nested under an /api router: the route object FastAPI hands to middleware
# then has the whole template, which the request metrics use as their label.
routers: list[APIRouter] = [
    users.router,
    products.router,
    orders.router,
    health.router,
    metrics.router,
]
