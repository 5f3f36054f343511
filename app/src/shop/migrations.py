"""Alembic, driven from code so an installed wheel can migrate from any directory."""

from importlib.resources import files

from alembic import command
from alembic.config import Config

from shop.core.config import Settings
from shop.core.db import tls_connect_args


def alembic_config(settings: Settings, url: str | None = None) -> Config:
    config = Config()
    # Inside the package, not relative to the current directory.
    config.set_main_option("script_location", str(files("shop") / "alembic"))
    config.attributes["url"] = url or settings.migration_url
    config.attributes["pgbouncer"] = settings.pgbouncer
    # Migrations go straight to PostgreSQL: verify-full there too (db_tls_ca_file).
    config.attributes["tls_connect_args"] = tls_connect_args(settings)
    return config


def upgrade(settings: Settings, revision: str = "head", url: str | None = None) -> None:
    command.upgrade(alembic_config(settings, url), revision)


def downgrade(settings: Settings, revision: str, url: str | None = None) -> None:
    command.downgrade(alembic_config(settings, url), revision)


def current(settings: Settings, url: str | None = None) -> None:
    command.current(alembic_config(settings, url), verbose=False)
