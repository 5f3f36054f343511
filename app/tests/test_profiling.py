import httpx
import pytest

from tests.conftest import client_for, make_settings, running_app

TOKEN = "let-me-profile"


@pytest.fixture
async def profiling_client(database_url: str, redis_url: str):
    settings = make_settings(database_url, redis_url, profiling_enabled=True, admin_token=TOKEN)
    async for app in running_app(settings):
        async with client_for(app) as client:
            yield client


async def test_profiling_is_off_by_default(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/live", headers={"X-Profile-Token": TOKEN})
    assert response.json()["status"] == "ok"


async def test_token_alone_does_nothing_when_disabled(database_url: str, redis_url: str) -> None:
    settings = make_settings(database_url, redis_url, admin_token=TOKEN)
    async for app in running_app(settings):
        async with client_for(app) as client:
            response = await client.get(
                "/health/live?profile=1", headers={"X-Profile-Token": TOKEN}
            )
            assert response.json()["status"] == "ok"


async def test_wrong_token_gets_the_normal_answer(profiling_client: httpx.AsyncClient) -> None:
    response = await profiling_client.get("/health/live", headers={"X-Profile-Token": "guess"})
    assert response.headers["content-type"] == "application/json"
    assert response.json()["status"] == "ok"


async def test_profile_of_one_request_as_html(profiling_client: httpx.AsyncClient) -> None:
    response = await profiling_client.get("/health/ready", headers={"X-Profile-Token": TOKEN})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "pyinstrument" in response.text.lower()


async def test_profile_as_text_with_query_token(profiling_client: httpx.AsyncClient) -> None:
    response = await profiling_client.get(
        "/health/ready",
        params={"profile": "1", "profile_token": TOKEN},
        headers={"X-Profile-Format": "text"},
    )
    assert response.headers["content-type"].startswith("text/plain")
    assert "ready" in response.text  # the endpoint function shows up in the call tree
