"""The app finds the Redis primary through Sentinel and follows a failover (issue 19).

Real processes from Debian's redis-server: a primary, its replica and three Sentinels
(redis-server --sentinel) on loopback, with ACL users as roles/redis gives them (the
default user off; the app, replication and Sentinel users; the app logs into the
Sentinels with its own user and password). The Sentinels notice a dead primary after
half a second, so a failover takes a few seconds here.
"""

import asyncio
import logging
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError
from redis import Redis
from redis.exceptions import RedisError

from shop.api.routes.products import POPULAR_CACHE_KEY
from shop.core.config import Settings
from tests.conftest import client_for, create_user, insert_products, make_settings, running_app
from tests.servers import RedisProcess, free_port, start_redis_process

SERVICE = "cache"
APP_USER, APP_PASSWORD = "shop", "app-password-for-tests"
REPLICATION_PASSWORD = "replication-password"
SENTINEL_PASSWORD = "sentinel-password"
ADMIN_PASSWORD = "admin-password"

# What the Redis servers accept: the app's user as roles/redis defines it, the
# replication user, the user the Sentinels monitor and reconfigure with (the commands
# Redis's Sentinel documentation lists), and an admin for the test's own checks.
REDIS_ACL = f"""
user default off resetpass resetkeys resetchannels -@all
user {APP_USER} on >{APP_PASSWORD} ~* &* +@all -@dangerous
user replication on >{REPLICATION_PASSWORD} +psync +replconf +ping
user sentinel on >{SENTINEL_PASSWORD} allchannels +multi +slaveof +ping +exec +subscribe \
+config|rewrite +role +publish +info +client|setname +client|kill +script|kill
user admin on >{ADMIN_PASSWORD} ~* &* +@all
masteruser replication
masterauth {REPLICATION_PASSWORD}
"""

# What the Sentinels accept: the app may ask for the primary (and ping), the Sentinels
# log into each other as `peer`.
SENTINEL_ACL = f"""
user default off resetpass -@all
user {APP_USER} on >{APP_PASSWORD} +ping +sentinel|masters \
+sentinel|get-master-addr-by-name
user peer on >{SENTINEL_PASSWORD} +@all
sentinel sentinel-user peer
sentinel sentinel-pass {SENTINEL_PASSWORD}
"""

FAILOVER_BOUND_SECONDS = 20.0  # from the kill to every Sentinel naming the replica
READ_BOUND_SECONDS = 1.0  # the longest a single read may take meanwhile


@dataclass
class Cluster:
    primary: RedisProcess
    replica: RedisProcess
    sentinels: list[RedisProcess]

    @property
    def sentinel_list(self) -> list[str]:
        return [f"127.0.0.1:{s.port}" for s in self.sentinels]

    def admin(self, node: RedisProcess) -> Redis:
        return Redis(port=node.port, username="admin", password=ADMIN_PASSWORD, socket_timeout=1)

    def sentinel_client(self, sentinel: RedisProcess) -> Redis:
        return Redis(
            port=sentinel.port,
            username="peer",
            password=SENTINEL_PASSWORD,
            socket_timeout=1,
            decode_responses=True,
        )

    def primary_ports(self) -> set[int | None]:
        """The primary's port as each Sentinel names it (None: no answer)."""
        ports: set[int | None] = set()
        for sentinel in self.sentinels:
            try:
                with self.sentinel_client(sentinel) as client:
                    address = client.sentinel_get_master_addr_by_name(SERVICE)
                ports.add(int(address[1]) if address else None)
            except (OSError, RedisError):
                ports.add(None)
        return ports


def _wait(condition, seconds: float, what: str) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.1)
    pytest.fail(f"not within {seconds:g} s: {what}")


