"""Settings, read once from SHOP_* environment variables (and an optional .env file)."""

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, PostgresDsn, RedisDsn, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shop import __version__

# app/static in a source checkout (src/shop/core/config.py -> app/static).
_SOURCE_STATIC_DIR = Path(__file__).resolve().parents[3] / "static"
_MIN_TOKEN_SECRET = 32
# host:port of a Sentinel: a name or IPv4 address, or an IPv6 address in brackets.
_SENTINEL_ADDRESS = re.compile(
    r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>[0-9]{1,5})$"
)


def _split_list(value: object) -> object:
    """A comma-separated string (or a JSON list) as a list of its non-empty items."""
    if isinstance(value, str):
        value = value.strip()
        if value.startswith("["):
            return json.loads(value)
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHOP_", env_file=".env", extra="ignore")

    database_url: PostgresDsn = PostgresDsn("postgresql+asyncpg://shop@127.0.0.1:5432/shop")
    # Migrations take DDL locks and run once per deploy: they may go straight to
    # PostgreSQL while the workers go through PgBouncer.
    migration_database_url: PostgresDsn | None = None
    redis_url: RedisDsn = RedisDsn("redis://127.0.0.1:6379/0")
    # Redis Sentinels (host:port, comma-separated): set, the app asks them for the
    # current primary of redis_sentinel_service and follows a failover; redis_url then
    # gives only the user, password, database and TLS settings (its host and port are
    # not used). The app logs into the Sentinels with the same user, password and TLS.
    # Empty: redis_url's host, as without Sentinel.
    redis_sentinels: Annotated[list[str], NoDecode] = []
    redis_sentinel_service: str = Field(default="cache", pattern=r"^[A-Za-z0-9_.-]+$")

    # PgBouncer in transaction mode (1.18 on Debian 12) cannot keep prepared
    # statements across transactions, so asyncpg's caches must be off behind it.
    pgbouncer: bool = False
    db_pool_size: int = Field(default=5, ge=1)
    db_max_overflow: int = Field(default=5, ge=0)
    # Bounds on every database call, so a dead or slow database costs a request a quick
    # 503 and never a hang (see core/db.py for how each one is applied).
    # Waiting for a free pooled connection.
    db_pool_timeout_seconds: float = Field(default=1.4, gt=0)
    # Opening a connection (TCP connect and login) to PgBouncer or PostgreSQL.
    db_connect_timeout_seconds: float = Field(default=1.0, gt=0)
    # One statement, including its wait in PgBouncer's queue for a server connection: the
    # driver cancels it on the server when this passes.
    db_statement_timeout_seconds: float = Field(default=1.5, gt=0)
    # A database peer that vanished without a reset (host down, packets dropped) is
    # noticed after this long: TCP keepalive probes each second and TCP_USER_TIMEOUT.
    db_tcp_user_timeout_seconds: float = Field(default=2.0, ge=1)
    # TLS to PgBouncer or PostgreSQL: the CA certificate that signed the server's. When
    # set, every connection (the app's engine, migrations, seed, the blocking engine)
    # requires TLS and verifies the server's certificate, its name included
    # (verify-full). Unset: the drivers' default (asyncpg and libpq: "prefer", TLS when
    # the server offers it, unverified).
    db_tls_ca_file: Path | None = None
    # false: SQLAlchemy's NullPool, a new database connection (and login) per request.
    # Only for measuring what the pool saves; the pool sizes above are then unused.
    db_pool_enabled: bool = True

    # The switches below exist so the benchmark can turn one tip off at a time; the
    # defaults are the fast service.
    # false: no Redis at all (no client is created); every read goes to the database.
    cache_enabled: bool = True
    # false: responses carry every column of every row they read, nested objects in
    # full (secrets never), as an app without dedicated response models would.
    lean_models: bool = True
    # true: the user reads run a synchronous driver (psycopg) inside the async
    # endpoints, blocking the event loop for every query: tip 1's "what not to do".
    blocking_io: bool = False

    cache_ttl_seconds: int = Field(default=60, ge=1)
    # The popular list stays in Redis this much longer than its TTL: past the TTL one
    # worker (holding a Redis lock) recomputes it while the others serve the stale
    # copy. 0: the entry expires at its TTL and the next read computes it.
    cache_stale_seconds: int = Field(default=240, ge=0)
    # With no entry at all, how long a read waits for the worker computing it before
    # it runs the query itself. Well inside request_timeout_seconds, which cuts a longer
    # wait short with a 503.
    cache_lock_wait_seconds: float = Field(default=1.0, gt=0)
    # Connect and read timeout towards Redis. Short on purpose: a Redis outage must cost
    # a request milliseconds, not seconds.
    redis_timeout_seconds: float = Field(default=0.1, gt=0)

    # Every request is answered within this many seconds: past it, whatever it waits for,
    # it gets a 503 with Retry-After. The bounds above must fit inside it.
    request_timeout_seconds: float = Field(default=3.0, gt=0)
    # Seconds a client is told to wait (Retry-After) when a dependency is unavailable.
    retry_after_seconds: int = Field(default=1, ge=1)

    # NoDecode: accept a plain comma-separated list as well as JSON.
    cors_origins: Annotated[list[str], NoDecode] = []

    # Bearer tokens (HS256 JWTs, core/auth.py). The signing key, at least 32 characters:
    # the app refuses to start without one. SHOP_TOKEN_PREVIOUS_SECRET verifies only, for
    # a rotation: tokens signed with the old key stay valid until they expire, so remove
    # it one token_ttl_seconds after the rotation. Empty means none.
    token_secret: SecretStr | None = None
    token_previous_secret: SecretStr | None = None
    token_ttl_seconds: int = Field(default=900, ge=60, le=86_400)
    # Password hashes (argon2id, tens of milliseconds of CPU and 19 MiB each) running at
    # once per worker, and how long a login or sign-up waits for a free slot before it
    # is answered 429: a flood of logins cannot take every core from the other requests.
    password_hash_concurrency: int = Field(default=2, ge=1)
    password_hash_wait_seconds: float = Field(default=1.0, gt=0)

    profiling_enabled: bool = False
    admin_token: SecretStr | None = None

    serve_static: bool = False
    static_dir: Path = _SOURCE_STATIC_DIR

    release: str = __version__

    @field_validator("cors_origins", "redis_sentinels", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return _split_list(value)

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinel_addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            match = _SENTINEL_ADDRESS.match(address)
            if match is None or not 1 <= int(match["port"]) <= 65535:
                raise ValueError(
                    f"{address!r} is not host:port (a name, an IPv4 address or an IPv6 "
                    "address in brackets, and a port from 1 to 65535)"
                )
        if len(set(value)) != len(value):
            raise ValueError(f"a Sentinel is listed twice: {', '.join(value)}")
        return value

    @field_validator("cors_origins")
    @classmethod
    def _no_wildcard(cls, value: list[str]) -> list[str]:
        if "*" in value:
            raise ValueError("a wildcard CORS origin is not allowed; list the origins")
        return value

    @field_validator("db_tls_ca_file", mode="before")
    @classmethod
    def _empty_path_is_none(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("token_secret", "token_previous_secret", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        # An inventory leaves the previous key empty between rotations.
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("token_secret", "token_previous_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        # HS256 keys shorter than the hash (32 bytes) weaken it (RFC 7518, 3.2).
        if value is not None and len(value.get_secret_value()) < _MIN_TOKEN_SECRET:
            raise ValueError(f"must be at least {_MIN_TOKEN_SECRET} characters long")
        return value

    @model_validator(mode="after")
    def _bounds_fit_the_deadline(self) -> "Settings":
        """With the database down a request waits for a pooled connection, then for
        one statement: their sum must end before the deadline, so that the 503 comes
        from the bound that knows what failed."""
        deadline = self.request_timeout_seconds
        waits = {
            "db_pool_timeout_seconds + db_statement_timeout_seconds": (
                self.db_pool_timeout_seconds + self.db_statement_timeout_seconds
            ),
            "db_connect_timeout_seconds": self.db_connect_timeout_seconds,
            "redis_timeout_seconds": self.redis_timeout_seconds,
            "password_hash_wait_seconds": self.password_hash_wait_seconds,
        }
        if self.redis_sentinels:
            # Finding the primary asks the Sentinels one after another (each within
            # redis_timeout_seconds) before the primary itself is dialled.
            waits["redis_timeout_seconds x (1 + the number of redis_sentinels)"] = (
                self.redis_timeout_seconds * (1 + len(self.redis_sentinels))
            )
        for name, seconds in waits.items():
            if seconds >= deadline:
                raise ValueError(
                    f"{name} ({seconds:g}) must be below request_timeout_seconds ({deadline:g})"
                )
        return self

    @property
    def redis_sentinel_addresses(self) -> list[tuple[str, int]]:
        """redis_sentinels as (host, port) pairs, an IPv6 address without its brackets."""
        pairs = []
        for address in self.redis_sentinels:
            host, _, port = address.rpartition(":")
            pairs.append((host.removeprefix("[").removesuffix("]"), int(port)))
        return pairs

    @property
    def migration_url(self) -> str:
        return str(self.migration_database_url or self.database_url)

    @property
    def profiling_token(self) -> str | None:
        """The token that unlocks profiling, or None when profiling is off."""
        if not self.profiling_enabled or self.admin_token is None:
            return None
        token = self.admin_token.get_secret_value()
        return token or None


@lru_cache
def get_settings() -> Settings:
    return Settings()
