"""Prometheus metrics; correct under several Gunicorn workers.

With PROMETHEUS_MULTIPROC_DIR set (Gunicorn sets it before forking, see
gunicorn.conf.py) prometheus_client keeps every value in a per-process file and
/metrics sums them, so a scrape that lands on any one worker sees them all.
The metric names are a contract with the dashboards and alert rules.
"""

import os
import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

HTTP_REQUESTS = Counter(
    "http_requests_total",
    "HTTP requests by method, route template and status code.",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency by method and route template.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
CACHE_REQUESTS = Counter(
    "shop_cache_requests",  # exported as shop_cache_requests_total
    "Cache look-ups by result (hit, miss, error).",
    ["result"],
)
UNAVAILABLE = Counter(
    "shop_unavailable_responses",  # exported as shop_unavailable_responses_total
    "Requests answered 503 with Retry-After, by cause: database (it failed or ran out of"
    " time) or deadline (the request's own bound passed first).",
    ["cause"],
)
LOGIN_FAILURES = Counter(
    "shop_login_failures",  # exported as shop_login_failures_total
    "POST /api/auth/token answered 401: an unknown email or a wrong password. A burst"
    " is password guessing.",
)
DB_POOL_CHECKED_OUT = Gauge(
    "shop_db_pool_checked_out",
    "Database connections in use, summed over live workers.",
    multiprocess_mode="livesum",
)
DB_POOL_SIZE = Gauge(
    "shop_db_pool_size",
    "Database connections each live worker may open (pool size + overflow), summed.",
    multiprocess_mode="livesum",
)

# Unmatched paths share one label value: raw paths would let any client create
# an unbounded number of time series.
UNMATCHED_ROUTE = "<unmatched>"


def render() -> tuple[bytes, str]:
    multiproc_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if multiproc_dir:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=multiproc_dir)
    else:
        registry = REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST


class PrometheusMiddleware:
    """Counts and times requests as a pure ASGI middleware.

    BaseHTTPMiddleware would wrap every response body in an extra task and
    stream; this only peeks at the status as it goes by. The route template is
    read after routing, from the scope the router filled in.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        status = 500
        start = time.perf_counter()

        async def send_with_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE
            method = scope["method"]
            HTTP_REQUESTS.labels(method, route, str(status)).inc()
            HTTP_DURATION.labels(method, route).observe(time.perf_counter() - start)
