"""A fail-open cache of bytes on Redis: an outage turns into cache misses, never errors."""

import logging

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from shop import metrics
from shop.core.config import Settings

log = logging.getLogger(__name__)

# Errors that mean "Redis is not there right now"; anything else is a bug and
# should surface.
_OUTAGE = (RedisError, OSError, TimeoutError)


def create_redis(settings: Settings) -> Redis:
    return Redis.from_url(
        str(settings.redis_url),
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        # No retries: the database answers anyway, and retrying with backoff
        # during an outage would add seconds to every request.
        retry=Retry(NoBackoff(), 0),
        max_connections=64,
        health_check_interval=30,
    )


class Cache:
    """Values are bytes, stored and returned as they are: a hit costs no decoding."""

    enabled = True

    def __init__(self, redis: Redis, ttl_seconds: int) -> None:
        self.redis = redis
        self.ttl_seconds = ttl_seconds

    async def get(self, key: str) -> bytes | None:
        try:
            raw = await self.redis.get(key)
        except _OUTAGE as exc:
            metrics.CACHE_REQUESTS.labels("error").inc()
            log.warning("cache get %s failed, reading from the database: %s", key, exc)
            return None
        if raw is None:
            metrics.CACHE_REQUESTS.labels("miss").inc()
            return None
        metrics.CACHE_REQUESTS.labels("hit").inc()
        return raw

    async def set(self, key: str, value: bytes) -> None:
        try:
            await self.redis.set(key, value, ex=self.ttl_seconds)
        except _OUTAGE as exc:
            log.warning("cache set %s failed: %s", key, exc)

    async def delete(self, key: str) -> None:
        try:
            await self.redis.delete(key)
        except _OUTAGE as exc:
            # The TTL bounds how long the stale value can live.
            log.warning("cache delete %s failed: %s", key, exc)

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except _OUTAGE:
            return False

    async def aclose(self) -> None:
        await self.redis.aclose()


class DisabledCache:
    """SHOP_CACHE_ENABLED=false: no Redis client and no Redis traffic; every get misses.

    Not counted in the cache metrics, which describe Redis requests."""

    enabled = False

    async def get(self, key: str) -> bytes | None:
        return None

    async def set(self, key: str, value: bytes) -> None:
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
    return Cache(create_redis(settings), settings.cache_ttl_seconds)
