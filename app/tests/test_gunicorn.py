"""The app under real Gunicorn, two Uvicorn workers, against the test servers."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import TOKEN_SECRET
from tests.servers import PostgresServer, free_port, wait_for_port

APP_DIR = Path(__file__).resolve().parents[1]
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))


@pytest.fixture
def gunicorn(
    postgres: PostgresServer, database: str, redis_url: str, tmp_path: Path
) -> Iterator[str]:
    port = free_port()
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    (multiproc / "counter_999999.db").write_bytes(b"left over by an earlier master")
    env = {
        **os.environ,
        "SHOP_DATABASE_URL": postgres.url(database),
        "SHOP_REDIS_URL": redis_url,
        "SHOP_TOKEN_SECRET": TOKEN_SECRET,
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "WEB_CONCURRENCY": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
    }
    log = (tmp_path / "gunicorn.log").open("w")
    process = subprocess.Popen(
        [GUNICORN, "-c", str(APP_DIR / "gunicorn.conf.py")],
        cwd=tmp_path,  # the installed package, not the source tree's cwd, is what runs
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        log.close()
    assert process.returncode == 0, (tmp_path / "gunicorn.log").read_text()


def _samples(client: httpx.Client) -> dict[tuple[str, tuple], float]:
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.text)
        for s in family.samples
    }


def _wait_for_both_workers(client: httpx.Client) -> None:
    """Each worker sets its pool size once its lifespan ran, and a scrape (answered
    by either worker) sums the live workers' values: 2 x 10 means both are serving.
    The stale file from "an earlier master" would add to it had it not been wiped."""
    for _ in range(200):
        try:
            if _samples(client).get(("shop_db_pool_size", ())) == 2 * 10:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("gunicorn never had two workers serving")


def test_every_endpoint_under_gunicorn(
    gunicorn: str, postgres: PostgresServer, database: str
) -> None:
    postgres.execute(
        "INSERT INTO products (name, category, price_cents) VALUES ('Lamp', 'home', 4200)",
        database=database,
    )
    with httpx.Client(base_url=gunicorn, timeout=10) as client:
        _wait_for_both_workers(client)
        ready = client.get("/health/ready")
        assert ready.json() == {"status": "ok", "database": "ok", "redis": "ok"}
        assert client.get("/health/live").json()["status"] == "ok"

        signed_up = client.post(
            "/api/users", json={"name": "Gunnar", "email": "g@example.com", "password": "hunter22!"}
        )
        assert signed_up.status_code == 202
        wrong = client.post("/api/auth/token", data={"username": "g@example.com", "password": "x"})
        assert wrong.status_code == 401
        token = client.post(
            "/api/auth/token", data={"username": "g@example.com", "password": "hunter22!"}
        ).json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        user_id = client.get("/api/users/me", headers=auth).json()["id"]
        assert client.get(f"/api/users/{user_id}").json() == {"id": user_id, "name": "Gunnar"}

        page = client.get("/api/products", params={"category": "home"}).json()
        lamp = page["items"][0]["id"]
        item = {"product_id": lamp, "quantity": 2}
        assert client.post("/api/orders", json={"items": [item]}).status_code == 401
        order = client.post("/api/orders", json={"items": [item]}, headers=auth)
        assert order.status_code == 201
        assert client.get("/api/products/popular").json()[0]["sold"] == 2
        assert client.get("/api/products/popular").json()[0]["sold"] == 2  # from the cache
        history = client.get(f"/api/users/{user_id}/orders", headers=auth)
        assert len(history.json()["orders"]) == 1
        assert client.post("/api/orders", json={"items": []}, headers=auth).status_code == 422

        samples = _samples(client)

    orders = (("method", "POST"), ("route", "/api/orders"), ("status", "201"))
    assert samples["http_requests_total", orders] == 1
    assert samples["shop_cache_requests_total", (("result", "hit"),)] >= 1
    assert samples["shop_login_failures_total", ()] == 1


def test_without_a_token_secret_gunicorn_refuses_to_start(
    postgres: PostgresServer, database: str, redis_url: str, tmp_path: Path
) -> None:
    """No key to sign tokens with: the workers do not boot, and the log says why."""
    env = {
        **os.environ,
        "SHOP_DATABASE_URL": postgres.url(database),
        "SHOP_REDIS_URL": redis_url,
        "GUNICORN_BIND": f"127.0.0.1:{free_port()}",
        "WEB_CONCURRENCY": "1",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
    }
    env.pop("SHOP_TOKEN_SECRET", None)
    result = subprocess.run(
        [GUNICORN, "-c", str(APP_DIR / "gunicorn.conf.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "SHOP_TOKEN_SECRET is not set" in result.stdout + result.stderr
