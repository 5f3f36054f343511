"""Redis primary, replica and three Sentinels in the HA layout (issue 19, roles/redis).

The converged steady state, seen from the Docker host (docker exec): one primary on
ha-cache1 and a replica on ha-cache2 in sync with it, three Sentinels (ha-cache1, ha-cache2,
ha-app) that agree on the primary and can reach their quorum, the ACL users doing only
their job, and TLS only on Redis's and Sentinel's ports. The failover itself is tested
elsewhere. Control IDs (redis-ha-NN) name each check.

Passwords reach redis-cli through REDISCLI_AUTH, read from `docker exec -i`'s standard
input inside the container: they are on no command line, here or there.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

testinfra_hosts = ["ha-cache1"]
JOURNAL_UNITS = ["redis-server", "redis-sentinel"]

CACHES = ("ha-cache1", "ha-cache2")
SENTINELS = ("ha-cache1", "ha-cache2", "ha-app")
CA = "/etc/ssl/stack/ca.crt"
# Trusted by every Debian host, but not the stack CA: a client that does not trust it.
SYSTEM_CAS = "/etc/ssl/certs/ca-certificates.crt"
# Ports and the service name from their one home, roles/stack.
_STACK = yaml.safe_load(
    (Path(__file__).resolve().parents[3] / "roles/stack/defaults/main.yml").read_text()
)
REDIS_PORT = int(_STACK["redis_port"])
SENTINEL_PORT = int(_STACK["redis_sentinel_port"])
SERVICE = str(_STACK["redis_sentinel_service"])
IPV4 = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")


def rcli(
    container: str,
    *args: str,
    login: tuple[str, str] | None = None,
    port: int = REDIS_PORT,
    target: str = "127.0.0.1",
    ca: str | None = CA,
) -> subprocess.CompletedProcess:
    """redis-cli in `container` against target:port; TLS verified with `ca` (None:
    cleartext). `login` is (user, password): the password goes in through standard input."""
    user, password = login or (None, "")
    parts = ["timeout 10 redis-cli --no-auth-warning"]
    if ca:
        parts.append(f"--tls --cacert {ca}")
    parts.append(f"-h {target} -p {port}")
    if user:
        parts.append(f"--user {shlex.quote(user)}")
    parts += [shlex.quote(arg) for arg in args]
    line = "exec " + " ".join(parts)
    if user:
        line = "IFS= read -r REDISCLI_AUTH && export REDISCLI_AUTH && " + line
    return subprocess.run(
        ["docker", "exec", "-i", container, "sh", "-c", line],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def sh(container: str, command: str) -> str:
    proc = subprocess.run(
        ["docker", "exec", container, "sh", "-c", command],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, f"{container}: {command}: {proc.stdout}{proc.stderr}"
    return proc.stdout


def address(container: str) -> str:
    """The container's private address (the one Redis and Sentinel bind and announce)."""
    return sh(container, "hostname -I").split()[0]


def pairs(text: str) -> dict[str, str]:
    """redis-cli's flat name/value lines (SENTINEL MASTER) as a dict."""
    lines = text.splitlines()
    return dict(zip(lines[0::2], lines[1::2], strict=False))


def info(text: str) -> dict[str, str]:
    """INFO's name:value lines as a dict."""
    return dict(line.strip().split(":", 1) for line in text.splitlines() if ":" in line)


@pytest.fixture(scope="module")
def users(hostvars) -> dict[str, tuple[str, str]]:
    """role -> (user name, password), from the scenario's inventory (role defaults for names)."""
    v = hostvars("ha-cache1")
    return {
        "admin": (v.get("redis_admin_user", "admin"), v["vault_redis_admin_password"]),
        "app": (v.get("redis_app_user", "shop"), v["vault_redis_app_password"]),
        "sentinel": (v.get("redis_sentinel_user", "sentinel"), v["vault_redis_sentinel_password"]),
        "replica": (
            v.get("redis_replication_user", "replica"),
            v["vault_redis_replication_password"],
        ),
    }


def as_user(users, role: str) -> dict[str, tuple[str, str]]:
    """rcli's keyword argument that logs in as one of the users."""
    return {"login": users[role]}


@pytest.fixture(scope="module")
def addresses() -> dict[str, str]:
    return {name: address(name) for name in set(CACHES + SENTINELS)}


@pytest.fixture(scope="module")
def primary(users, addresses) -> str:
    """The cache host the Sentinels name as primary, asked on ha-app's Sentinel."""
    out = rcli(
        "ha-app",
        "SENTINEL",
        "get-master-addr-by-name",
        SERVICE,
        port=SENTINEL_PORT,
        **as_user(users, "admin"),
    )
    found = out.stdout.split()
    assert len(found) == 2, out.stdout + out.stderr
    by_address = {addresses[c]: c for c in CACHES}
    assert found[0] in by_address, f"Sentinel names {found[0]}, no cache host: {addresses}"
    return by_address[found[0]]


