"""Sandboxing of the redis role's units (issue 15, redis_sandbox_enabled).

Debian's redis-server unit comes sandboxed; the role's drop-in closes what it leaves open
and sandboxes the exporter. Each unit's `systemd-analyze security` score stays under the
issue's ceiling, and Redis and the exporter still do their work inside their sandboxes.
"""

from redis_client import cli, login_file
from stack_testinfra import exposure, hosts_in, unit_status

testinfra_hosts = hosts_in("cache")
JOURNAL_UNITS = ["redis-server", "prometheus-redis-exporter"]
APP = hosts_in("app")[0]


def test_sandbox_redis_exposure_at_most_3_5(host):
    assert host.file("/etc/systemd/system/redis-server.service.d/sandbox.conf").exists
    assert exposure(host, "redis-server") <= 3.5


def test_sandbox_redis_exporter_exposure_at_most_2_0(host):
    assert exposure(host, "prometheus-redis-exporter") <= 2.0


def test_sandbox_redis_answers_its_users_over_the_network(host, scenario_host, hostvars):
    own = hostvars(host.backend.get_hostname())
    login = login_file(APP, "shop", own["vault_redis_app_password"])
    out = cli(scenario_host(APP), "PING", login=("shop", login), target=host.backend.get_hostname())
    assert out.rc == 0 and out.stdout.strip() == "PONG", out.stdout + out.stderr


def test_sandbox_redis_writes_its_data_directory_only(host, hostvars):
    own = hostvars(host.backend.get_hostname())
    # Debian's unit lets Redis write /etc/redis; the drop-in takes that away.
    writable = host.run("systemctl show -p ReadWritePaths --value redis-server").stdout
    assert "/etc/redis" not in writable and "/var/lib/redis" in writable
    # A snapshot (admin SAVE, even with persistence off) lands in /var/lib/redis, private
    # to the redis user (UMask=0077).
    dump = "/var/lib/redis/dump.rdb"
    host.run("rm -f %s", dump)
    try:
        login = login_file(host.backend.get_hostname(), "admin", own["vault_redis_admin_password"])
        out = cli(host, "SAVE", login=("admin", login))
        assert out.stdout.strip() == "OK", out.stdout + out.stderr
        snapshot = host.file(dump)
        assert snapshot.exists and snapshot.user == "redis" and snapshot.mode == 0o600
    finally:
        # Redis would load it at its next start, and this cache starts empty.
        host.run("rm -f %s", dump)


def test_sandbox_redis_exporter_scrapes_inside_its_sandbox(host):
    proc = unit_status(host, "prometheus-redis-exporter")
    assert int(proc["CapEff"], 16) == 0 and int(proc["CapBnd"], 16) == 0
    assert proc["NoNewPrivs"] == "1"
    out = host.run("curl -sf -m 5 http://%s:9121/metrics", host.backend.get_hostname())
    assert out.rc == 0, out.stderr
    assert "\nredis_up 1\n" in out.stdout