def _ready(cluster: Cluster) -> bool:
    """Every Sentinel knows the replica and the two other Sentinels, and the replica is
    in sync: a failover can happen."""
    with cluster.admin(cluster.replica) as replica:
        if replica.info("replication").get("master_link_status") != "up":
            return False
    for sentinel in cluster.sentinels:
        with cluster.sentinel_client(sentinel) as client:
            state = client.sentinel_master(SERVICE)
        if state["num-slaves"] != 1 or state["num-other-sentinels"] != 2:
            return False
    return True


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    base = Path(tempfile.mkdtemp(prefix="shop-sentinel-"))
    started: list[RedisProcess] = []
    try:
        primary = start_redis_process(base, "primary", REDIS_ACL)
        started.append(primary)
        replica = start_redis_process(
            base, "replica", REDIS_ACL + f"replicaof 127.0.0.1 {primary.port}\n"
        )
        started.append(replica)
        sentinel_config = f"""
sentinel monitor {SERVICE} 127.0.0.1 {primary.port} 2
sentinel auth-user {SERVICE} sentinel
sentinel auth-pass {SERVICE} {SENTINEL_PASSWORD}
sentinel down-after-milliseconds {SERVICE} 500
sentinel failover-timeout {SERVICE} 3000
sentinel parallel-syncs {SERVICE} 1
{SENTINEL_ACL}"""
        sentinels = []
        for number in range(3):
            sentinels.append(
                start_redis_process(base, f"sentinel{number}", sentinel_config, sentinel=True)
            )
            started.append(sentinels[-1])
        result = Cluster(primary, replica, sentinels)
        _wait(lambda: _ready(result), 15, "the Sentinels know the replica and each other")
        yield result
    finally:
        for process in started:
            process.stop()
        shutil.rmtree(base, ignore_errors=True)


def _sentinel_settings(database_url: str, sentinels: list[str]) -> Settings:
    # redis_url's host and port lead nowhere: in Sentinel mode only its user, password
    # and database count.
    redis_url = f"redis://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{free_port()}/0"
    return make_settings(database_url, redis_url, redis_sentinels=sentinels)


async def _client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async for app in running_app(settings):
        async with client_for(app) as client:
            yield client


def _hits() -> float:
    return REGISTRY.get_sample_value("shop_cache_requests_total", {"result": "hit"}) or 0.0


async def _hit(client: httpx.AsyncClient) -> bool:
    """A read of the popular list, and whether it was a cache hit."""
    before = _hits()
    response = await client.get("/api/products/popular")
    assert response.status_code == 200, response.text
    return _hits() == before + 1


async def _load(
    client: httpx.AsyncClient,
    order: dict,
    headers: dict[str, str],
    stop: asyncio.Event,
    outcomes: list[tuple[str, int, float]],
) -> None:
    """Paced reads of the popular list, every tenth request an order, until `stop`:
    (method, status, seconds) of each."""
    count = 0
    while not stop.is_set():
        count += 1
        start = time.monotonic()
        if count % 10 == 0:
            response = await client.post("/api/orders", json=order, headers=headers)
        else:
            response = await client.get("/api/products/popular")
        outcomes.append((response.request.method, response.status_code, time.monotonic() - start))
        await asyncio.sleep(0.02)


async def test_the_app_follows_a_killed_primary_with_no_failed_read(
    database_url: str, cluster: Cluster
) -> None:
    settings = _sentinel_settings(database_url, cluster.sentinel_list)
    async for client in _client(settings):
        products = await insert_products(database_url, [(f"P{i}", "s", 100 + i) for i in range(3)])
        user = await create_user(client, "sentinel@example.com")
        order = {"items": [{"product_id": products[0], "quantity": 1}]}

        # Through Sentinel: the entry lands on the primary, the next read is a hit.
        assert not await _hit(client)
        with cluster.admin(cluster.primary) as primary:
            assert primary.exists(POPULAR_CACHE_KEY)
        assert await _hit(client)
        assert (await client.get("/health/ready")).json()["redis"] == "ok"

        # Reads (and now and then an order) run while the primary dies and the
        # Sentinels promote the replica.
        outcomes: list[tuple[str, int, float]] = []
        stop = asyncio.Event()
        task = asyncio.create_task(_load(client, order, user.headers, stop, outcomes))
        try:
            await asyncio.sleep(0.3)
            cluster.primary.kill()
            killed = time.monotonic()
            new_port = cluster.replica.port
            while cluster.primary_ports() != {new_port}:
                assert time.monotonic() - killed < FAILOVER_BOUND_SECONDS, "no promotion"
                await asyncio.sleep(0.2)
            promoted = time.monotonic() - killed
            await asyncio.sleep(1.0)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)

        failed = [o for o in outcomes if o[1] not in (200, 201)]
        reads = [o for o in outcomes if o[0] == "GET"]
        slowest = max(o[2] for o in outcomes)
        print(
            f"promotion {promoted:.1f} s after the kill; {len(reads)} reads, "
            f"{len(outcomes) - len(reads)} orders, {len(failed)} failed, slowest {slowest:.3f} s"
        )
        assert not failed
        assert slowest < READ_BOUND_SECONDS
        assert len(reads) > 20

        # On the new primary: a cached read is a hit there (the old one is dead), and an
        # order's invalidation deletes the entry there.
        with cluster.admin(cluster.replica) as new_primary:
            assert new_primary.info("replication")["role"] == "master"
            if not new_primary.exists(POPULAR_CACHE_KEY):
                assert not await _hit(client)
            assert new_primary.exists(POPULAR_CACHE_KEY)
            assert await _hit(client)
            response = await client.post("/api/orders", json=order, headers=user.headers)
            assert response.status_code == 201, response.text
            assert not new_primary.exists(POPULAR_CACHE_KEY)
        assert (await client.get("/health/ready")).json()["redis"] == "ok"