def test_redis_ha_01_servers_on_cache_hosts_sentinels_on_sentinel_hosts():
    for name in CACHES:
        assert sh(name, "systemctl is-active redis-server").strip() == "active", name
        assert sh(name, "systemctl is-enabled redis-server").strip() == "enabled", name
    for name in SENTINELS:
        assert sh(name, "systemctl is-active redis-sentinel").strip() == "active", name
        assert sh(name, "systemctl is-enabled redis-sentinel").strip() == "enabled", name
    # ha-app runs a Sentinel only: nothing of Redis's own listens there.
    assert sh("ha-app", f"ss -Hltn 'sport = :{REDIS_PORT}'").strip() == ""


def test_redis_ha_02_exactly_one_primary_the_first_cache_host(users, primary):
    roles = {name: rcli(name, "ROLE", **as_user(users, "admin")).stdout.split() for name in CACHES}
    primaries = [name for name, role in roles.items() if role[:1] == ["master"]]
    assert primaries == [primary], roles
    # What the last Ansible run found (roles/redis writes replicaof only on the others).
    # After a failover it names another host until the next run: the files then lag on
    # purpose, and which host is primary is the failover test's business.
    recorded = sh("ha-cache1", "cat /etc/redis/replication.conf")
    if re.search(r"^replicaof ", recorded, re.MULTILINE):
        pytest.skip(f"a failover ran before this test; the primary is {primary}")
    # A new cluster: the role made the first cache host the primary, and it still is.
    assert primary == "ha-cache1"


def test_redis_ha_03_replica_follows_the_primary_in_sync(users, addresses, primary):
    replica = next(name for name in CACHES if name != primary)
    admin = as_user(users, "admin")
    on_replica = info(rcli(replica, "INFO", "replication", **admin).stdout)
    assert on_replica.get("role") == "slave", on_replica
    assert on_replica.get("master_host") == addresses[primary], on_replica
    assert on_replica.get("master_link_status") == "up", on_replica
    assert on_replica.get("master_sync_in_progress") == "0", on_replica
    on_primary = info(rcli(primary, "INFO", "replication", **admin).stdout)
    assert on_primary.get("connected_slaves") == "1", on_primary
    assert f"ip={addresses[replica]}," in on_primary.get("slave0", ""), on_primary
    assert "state=online" in on_primary.get("slave0", ""), on_primary
    # A write on the primary reaches the replica: WAIT says one replica acknowledged it.
    key = "redis-ha-03"
    assert rcli(primary, "SET", key, "synced", "EX", "60", **admin).stdout.strip() == "OK"
    assert rcli(primary, "WAIT", "1", "5000", **admin).stdout.strip() == "1"
    assert rcli(replica, "GET", key, **admin).stdout.strip() == "synced"


def test_redis_ha_04_three_sentinels_agree_and_reach_quorum(users, addresses, primary):
    admin = as_user(users, "admin")
    for name in SENTINELS:
        named = rcli(
            name, "SENTINEL", "get-master-addr-by-name", SERVICE, port=SENTINEL_PORT, **admin
        ).stdout.split()
        assert named == [addresses[primary], str(REDIS_PORT)], (name, named)
        quorum = rcli(name, "SENTINEL", "CKQUORUM", SERVICE, port=SENTINEL_PORT, **admin)
        assert quorum.stdout.startswith("OK 3 usable Sentinels"), (name, quorum.stdout)
        state = pairs(rcli(name, "SENTINEL", "MASTER", SERVICE, port=SENTINEL_PORT, **admin).stdout)
        assert state.get("num-other-sentinels") == "2", (name, state)
        assert state.get("num-slaves") == "1", (name, state)
        assert state.get("quorum") == "2", (name, state)
        assert "s_down" not in state.get("flags", "") and "o_down" not in state.get("flags", "")


def test_redis_ha_05_sentinels_know_addresses_never_names(users, addresses):
    admin = as_user(users, "admin")
    for name in SENTINELS:
        state = pairs(rcli(name, "SENTINEL", "MASTER", SERVICE, port=SENTINEL_PORT, **admin).stdout)
        assert IPV4.match(state.get("ip", "")), (name, state)
        peers = rcli(name, "SENTINEL", "SENTINELS", SERVICE, port=SENTINEL_PORT, **admin).stdout
        # Each peer's fields as name/value lines, one peer after the other.
        lines = peers.splitlines()
        announced = {v for k, v in zip(lines[0::2], lines[1::2], strict=False) if k == "ip"}
        others = {addresses[s] for s in SENTINELS if s != name}
        assert announced == others, (name, announced, others)


