"""Redis over TLS only (issue 16, redis_tls_enabled): the app host reaches the cache host
with TLS verified by the stack CA (roles/common), cleartext is refused, a client that does
not trust the CA or dials a name the certificate does not hold fails, and the exporter
follows. Control IDs: redis-tls-NN.
"""

import json

import pytest
from redis_client import CA, SYSTEM_CAS, cli, login_file
from stack_testinfra import converge, hosts_in

testinfra_hosts = hosts_in("cache")
JOURNAL_UNITS = ["redis-server", "prometheus-redis-exporter"]
CACHE, APP, MON = "redis-cache", "redis-app", "redis-mon"
REDIS_ONLY = ("--limit", CACHE, "-e", '{"scenario_roles": ["redis"]}')

# Python's ssl on the app host, as redis-py uses it: verify the chain with the CA and the
# name dialled against the certificate. Prints one JSON line per name.
HANDSHAKE = r"""
import json, socket, ssl, sys
address, ca, names = sys.argv[1], sys.argv[2], sys.argv[3:]
out = {}
for name in names:
    context = ssl.create_default_context(cafile=ca)
    try:
        with socket.create_connection((address, 6379), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname=name) as tls:
                out[name] = tls.version()
    except (ssl.SSLError, OSError) as error:
        out[name] = "refused: " + str(error)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def app_login(hostvars):
    return ("shop", login_file(APP, "shop", hostvars(CACHE)["vault_redis_app_password"]))


@pytest.fixture(scope="module")
def admin_login(hostvars):
    return ("admin", login_file(CACHE, "admin", hostvars(CACHE)["vault_redis_admin_password"]))


def cache_address(scenario_host) -> str:
    return scenario_host(CACHE).interface("eth0").addresses[0]


def test_redis_tls_01_cleartext_connection_refused(scenario_host, app_login, admin_login):
    """No cleartext port: a client without TLS gets no answer, logged in or not."""
    for host, target, login in (
        (scenario_host(APP), CACHE, app_login),
        (scenario_host(CACHE), "127.0.0.1", admin_login),
    ):
        out = cli(host, "PING", login=login, target=target, tls=None)
        assert "PONG" not in out.stdout, f"cleartext answered on {target}: {out.stdout}"
        assert out.rc != 0 or "reset" in out.stderr.lower(), out.stdout + out.stderr


def test_redis_tls_02_tls_verified_with_the_stack_ca_answers(scenario_host, app_login):
    """By inventory name and by private address: the names the app and peers use."""
    for target in (CACHE, cache_address(scenario_host)):
        out = cli(scenario_host(APP), "PING", login=app_login, target=target)
        assert out.rc == 0 and out.stdout.strip() == "PONG", out.stdout + out.stderr


def test_redis_tls_03_client_that_does_not_trust_the_ca_fails(scenario_host, app_login):
    out = cli(scenario_host(APP), "PING", login=app_login, target=CACHE, tls=SYSTEM_CAS)
    assert "PONG" not in out.stdout
    assert "certificate verify failed" in out.stderr, out.stdout + out.stderr


def test_redis_tls_04_certificate_names_checked_and_modern_protocols(scenario_host):
    """What redis-py does with ssl_check_hostname: the right names pass, another fails."""
    address = cache_address(scenario_host)
    out = scenario_host(APP).run(
        "python3 -c %s %s %s %s %s %s",
        HANDSHAKE,
        address,
        CA,
        CACHE,
        address,
        "not-the-cache.example",
    )
    assert out.rc == 0, out.stderr
    result = json.loads(out.stdout)
    assert result[CACHE] in ("TLSv1.2", "TLSv1.3"), result
    assert result[address] in ("TLSv1.2", "TLSv1.3"), result
    assert result["not-the-cache.example"].startswith("refused"), result
    assert "certificate verify failed" in result["not-the-cache.example"], result


def test_redis_tls_05_live_settings(scenario_host, admin_login):
    def live(name: str) -> list[str]:
        return cli(scenario_host(CACHE), "CONFIG", "GET", name, login=admin_login).stdout.split()

    assert live("port") == ["port", "0"]
    assert live("tls-port") == ["tls-port", "6379"]
    assert live("tls-auth-clients") == ["tls-auth-clients", "no"]
    assert live("tls-protocols") == ["tls-protocols", "TLSv1.2", "TLSv1.3"]


def test_redis_tls_06_exporter_follows_over_tls(host, scenario_host):
    settings = host.file("/etc/default/prometheus-redis-exporter").content_string
    assert 'REDIS_ADDR="rediss://127.0.0.1:6379"' in settings
    assert f"--tls-ca-cert-file={CA}" in settings
    # No cleartext port exists, so redis_up 1 means the exporter's TLS connection works.
    out = scenario_host(MON).run(f"curl -sf -m 10 http://{CACHE}:9121/metrics")
    assert out.rc == 0, out.stderr
    assert "\nredis_up 1\n" in out.stdout


def test_redis_tls_07_key_copy_readable_by_redis_only(host):
    key = host.file("/etc/redis/tls/redis.key")
    assert (key.user, key.group, key.mode) == ("root", "redis", 0o640)
    assert host.file("/etc/redis/tls").mode == 0o750
    assert host.run("runuser -u nobody -- cat /etc/redis/tls/redis.key").rc != 0
    # Redis serves the host's certificate from the stack CA, as roles/common issued it.
    served = host.file("/etc/redis/tls/redis.crt").sha256sum
    assert served == host.file("/etc/ssl/stack/host.crt").sha256sum


def test_redis_tls_08_key_that_does_not_match_refused_before_any_change(host, admin_login):
    other = "/root/redis-tls-08.key"
    host.run("umask 077 && openssl ecparam -name prime256v1 -genkey -noout -out %s", other)
    before = host.file("/etc/redis/tls/redis.key").sha256sum
    pid = host.run("systemctl show -p MainPID --value redis-server").stdout.strip()
    try:
        run = converge(*REDIS_ONLY, "-e", json.dumps({"redis_tls_key": other}))
    finally:
        host.run("rm -f %s", other)
    assert run.returncode != 0
    assert "key values mismatch" in run.output, run.output[-3000:]
    assert not run.any_changed, run.changed
    assert host.file("/etc/redis/tls/redis.key").sha256sum == before
    assert host.run("systemctl show -p MainPID --value redis-server").stdout.strip() == pid
    assert cli(host, "PING", login=admin_login).stdout.strip() == "PONG"
