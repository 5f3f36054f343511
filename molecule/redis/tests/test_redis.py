"""Behaviour of the redis role: a cache host used by an app host over the network.

Control IDs (redis-NN) name each check. The app host talks to Redis with redis-cli the
way the app would; the monitoring host scrapes the exporter and is no Redis client.
"""

import json
import re

import pytest
from redis_client import cli, login_file
from stack_testinfra import assert_refused, converge, hosts_in

testinfra_hosts = hosts_in("cache")
JOURNAL_UNITS = ["redis-server", "prometheus-redis-exporter"]
CACHE, APP, MON = "redis-cache", "redis-app", "redis-mon"
TCP_PROBE = "timeout 4 bash -c 'exec 3<>/dev/tcp/{}/{}'"
# Runs that must fail apply only this role on the cache host: the other roles and hosts
# were proved by the converge, and the machine is shared with other scenarios.
REDIS_ONLY = ("--limit", CACHE, "-e", '{"scenario_roles": ["redis"]}')


@pytest.fixture(scope="module")
def cache_vars(hostvars):
    return hostvars(CACHE)


@pytest.fixture(scope="module")
def logins(cache_vars):
    """Login files (REDISCLI_AUTH) on the hosts that use them, by name."""
    app, admin = cache_vars["vault_redis_app_password"], cache_vars["vault_redis_admin_password"]
    return {
        "app": login_file(APP, "shop", app),
        "wrong": login_file(APP, "shop-wrong", "not-" + app),
        "app-on-cache": login_file(CACHE, "shop", app),
        "admin": login_file(CACHE, "admin", admin),
    }


@pytest.fixture(scope="module")
def app_cli(scenario_host, logins):
    """redis-cli on the app host as the app's user, over the network."""

    def run(*args, login="app"):
        return cli(scenario_host(APP), *args, login=("shop", logins[login]), target=CACHE)

    return run


@pytest.fixture(scope="module")
def admin_cli(scenario_host, logins):
    """redis-cli on the cache host itself as the admin user."""

    def run(*args, stdin=None):
        return cli(scenario_host(CACHE), *args, login=("admin", logins["admin"]), stdin=stdin)

    return run


def info(admin_cli, section: str) -> dict[str, str]:
    out = admin_cli("INFO", section).stdout
    return dict(line.split(":", 1) for line in out.splitlines() if ":" in line)


def test_redis_01_unauthenticated_and_wrong_password_refused(scenario_host, app_cli):
    app = scenario_host(APP)
    assert cli(app, "PING", target=CACHE).stdout.startswith("NOAUTH"), "no login needed"
    assert cli(app, "GET", "anything", target=CACHE).stdout.startswith("NOAUTH")
    # The default user is off: not even an empty password logs in as it.
    assert "WRONGPASS" in cli(app, "AUTH", "default", "", target=CACHE).stdout
    out = app_cli("PING", login="wrong")
    assert "WRONGPASS" in out.stderr, out.stderr
    assert out.stdout.startswith("NOAUTH"), "PING answered after a failed login"


def test_redis_02_app_user_sets_and_gets_over_the_network(app_cli):
    assert app_cli("SET", "redis-02", "cached value", "EX", "300").stdout.strip() == "OK"
    assert app_cli("GET", "redis-02").stdout.strip() == "cached value"
    assert 0 < int(app_cli("TTL", "redis-02").stdout) <= 300
    assert app_cli("DEL", "redis-02").stdout.strip() == "1"


@pytest.mark.parametrize(
    "command",
    [
        ["FLUSHALL"],
        ["FLUSHDB"],
        ["CONFIG", "GET", "maxmemory"],
        ["CONFIG", "SET", "maxmemory", "0"],
        ["KEYS", "*"],
        ["DEBUG", "SLEEP", "0"],
        ["ACL", "LIST"],
        ["SHUTDOWN", "NOSAVE"],
    ],
    ids=lambda command: "-".join(command[:2]).lower(),
)
def test_redis_03_app_user_denied_dangerous_commands(app_cli, admin_cli, command):
    assert app_cli("SET", "redis-03", "survives").stdout.strip() == "OK"
    out = app_cli(*command)
    # DEBUG is also switched off server-wide (enable-debug-command no), which Redis
    # checks before the ACL; the ACL's own verdict is asked for with ACL DRYRUN.
    refused = ("NOPERM", "ERR DEBUG command not allowed")
    assert out.stdout.startswith(refused), out.stdout + out.stderr
    verdict = admin_cli("ACL", "DRYRUN", "shop", *command).stdout.strip()
    assert "no permissions" in verdict, verdict
    assert app_cli("GET", "redis-03").stdout.strip() == "survives"