def test_redis_ha_06_no_login_no_answer_on_either_port():
    # The default user is off on Redis and on Sentinel: even PING needs a login.
    for name, port, command in [
        ("ha-cache1", REDIS_PORT, ["PING"]),
        ("ha-cache1", REDIS_PORT, ["GET", "redis-ha-03"]),
        ("ha-app", SENTINEL_PORT, ["PING"]),
        ("ha-app", SENTINEL_PORT, ["SENTINEL", "get-master-addr-by-name", SERVICE]),
    ]:
        out = rcli(name, *command, port=port).stdout
        assert "NOAUTH" in out, (name, port, command, out)


def test_redis_ha_07_app_user_cannot_reconfigure_redis_or_sentinel(users, primary):
    app = as_user(users, "app")
    for command in (["REPLICAOF", "NO", "ONE"], ["CONFIG", "SET", "maxmemory", "1"]):
        out = rcli(primary, *command, **app)
        assert "NOPERM" in out.stdout + out.stderr, (command, out.stdout)
    # On Sentinel the app may ask where the primary is, and nothing else of weight.
    asked = rcli(
        "ha-app", "SENTINEL", "get-master-addr-by-name", SERVICE, port=SENTINEL_PORT, **app
    )
    assert len(asked.stdout.split()) == 2, asked.stdout + asked.stderr
    for command in (
        ["SENTINEL", "FAILOVER", SERVICE],
        ["SENTINEL", "SET", SERVICE, "quorum", "1"],
        ["SENTINEL", "RESET", "*"],
        ["ACL", "LIST"],
    ):
        out = rcli("ha-app", *command, port=SENTINEL_PORT, **app)
        assert "NOPERM" in out.stdout + out.stderr, (command, out.stdout)


def test_redis_ha_08_sentinel_and_replication_users_cannot_read_keys(users, primary):
    for role in ("sentinel", "replica"):
        login = as_user(users, role)
        for command in (["GET", "redis-ha-03"], ["KEYS", "*"], ["SET", "x", "y"]):
            out = rcli(primary, *command, **login)
            assert "NOPERM" in out.stdout + out.stderr, (role, command, out.stdout)
        assert rcli(primary, "PING", **login).stdout.strip() == "PONG", role
    # What Sentinel needs of Redis still works for its user.
    assert rcli(primary, "ROLE", **as_user(users, "sentinel")).stdout.split()[:1] == ["master"]


def test_redis_ha_09_tls_only_on_both_ports(users, addresses):
    admin = as_user(users, "admin")
    for name, port in [(c, REDIS_PORT) for c in CACHES] + [(s, SENTINEL_PORT) for s in SENTINELS]:
        target = addresses[name]
        verified = rcli("ha-app", "PING", port=port, target=target, **admin)
        assert verified.stdout.strip() == "PONG", (name, port, verified.stdout + verified.stderr)
        cleartext = rcli("ha-app", "PING", port=port, target=target, ca=None, **admin)
        assert "PONG" not in cleartext.stdout, (name, port, "answers in cleartext")
        untrusted = rcli("ha-app", "PING", port=port, target=target, ca=SYSTEM_CAS, **admin)
        assert "PONG" not in untrusted.stdout, (name, port, "trusted without the stack CA")


def test_redis_ha_10_config_rewrite_cannot_touch_ansibles_files(users, primary):
    # Sentinel sends CONFIG REWRITE on a failover: it fails, so redis.conf stays Ansible's.
    before = sh(primary, "sha256sum /etc/redis/redis.conf /etc/redis/replication.conf")
    out = rcli(primary, "CONFIG", "REWRITE", **as_user(users, "admin"))
    assert "OK" not in out.stdout.split(), out.stdout
    assert sh(primary, "sha256sum /etc/redis/redis.conf /etc/redis/replication.conf") == before
    assert sh(primary, "stat -c '%U:%G %a' /etc/redis").strip() == "root:redis 750"


def test_redis_ha_11_sentinel_writes_its_live_copy_never_the_source(addresses, primary):
    for name in SENTINELS:
        source = sh(name, "stat -c '%U:%G %a' /etc/redis/sentinel-stack.conf").strip()
        assert source == "root:redis 640", (name, source)
        monitor = sh(name, "grep '^sentinel monitor ' /etc/redis/sentinel-stack.conf").split()
        assert monitor[2:] == [SERVICE, addresses[primary], str(REDIS_PORT), "2"], (name, monitor)
        # Sentinel has written its state (epochs, peers) into the live copy.
        live = sh(name, "cat /etc/redis/sentinel/sentinel.conf")
        assert "sentinel known-sentinel" in live or "sentinel known-replica" in live, name
        unit = sh(name, "systemctl show -p ExecStart --value redis-sentinel")
        assert "/etc/redis/sentinel/sentinel.conf" in unit, (name, unit)
