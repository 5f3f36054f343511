import os
import subprocess
import sys
from pathlib import Path

import httpx
from prometheus_client import REGISTRY
from prometheus_client.multiprocess import mark_process_dead
from prometheus_client.parser import text_string_to_metric_families


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


_WORKER = """
from shop import metrics
metrics.HTTP_REQUESTS.labels("GET", "/api/users/{user_id}", "200").inc(3)
metrics.HTTP_DURATION.labels("GET", "/api/users/{user_id}").observe(0.02)
metrics.CACHE_REQUESTS.labels("hit").inc()
metrics.LOGIN_FAILURES.inc()
metrics.DB_POOL_SIZE.set(10)
metrics.DB_POOL_CHECKED_OUT.inc(2)
import os; print(os.getpid())
"""
_SCRAPE = "from shop import metrics; print(metrics.render()[0].decode())"


def _python(code: str, multiproc_dir: Path) -> str:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir)}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout


def test_multiprocess_metrics_sum_over_workers(tmp_path: Path) -> None:
    """Two processes write, a third (any worker answering /metrics) sums them."""
    pids = [int(_python(_WORKER, tmp_path)) for _ in range(2)]

    samples = _samples(_python(_SCRAPE, tmp_path))

    route = ("route", "/api/users/{user_id}")
    get = ("method", "GET")
    assert samples["http_requests_total", frozenset({get, route, ("status", "200")})] == 6
    assert samples["http_request_duration_seconds_count", frozenset({get, route})] == 2
    assert samples["shop_cache_requests_total", frozenset({("result", "hit")})] == 2
    assert samples["shop_login_failures_total", frozenset()] == 2
    assert samples["shop_db_pool_size", frozenset()] == 20
    assert samples["shop_db_pool_checked_out", frozenset()] == 4

    # What gunicorn.conf.py's child_exit does: a dead worker leaves the live gauges.
    mark_process_dead(pids[0], str(tmp_path))
    samples = _samples(_python(_SCRAPE, tmp_path))
    assert samples["shop_db_pool_checked_out", frozenset()] == 2
    assert samples["http_requests_total", frozenset({get, route, ("status", "200")})] == 6


def _requests(route: str, status: str) -> float:
    labels = {"method": "GET", "route": route, "status": status}
    return REGISTRY.get_sample_value("http_requests_total", labels) or 0.0


async def test_requests_are_labelled_by_route_template(client: httpx.AsyncClient) -> None:
    before_404 = _requests("/api/users/{user_id}", "404")
    before_unmatched = _requests("<unmatched>", "404")

    await client.get("/api/users/123456")
    await client.get("/api/users/654321")
    await client.get("/no/such/page")

    assert _requests("/api/users/{user_id}", "404") == before_404 + 2
    assert _requests("<unmatched>", "404") == before_unmatched + 1
    assert (
        REGISTRY.get_sample_value(
            "http_requests_total", {"method": "GET", "route": "/api/users/123456", "status": "404"}
        )
        is None
    )


async def test_metrics_endpoint(client: httpx.AsyncClient) -> None:
    await client.get("/health/live")
    await client.get("/api/users/1")  # checks a connection out of the pool and back

    response = await client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = _samples(response.text)
    live = frozenset({("method", "GET"), ("route", "/health/live"), ("status", "200")})
    assert samples["http_requests_total", live] >= 1
    assert samples["shop_db_pool_size", frozenset()] == 10
    assert samples["shop_db_pool_checked_out", frozenset()] == 0
    assert any(name == "http_request_duration_seconds_bucket" for name, _ in samples)
