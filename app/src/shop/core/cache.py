"""A fail-open cache of bytes on Redis: an outage turns into cache misses, never errors."""

import logging
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import (
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, ReadOnlyError, RedisError
from redis.maint_notifications import MaintNotificationsConfig

from shop import metrics
from shop.core.config import Settings
from shop.core.singleflight import SingleFlight

log = logging.getLogger(__name__)

T = TypeVar("T")

# Errors that mean "Redis is not there right now"; anything else is a bug and
# should surface.
_OUTAGE = (RedisError, OSError, TimeoutError)

# Deletes a lock only while it still holds the owner's token: a holder whose lock
# expired must not release the lock a later holder took.
_UNLOCK = """
if redis.call("get", KEYS[1]) == ARGV[1] then
    return redis.call("del", KEYS[1])
end
return 0
"""

# What lock() hands back when Redis is down: the caller goes ahead (fails open),
# and unlock() of it is a no-op.
OUTAGE_TOKEN = ""


class CacheOutage(Exception):
    """Redis did not answer a peek()."""


def pack(body: bytes, fresh_seconds: float) -> bytes:
    """An entry that is fresh for `fresh_seconds`: its soft expiry (Unix time in ms) as
    a first line, then the body. One GET reads both."""
    return b"%d\n" % int((time.time() + fresh_seconds) * 1000) + body


def unpack(raw: bytes) -> tuple[bool, bytes]:
    """(fresh, body) of a packed entry; one that does not parse counts as stale."""
    head, _, body = raw.partition(b"\n")
    try:
        fresh = time.time() * 1000 < int(head)
    except ValueError:
        fresh = False
    return fresh, body


def _socket_options(settings: Settings) -> dict[str, Any]:
    """Timeouts, keepalive and retries of every connection, to Redis and to Sentinels."""
    return {
        "socket_timeout": settings.redis_timeout_seconds,
        "socket_connect_timeout": settings.redis_timeout_seconds,
        # An idle pooled connection to a cache host that vanished is found dead by the
        # probes (after about 3 s) rather than by the next request's read timeout.
        "socket_keepalive": True,
        "socket_keepalive_options": {
            socket.TCP_KEEPIDLE: 1,
            socket.TCP_KEEPINTVL: 1,
            socket.TCP_KEEPCNT: 2,
        },
        # No retries: the database answers anyway, and retrying with backoff
        # during an outage would add seconds to every request.
        "retry": Retry(NoBackoff(), 0),
        # Off, so that a pooled connection the server closed (a restart, or Sentinel
        # killing the clients of a demoted primary) is replaced at checkout: redis-py
        # skips that check while maintenance notifications (a Redis Enterprise feature,
        # "auto" by default) are on, and the next command on it would fail.
        "maint_notifications_config": MaintNotificationsConfig(enabled=False),
    }


def create_redis(settings: Settings) -> Redis:
    return Redis.from_url(
        str(settings.redis_url),
        **_socket_options(settings),
        max_connections=64,
        health_check_interval=30,
    )


class PrimaryDemoted(ConnectionError):
    """The server this connection reached is no longer the primary (READONLY)."""


class _FollowingConnectionMixin:
    """On READONLY, the primary this pool dialled has been demoted (it came back as a
    replica, or a partition healed): every connection of the pool to it is dropped, not
    only this one, so each reconnects to the primary the Sentinels name now instead of
    failing in turn."""

    connection_pool: "FollowingSentinelPool"

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)  # type: ignore[misc]
        except ConnectionError as exc:
            # redis-py's Sentinel connection has closed itself and turned the
            # ReadOnlyError into a ConnectionError, raised while handling it.
            if not isinstance(exc.__context__, ReadOnlyError):
                raise
            await self.connection_pool.drop_all()
            raise PrimaryDemoted("the primary was demoted; reconnecting to the new one") from exc


class _FollowingConnection(_FollowingConnectionMixin, SentinelManagedConnection):
    pass


class _FollowingSSLConnection(_FollowingConnectionMixin, SentinelManagedSSLConnection):
    pass