async def test_sentinels_unreachable_cost_a_cache_miss_not_an_error(database_url: str) -> None:
    settings = _sentinel_settings(database_url, [f"127.0.0.1:{free_port()}" for _ in range(3)])
    async for client in _client(settings):
        await insert_products(database_url, [("P", "s", 100)])
        for _ in range(3):
            start = time.monotonic()
            response = await client.get("/api/products/popular")
            assert response.status_code == 200, response.text
            assert time.monotonic() - start < READ_BOUND_SECONDS
        ready = (await client.get("/health/ready")).json()
        assert ready == {"status": "ok", "database": "ok", "redis": "error"}


@pytest.mark.parametrize(
    "sentinels",
    ["127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", "a b:26379", "h:1,h:1", ":26379"],
)
def test_a_bad_sentinel_list_is_refused_at_start(
    sentinels: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOP_REDIS_SENTINELS", sentinels)
    with pytest.raises(ValidationError, match="redis_sentinels"):
        Settings(_env_file=None)


def test_the_sentinel_list_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_REDIS_SENTINELS", "10.0.0.1:26379, sentinel-2:26380,[::1]:26379")
    monkeypatch.setenv("SHOP_REDIS_SENTINEL_SERVICE", "shopcache")
    settings = Settings(_env_file=None)
    assert settings.redis_sentinel_addresses == [
        ("10.0.0.1", 26379),
        ("sentinel-2", 26380),
        ("::1", 26379),
    ]
    assert settings.redis_sentinel_service == "shopcache"
    assert Settings(_env_file=None, redis_sentinels="").redis_sentinels == []


def test_asking_every_sentinel_must_fit_the_deadline() -> None:
    with pytest.raises(ValidationError, match="redis_sentinels"):
        Settings(
            _env_file=None,
            redis_sentinels=[f"h{i}:26379" for i in range(5)],
            redis_timeout_seconds=0.5,
        )


async def test_a_demoted_primary_turns_into_a_reconnect_not_an_error(
    database_url: str, cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """A switchover (SENTINEL FAILOVER) while the old primary keeps running, which then
    runs as a replica of the new one without its clients closed (as after a
    partition): the app's pooled connection to it gets READONLY on the next write, and
    that write (an order's invalidation) must still reach the new primary, at once."""
    settings = _sentinel_settings(database_url, cluster.sentinel_list)
    async for client in _client(settings):
        products = await insert_products(database_url, [("P", "s", 100)])
        user = await create_user(client, "switchover@example.com")
        assert not await _hit(client)

        with cluster.sentinel_client(cluster.sentinels[0]) as sentinel:
            sentinel.execute_command("SENTINEL", "FAILOVER", SERVICE)
        end = time.monotonic() + FAILOVER_BOUND_SECONDS
        while cluster.primary_ports() != {cluster.replica.port}:
            assert time.monotonic() < end, "no switchover"
            await asyncio.sleep(0.2)
        # What the Sentinels do to the old primary in the end, minus closing its clients.
        with cluster.admin(cluster.primary) as old:
            old.replicaof("127.0.0.1", cluster.replica.port)
        with cluster.admin(cluster.replica) as new_primary:
            assert new_primary.exists(POPULAR_CACHE_KEY)
            # The pooled connection still reads from the old primary, now a replica.
            assert await _hit(client)

            caplog.clear()
            order = {"items": [{"product_id": products[0], "quantity": 1}]}
            response = await client.post("/api/orders", json=order, headers=user.headers)
            assert response.status_code == 201, response.text
            assert not new_primary.exists(POPULAR_CACHE_KEY)
        assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        # Every later command goes to the new primary: the entry rebuilt there is a hit.
        assert not await _hit(client)
        assert await _hit(client)
        assert (await client.get("/health/ready")).json()["redis"] == "ok"