def test_redis_04_maxmemory_from_ram_and_lru_policy_are_live(host, admin_cli, cache_vars):
    meminfo = host.file("/proc/meminfo").content_string
    memtotal_mb = int(re.search(r"^MemTotal:\s+(\d+) kB", meminfo, re.M)[1]) // 1024
    expected_mb = memtotal_mb * cache_vars["redis_maxmemory_percent"] // 100
    maxmemory = admin_cli("CONFIG", "GET", "maxmemory").stdout.split()
    assert maxmemory == ["maxmemory", str(expected_mb * 1024 * 1024)]
    policy = admin_cli("CONFIG", "GET", "maxmemory-policy").stdout.split()
    assert policy == ["maxmemory-policy", "allkeys-lru"]


def test_redis_05_full_cache_evicts_instead_of_refusing_writes(scenario_host, admin_cli, logins):
    """Shrink the cap for a moment and overfill it as the app user: every write works."""
    before = admin_cli("CONFIG", "GET", "maxmemory").stdout.split()[1]
    evicted_before = int(info(admin_cli, "stats")["evicted_keys"])
    writes = "python3 -c \"[print(f'SET fill:{i} ' + 'x' * 4000) for i in range(3000)]\""
    try:
        assert admin_cli("CONFIG", "SET", "maxmemory", "4mb").stdout.strip() == "OK"
        out = cli(
            scenario_host(CACHE), "--pipe", login=("shop", logins["app-on-cache"]), stdin=writes
        )
        assert "errors: 0, replies: 3000" in out.stdout, out.stdout + out.stderr
        assert int(info(admin_cli, "stats")["evicted_keys"]) > evicted_before
        assert int(info(admin_cli, "memory")["used_memory"]) <= 5 * 1024 * 1024
    finally:
        admin_cli("CONFIG", "SET", "maxmemory", before)
        admin_cli("FLUSHALL")


def test_redis_06_persistence_off(admin_cli):
    assert admin_cli("CONFIG", "GET", "save").stdout.split() == ["save"]
    assert admin_cli("CONFIG", "GET", "appendonly").stdout.split() == ["appendonly", "no"]


def test_redis_07_listens_on_private_address_and_loopback_only(host, admin_cli, cache_vars):
    private = host.interface("eth0").addresses[0]
    listening = host.run("ss -ltnH 'sport = :6379'").stdout.split("\n")
    local = {line.split()[3] for line in listening if line.strip()}
    assert local == {f"{private}:6379", "127.0.0.1:6379"}
    assert admin_cli("CONFIG", "GET", "protected-mode").stdout.split() == [
        "protected-mode",
        "yes",
    ]


def test_redis_08_firewall_lets_app_hosts_in_and_keeps_others_out(scenario_host):
    assert scenario_host(APP).run(TCP_PROBE.format(CACHE, 6379)).rc == 0
    # The monitoring host is not a Redis client: its packets are dropped (timeout).
    assert scenario_host(MON).run(TCP_PROBE.format(CACHE, 6379)).rc == 124


def test_redis_09_exporter_scraped_by_monitoring_host(scenario_host, admin_cli):
    out = scenario_host(MON).run(f"curl -sf -m 10 http://{CACHE}:9121/metrics")
    assert out.rc == 0, out.stderr
    metrics = dict(
        line.rsplit(" ", 1) for line in out.stdout.splitlines() if not line.startswith("#")
    )
    assert metrics["redis_up"] == "1"
    maxmemory = admin_cli("CONFIG", "GET", "maxmemory").stdout.split()[1]
    assert float(metrics["redis_memory_max_bytes"]) == float(maxmemory)
    # The app host is not a monitoring host.
    assert scenario_host(APP).run(TCP_PROBE.format(CACHE, 9121)).rc == 124