class FollowingSentinelPool(SentinelConnectionPool):
    """redis-py's Sentinel pool, plus: a connection handed back while the primary has
    changed is closed (redis-py's synchronous pool does this, its asyncio pool does
    not), and READONLY drops every connection (_FollowingConnectionMixin)."""

    def __init__(self, service_name: str, sentinel_manager: Sentinel, **kwargs: Any) -> None:
        ssl = kwargs.pop("ssl", False)
        kwargs["connection_class"] = _FollowingSSLConnection if ssl else _FollowingConnection
        super().__init__(service_name, sentinel_manager, **kwargs)

    async def release(self, connection: Any) -> None:
        if (
            self.master_address is not None
            and (connection.host, connection.port) != self.master_address
        ):
            connection.mark_for_reconnect()
        await super().release(connection)

    async def drop_all(self) -> None:
        self.master_address = None
        await self.update_active_connections_for_reconnect()
        await self.disconnect(inuse_connections=False)


def create_sentinel_redis(settings: Settings) -> tuple[Redis, Sentinel]:
    """A client of the primary that the Sentinels name for redis_sentinel_service.

    redis_url gives the login, database and TLS settings, for the primary and the
    Sentinels alike; its host and port are not used."""
    url = parse_url(str(settings.redis_url))
    tls = url.pop("connection_class", None) is SSLConnection
    for unused in ("host", "port"):
        url.pop(unused, None)
    login = {key: url[key] for key in ("username", "password") if key in url}
    tls_options = {key: value for key, value in url.items() if key.startswith("ssl_")}
    options = _socket_options(settings)
    sentinel = Sentinel(
        settings.redis_sentinel_addresses,
        sentinel_kwargs={**options, **login, **tls_options, "ssl": tls},
    )
    primary = sentinel.master_for(
        settings.redis_sentinel_service,
        connection_pool_class=FollowingSentinelPool,
        **options,
        **url,
        ssl=tls,
        max_connections=64,
        health_check_interval=30,
    )
    return primary, sentinel


