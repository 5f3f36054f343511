import httpx

from shop import __version__
from tests.conftest import client_for, make_settings, running_app
from tests.servers import free_port


async def test_live_reports_the_release(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/live")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "release": __version__}


async def test_release_comes_from_settings(database_url: str, redis_url: str) -> None:
    async for app in running_app(make_settings(database_url, redis_url, release="2024.06.1-abc")):
        async with client_for(app) as client:
            assert (await client.get("/health/live")).json()["release"] == "2024.06.1-abc"


async def test_ready_when_database_and_redis_answer(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "redis": "ok"}


async def test_not_ready_without_database_and_api_answers_503(redis_url: str) -> None:
    closed = free_port()
    settings = make_settings(f"postgresql+asyncpg://postgres@127.0.0.1:{closed}/shop", redis_url)
    async for app in running_app(settings):
        async with client_for(app) as client:
            ready = await client.get("/health/ready")
            assert ready.status_code == 503
            assert ready.json() == {"status": "unavailable", "database": "error", "redis": "ok"}
            assert (await client.get("/health/live")).status_code == 200
            user = await client.get("/api/users/1")
            assert user.status_code == 503
            assert user.headers["retry-after"] == "1"
