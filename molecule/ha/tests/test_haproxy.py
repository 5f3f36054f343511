"""Behaviour of the haproxy role on the HA layout's app host (issue 18).

HAProxy on ha-app's loopback forwards 6433 to PgBouncer and 5433 to PostgreSQL on the
one db host whose Patroni answers 200 on /primary. Control IDs (haproxy-NN) name each
check.
"""

import csv
import io
import json
import time

import pytest
from stack_testinfra import hosts_in, unit_status

testinfra_hosts = ["ha-app"]
JOURNAL_UNITS = ["haproxy"]
ADMIN_SOCKET = "/run/haproxy/admin.sock"
CA = "/etc/ssl/stack/ca.crt"
LISTENERS = {"pgbouncer": 6433, "postgresql": 5433}
# Long enough for a leader election that a test caught halfway to settle.
SETTLE = 20.0

# Reads the admin socket with python3 (Ansible needs it on every host): no socat needed.
_SHOW_SERVERS = r"""
import json, socket
s = socket.socket(socket.AF_UNIX)
s.connect(%r)
s.sendall(b"show servers state\n")
out = b""
while chunk := s.recv(65536):
    out += chunk
rows = [line.split() for line in out.decode().splitlines()[2:] if line.strip()]
print(json.dumps([{"listener": r[1], "server": r[3], "up": r[5] == "2"} for r in rows]))
"""


def servers_up(host) -> dict[str, list[str]]:
    """Listener -> the servers HAProxy has up, from its admin socket."""
    out = host.run("python3 - <<'SHOW'\n%s\nSHOW" % (_SHOW_SERVERS % ADMIN_SOCKET))
    assert out.rc == 0, out.stderr
    up: dict[str, list[str]] = {name: [] for name in LISTENERS}
    for row in json.loads(out.stdout):
        if row["up"]:
            up.setdefault(row["listener"], []).append(row["server"])
    return up


def patroni_leaders(host) -> list[str]:
    """The db hosts whose Patroni answers 200 on /primary, asked from the app host over
    HTTPS verified with the stack CA (as HAProxy asks)."""
    leaders = []
    for db in hosts_in("db"):
        code = host.run(
            "curl -s -o /dev/null -w '%%{http_code}' --max-time 3 --cacert %s https://%s:8008/primary",
            CA,
            db,
        ).stdout.strip()
        assert code in ("200", "503"), f"{db}'s Patroni answered {code!r}"
        if code == "200":
            leaders.append(db)
    return leaders


def test_haproxy_01_service_runs_and_is_enabled(host):
    service = host.service("haproxy")
    assert service.is_running and service.is_enabled


def test_haproxy_02_listens_on_loopback_only(host):
    for port in LISTENERS.values():
        lines = [
            line for line in host.run("ss -Hltn sport = :%s", str(port)).stdout.splitlines() if line
        ]
        # Not on the private address, nor on every address.
        assert [line.split()[3] for line in lines] == [f"127.0.0.1:{port}"], lines


def test_haproxy_03_exactly_one_server_up_and_it_is_patronis_leader(host):
    deadline = time.monotonic() + SETTLE
    while True:
        leaders, up = patroni_leaders(host), servers_up(host)
        agreed = len(leaders) == 1 and all(up[name] == leaders for name in LISTENERS)
        if agreed or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(leaders) == 1, f"Patroni leaders: {leaders}"
    for name in LISTENERS:
        assert up[name] == leaders, f"{name}: HAProxy has {up[name]} up, Patroni leads on {leaders}"


@pytest.mark.parametrize(
    ("listener", "user", "vault"),
    [("pgbouncer", "shop_app", "db_app"), ("postgresql", "shop_owner", "db_owner")],
)
def test_haproxy_04_connections_reach_the_leader(host, hostvars, listener, user, vault):
    # verify-full against 127.0.0.1, a name of every host certificate (roles/common); a
    # server in recovery would be a replica.
    password = hostvars("ha-app")[f"vault_{vault}_password"]
    out = host.run(
        "PGPASSWORD=%s PGCONNECT_TIMEOUT=5 PGSSLMODE=verify-full PGSSLROOTCERT=%s "
        "psql -X --csv -h 127.0.0.1 -p %s -U %s -d shop -c %s",
        password,
        CA,
        str(LISTENERS[listener]),
        user,
        "SELECT pg_is_in_recovery() AS replica",
    )
    assert out.rc == 0, out.stderr
    assert list(csv.DictReader(io.StringIO(out.stdout))) == [{"replica": "f"}]


def test_haproxy_05_installed_configuration_passes_its_check(host):
    out = host.run("haproxy -c -f /etc/haproxy/haproxy.cfg")
    assert out.rc == 0, out.stdout + out.stderr


def test_haproxy_06_admin_socket_is_roots_only(host):
    socket = host.file(ADMIN_SOCKET)
    assert socket.is_socket
    assert (socket.user, socket.mode) == ("root", 0o600)


def test_haproxy_07_sandbox_keeps_only_the_capabilities_it_needs(host):
    master = unit_status(host, "haproxy")
    # CAP_KILL (5), CAP_SETGID (6), CAP_SETUID (7), CAP_SYS_CHROOT (18).
    assert int(master["CapBnd"], 16) == (1 << 5) | (1 << 6) | (1 << 7) | (1 << 18)
    assert master["NoNewPrivs"] == "1"
    worker = host.run("pgrep -u haproxy -x haproxy").stdout.split()
    assert worker, "no HAProxy worker runs as haproxy"
    status = host.file(f"/proc/{worker[0]}/status").content_string
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert int(fields["CapEff"], 16) == 0
    # Its chroot (/var/lib/haproxy) cannot be read from /proc here: that needs ptrace
    # rights over the worker, which root in the test container lacks (no CAP_SYS_PTRACE).