class Cache:
    """Values are bytes, stored and returned as they are: a hit costs no decoding."""

    enabled = True

    def __init__(
        self,
        redis: Redis,
        ttl_seconds: int,
        stale_seconds: int = 0,
        lock_wait_seconds: float = 5.0,
        sentinel: Sentinel | None = None,
    ) -> None:
        self.redis = redis
        # Set when `redis` follows the primary through Sentinel: closed with it.
        self.sentinel = sentinel
        # How long an entry is fresh, and how much longer Redis keeps it for entries
        # that may be served stale while one worker refreshes them (pack/unpack).
        self.ttl_seconds = ttl_seconds
        self.stale_seconds = stale_seconds
        # How long a read of a missing entry waits for the lock holder computing it.
        self.lock_wait_seconds = lock_wait_seconds
        # This process's copy of each packed entry it last read or computed: what it
        # answers while Redis is down (keep_local/local).
        self._local: dict[str, bytes] = {}
        # One computation of an entry at a time in this process (the Redis lock's
        # fallback: it fails open when Redis is down).
        self.flights: SingleFlight[bytes] = SingleFlight()

    async def _call(self, command: Callable[[], Awaitable[T]]) -> T:
        """Runs a Redis command once, or twice when the first attempt found the primary
        demoted: by then the pool has dropped its connections, and the second attempt
        dials the primary the Sentinels name now (an invalidation must reach it)."""
        try:
            return await command()
        except PrimaryDemoted as exc:
            log.info("cache: %s", exc)
            return await command()

    async def get(self, key: str) -> bytes | None:
        try:
            return await self.lookup(key)
        except CacheOutage:
            return None

    async def lookup(self, key: str) -> bytes | None:
        """get(), except that an outage raises CacheOutage (counted and logged as get's)."""
        try:
            raw = await self._call(lambda: self.redis.get(key))
        except _OUTAGE as exc:
            metrics.CACHE_REQUESTS.labels("error").inc()
            log.warning("cache get %s failed, reading from the database: %s", key, exc)
            raise CacheOutage(str(exc)) from exc
        if raw is None:
            metrics.CACHE_REQUESTS.labels("miss").inc()
            return None
        metrics.CACHE_REQUESTS.labels("hit").inc()
        return raw

    async def peek(self, key: str) -> bytes | None:
        """get() without the hit/miss count, for polling; raises CacheOutage."""
        try:
            return await self._call(lambda: self.redis.get(key))
        except _OUTAGE as exc:
            raise CacheOutage(str(exc)) from exc

    def keep_local(self, key: str, packed: bytes) -> None:
        """Keeps a packed entry (pack()) in this process: a reference, no copy."""
        self._local[key] = packed

    def local(self, key: str) -> bytes | None:
        """This process's copy of the entry, until it would have left Redis (its soft
        expiry plus stale_seconds).

        Only for Redis outages: an order's invalidation deletes the entry in Redis and
        cannot reach every process's copy, so with Redis up Redis alone is the truth.
        With Redis down nothing invalidates anyway, and the copy is no older than a
        stale entry may be."""
        packed = self._local.get(key)
        if packed is None:
            return None
        head = packed.partition(b"\n")[0]
        try:
            alive = time.time() * 1000 < int(head) + self.stale_seconds * 1000
        except ValueError:
            alive = False
        return packed if alive else None

    async def set(self, key: str, value: bytes, ttl_seconds: int | None = None) -> None:
        try:
            await self._call(lambda: self.redis.set(key, value, ex=ttl_seconds or self.ttl_seconds))
        except _OUTAGE as exc:
            log.warning("cache set %s failed: %s", key, exc)

    async def delete(self, key: str) -> None:
        try:
            await self._call(lambda: self.redis.delete(key))
        except _OUTAGE as exc:
            # The TTL bounds how long the stale value can live.
            log.warning("cache delete %s failed: %s", key, exc)

    async def lock(self, key: str, ttl_ms: int) -> str | None:
        """Takes the lock `key` for at most `ttl_ms` (SET NX PX): its token, or None while
        another holds it. Redis down: OUTAGE_TOKEN, so that the caller goes ahead."""
        token = secrets.token_hex(16)
        try:
            taken = await self._call(lambda: self.redis.set(key, token, nx=True, px=ttl_ms))
        except _OUTAGE as exc:
            log.warning("cache lock %s failed, going ahead without it: %s", key, exc)
            return OUTAGE_TOKEN
        return token if taken else None

    async def unlock(self, key: str, token: str) -> None:
        if token == OUTAGE_TOKEN:
            return
        try:
            await self._call(lambda: self.redis.eval(_UNLOCK, 1, key, token))
        except _OUTAGE as exc:
            # The lock's expiry releases it.
            log.warning("cache unlock %s failed: %s", key, exc)

    async def ping(self) -> bool:
        try:
            return bool(await self._call(self.redis.ping))
        except _OUTAGE:
            return False

    async def aclose(self) -> None:
        await self.redis.aclose()
        if self.sentinel is not None:
            await self.sentinel.aclose()


class DisabledCache:
    """SHOP_CACHE_ENABLED=false: no Redis client and no Redis traffic; every get misses.

    Not counted in the cache metrics, which describe Redis requests."""

    enabled = False

    async def get(self, key: str) -> bytes | None:
        return None

    def keep_local(self, key: str, packed: bytes, ttl_seconds: int | None = None) -> None:
        """Keeps a packed entry in this process for as long as Redis keeps it (set())."""
        self._local[key] = (time.monotonic() + (ttl_seconds or self.ttl_seconds), packed)

    def local(self, key: str) -> bytes | None:
        """This process's copy of the entry, until it would have left Redis.

        Only for Redis outages: an order's invalidation deletes the entry in Redis and
        cannot reach every process's copy, so with Redis up Redis alone is the truth.
        With Redis down nothing invalidates anyway, and the copy is as old as a stale
        entry may be."""
        kept = self._local.get(key)
        if kept is None or kept[0] <= time.monotonic():
            return None
        return kept[1]

    async def set(self, key: str, value: bytes, ttl_seconds: int | None = None) -> None:
        return None

    async def delete(self, key: str) -> None:
        return None

    async def ping(self) -> bool:
        return False

    async def aclose(self) -> None:
        return None


def create_cache(settings: Settings) -> Cache | DisabledCache:
    if not settings.cache_enabled:
        return DisabledCache()
    sentinel = None
    if settings.redis_sentinels:
        redis, sentinel = create_sentinel_redis(settings)
    else:
        redis = create_redis(settings)
    return Cache(
        redis,
        settings.cache_ttl_seconds,
        settings.cache_stale_seconds,
        settings.cache_lock_wait_seconds,
        sentinel,
    )
