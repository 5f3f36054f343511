import hashlib
import json
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from shop import assets
from shop.core.config import Settings
from tests.conftest import client_for, make_settings, running_app

APP_DIR = Path(__file__).resolve().parents[1]
STATIC = APP_DIR / "static"


def test_manifest_names_match_file_contents() -> None:
    manifest = json.loads((STATIC / "manifest.json").read_text())
    assert set(manifest) == set(assets.FINGERPRINTED)
    for logical, name in manifest.items():
        digest = hashlib.sha256((STATIC / name).read_bytes()).hexdigest()
        stem, ext = logical.rsplit(".", 1)
        assert name == f"{stem}.{digest[:8]}.{ext}"
        assert f"/static/{name}" in (STATIC / "index.html").read_text()


def test_static_dir_is_up_to_date_with_its_sources() -> None:
    assert assets.check(STATIC, APP_DIR / "assets") == []


def test_fingerprint_rewrites_names_when_content_changes(tmp_path: Path) -> None:
    source = tmp_path / "assets"
    source.mkdir()
    for name in (*assets.FINGERPRINTED, *assets.PAGES):
        (source / name).write_bytes((APP_DIR / "assets" / name).read_bytes())
    static = tmp_path / "static"
    first = assets.write(static, source)
    (source / "app.css").write_text("body { color: red; }\n")

    assert assets.check(static, source) != []
    second = assets.write(static, source)

    assert second["app.css"] != first["app.css"]
    assert not (static / first["app.css"]).exists()
    assert f"/static/{second['app.css']}" in (static / "index.html").read_text()
    assert assets.check(static, source) == []


async def test_static_files_are_not_served_by_default(client: httpx.AsyncClient) -> None:
    assert (await client.get("/static/index.html")).status_code == 404


async def test_static_files_served_when_enabled(database_url: str, redis_url: str) -> None:
    css = json.loads((STATIC / "manifest.json").read_text())["app.css"]
    async for app in running_app(make_settings(database_url, redis_url, serve_static=True)):
        async with client_for(app) as client:
            page = await client.get("/static/")
            assert page.status_code == 200
            assert css in page.text
            assert (await client.get(f"/static/{css}")).content == (STATIC / css).read_bytes()


def test_cors_origins_accept_a_comma_list_and_refuse_a_wildcard(monkeypatch) -> None:
    monkeypatch.setenv("SHOP_CORS_ORIGINS", "https://a.example, https://b.example")
    assert Settings(_env_file=None).cors_origins == ["https://a.example", "https://b.example"]
    monkeypatch.setenv("SHOP_CORS_ORIGINS", '["https://a.example"]')
    assert Settings(_env_file=None).cors_origins == ["https://a.example"]
    monkeypatch.setenv("SHOP_CORS_ORIGINS", "*")
    with pytest.raises(ValidationError, match="wildcard"):
        Settings(_env_file=None)
    monkeypatch.delenv("SHOP_CORS_ORIGINS")
    assert Settings(_env_file=None).cors_origins == []


async def test_cors_allows_only_configured_origins(database_url: str, redis_url: str) -> None:
    settings = make_settings(database_url, redis_url, cors_origins=["https://shop.example"])
    async for app in running_app(settings):
        async with client_for(app) as client:
            allowed = await client.get("/health/live", headers={"Origin": "https://shop.example"})
            other = await client.get("/health/live", headers={"Origin": "https://evil.example"})
    assert allowed.headers["access-control-allow-origin"] == "https://shop.example"
    assert "access-control-allow-origin" not in other.headers


def test_settings_from_environment(monkeypatch) -> None:
    monkeypatch.setenv("SHOP_PGBOUNCER", "true")
    monkeypatch.setenv("SHOP_DB_POOL_SIZE", "7")
    monkeypatch.setenv("SHOP_REDIS_URL", "redis://app:secret@cache.internal:6379/2")
    settings = Settings(_env_file=None)
    assert settings.pgbouncer is True
    assert settings.db_pool_size == 7
    assert settings.redis_url.password == "secret"
    assert settings.profiling_enabled is False
    assert settings.serve_static is False
    assert settings.migration_url == str(settings.database_url)
