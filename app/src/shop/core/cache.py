"""A fail-open cache of bytes on Redis: an outage turns into cache misses, never errors."""

import logging
import secrets
import socket
import time

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from shop import metrics
from shop.core.config import Settings
from shop.core.singleflight import SingleFlight

log = logging.getLogger(__name__)

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


def create_redis(settings: Settings) -> Redis:
    return Redis.from_url(
        str(settings.redis_url),
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        # An idle pooled connection to a cache host that vanished is found dead by the
        # probes (after about 3 s) rather than by the next request's read timeout.
        socket_keepalive=True,
        socket_keepalive_options={
            socket.TCP_KEEPIDLE: 1,
            socket.TCP_KEEPINTVL: 1,
            socket.TCP_KEEPCNT: 2,
        },
        # No retries: the database answers anyway, and retrying with backoff
        # during an outage would add seconds to every request.
        retry=Retry(NoBackoff(), 0),
        max_connections=64,
        health_check_interval=30,
    )


class Cache:
    """Values are bytes, stored and returned as they are: a hit costs no decoding."""

    enabled = True

    def __init__(
        self,
        redis: Redis,
        ttl_seconds: int,
        stale_seconds: int = 0,
        lock_wait_seconds: float = 5.0,
    ) -> None:
        self.redis = redis
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

    async def get(self, key: str) -> bytes | None:
        try:
            return await self.lookup(key)
        except CacheOutage:
            return None

    async def lookup(self, key: str) -> bytes | None:
        """get(), except that an outage raises CacheOutage (counted and logged as get's)."""
        try:
            raw = await self.redis.get(key)
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
            return await self.redis.get(key)
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
            await self.redis.set(key, value, ex=ttl_seconds or self.ttl_seconds)
        except _OUTAGE as exc:
            log.warning("cache set %s failed: %s", key, exc)

    async def delete(self, key: str) -> None:
        try:
            await self.redis.delete(key)
        except _OUTAGE as exc:
            # The TTL bounds how long the stale value can live.
            log.warning("cache delete %s failed: %s", key, exc)

    async def lock(self, key: str, ttl_ms: int) -> str | None:
        """Takes the lock `key` for at most `ttl_ms` (SET NX PX): its token, or None while
        another holds it. Redis down: OUTAGE_TOKEN, so that the caller goes ahead."""
        token = secrets.token_hex(16)
        try:
            taken = await self.redis.set(key, token, nx=True, px=ttl_ms)
        except _OUTAGE as exc:
            log.warning("cache lock %s failed, going ahead without it: %s", key, exc)
            return OUTAGE_TOKEN
        return token if taken else None

    async def unlock(self, key: str, token: str) -> None:
        if token == OUTAGE_TOKEN:
            return
        try:
            await self.redis.eval(_UNLOCK, 1, key, token)
        except _OUTAGE as exc:
            # The lock's expiry releases it.
            log.warning("cache unlock %s failed: %s", key, exc)

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
    return Cache(
        create_redis(settings),
        settings.cache_ttl_seconds,
        settings.cache_stale_seconds,
        settings.cache_lock_wait_seconds,
    )