@pytest.mark.parametrize(
    ("command", "allowed"),
    [
        ("INFO", True),
        ("SLOWLOG GET", True),
        ("LATENCY LATEST", True),
        ("CONFIG GET maxmemory", False),
        ("GET anykey", False),
        ("FLUSHALL", False),
        ("CLIENT KILL ID 1", False),
    ],
)
def test_redis_10_exporter_user_reads_stats_only(admin_cli, command, allowed):
    out = admin_cli("ACL", "DRYRUN", "exporter", *command.split()).stdout.strip()
    assert (out == "OK") == allowed, out


def test_redis_11_secrets_not_readable_or_in_plain_text(host, cache_vars):
    for path in ("/etc/redis/redis.conf", "/etc/redis/users.conf"):
        config = host.file(path)
        assert (config.user, config.group, config.mode) == ("root", "redis", 0o640), path
    users = host.file("/etc/redis/users.conf").content_string
    for name in ("app", "exporter", "admin"):
        assert cache_vars[f"vault_redis_{name}_password"] not in users
    exporter_env = host.file("/etc/default/prometheus-redis-exporter")
    assert (exporter_env.user, exporter_env.group, exporter_env.mode) == (
        "root",
        "prometheus",
        0o640,
    )
    pid = host.run("systemctl show -p MainPID --value prometheus-redis-exporter").stdout.strip()
    cmdline = host.file(f"/proc/{pid}/cmdline").content_string
    assert cache_vars["vault_redis_exporter_password"] not in cmdline
    # Nobody else on the host can read them.
    assert host.run("runuser -u nobody -- cat /etc/redis/users.conf").rc != 0


def test_redis_12_unit_keeps_its_sandbox_except_user_namespace_in_containers(host):
    in_container = host.run("systemd-detect-virt --container").rc == 0
    props = dict(
        line.split("=", 1)
        for line in host.run(
            "systemctl show -p PrivateUsers -p ProtectSystem -p NoNewPrivileges "
            "-p ProtectKernelTunables -p SystemCallFilter -p ActiveState redis-server"
        ).stdout.splitlines()
    )
    assert props["ActiveState"] == "active"
    assert props["PrivateUsers"] == ("no" if in_container else "yes")
    assert props["ProtectSystem"] == "strict"
    assert props["NoNewPrivileges"] == "yes"
    assert props["ProtectKernelTunables"] == "yes"
    assert props["SystemCallFilter"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("redis_maxmemory_mb=-5", "redis_maxmemory_mb must be >= 1"),
        ("redis_maxmemory_mb=99999999", "<= the host's RAM"),
        ("redis_tcp_backlog=5000", "<= common_sysctl_somaxconn (4096)"),
        ("redis_maxmemory_policy=allkeys-lfru", "redis_maxmemory_policy must be one of"),
        ("vault_redis_app_password=short", "set vault_redis_app_password"),
        ("redis_app_acl='nopass +@all'", "may not switch the user on/off or set passwords"),
    ],
)
def test_redis_13_bad_variables_fail_before_any_change(extra, message):
    assert_refused(*REDIS_ONLY, "-e", extra, message=message)


def test_redis_14_setting_redis_rejects_leaves_running_server_alone(host, admin_cli):
    before = host.file("/etc/redis/redis.conf").sha256sum
    pid = host.run("systemctl show -p MainPID --value redis-server").stdout.strip()
    bad = {"redis_config_extra": {"maxmemory-polcy": "allkeys-lru"}}
    run = converge(*REDIS_ONLY, "-e", json.dumps(bad))
    assert run.returncode != 0
    assert "rejected the configuration" in run.output, run.output[-3000:]
    assert "maxmemory-polcy" in run.output
    assert not run.any_changed, run.changed
    assert host.file("/etc/redis/redis.conf").sha256sum == before
    assert host.run("systemctl show -p MainPID --value redis-server").stdout.strip() == pid
    assert admin_cli("PING").stdout.strip() == "PONG"
