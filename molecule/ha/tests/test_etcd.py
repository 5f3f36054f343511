"""etcd, the HA layout's configuration store for Patroni (issue 18, roles/etcd).

Three members on the db hosts, one cluster, mutual TLS with the stack CA on the client and
the peer port: etcdctl and curl get answers only with the host certificate.
"""

import json

testinfra_hosts = ["ha-db1", "ha-db2", "ha-db3"]
JOURNAL_UNITS = ["etcd"]
MEMBERS = set(testinfra_hosts)
CA = "/etc/ssl/stack/ca.crt"
CERT = "/etc/ssl/stack/host.crt"
KEY = "/etc/ssl/stack/host.key"
# The flags roles/etcd's health check and Patroni use (vars/main.yml: __etcd_etcdctl_tls_flags).
ETCDCTL = (
    f"ETCDCTL_API=3 etcdctl --cacert={CA} --cert={CERT} --key={KEY}"
    " --endpoints=https://127.0.0.1:2379 --dial-timeout=2s --command-timeout=5s"
)
LOCAL = "https://127.0.0.1:2379"


def members(host) -> list[dict]:
    out = host.run(f"{ETCDCTL} member list -w json")
    assert out.rc == 0, out.stderr
    return json.loads(out.stdout)["members"]


def setting(host, name: str) -> str:
    for line in host.file("/etc/default/etcd").content_string.splitlines():
        if line.startswith(name + "="):
            return line.split("=", 1)[1]
    raise AssertionError(f"{name} is not in /etc/default/etcd")


def test_etcd_01_service_running_and_enabled(host):
    etcd = host.service("etcd")
    assert etcd.is_running
    assert etcd.is_enabled


def test_etcd_02_member_list_has_the_three_members(host):
    found = members(host)
    assert {m["name"] for m in found} == MEMBERS, found
    # Each member started (a member that never joined has no name and no client URLs).
    assert all(m.get("clientURLs") for m in found), found


def test_etcd_03_every_endpoint_is_healthy(host):
    out = host.run(f"{ETCDCTL} endpoint health --cluster")
    assert out.rc == 0, out.stdout + out.stderr
    healthy = [line for line in (out.stdout + out.stderr).splitlines() if "is healthy" in line]
    assert len(healthy) == len(MEMBERS), out.stdout + out.stderr


def test_etcd_04_client_without_certificate_refused(host):
    without = host.run("curl -sS -m 5 --cacert %s %s/health", CA, LOCAL)
    assert without.rc != 0, without.stdout
    with_cert = host.run(
        "curl -sS -m 5 --cacert %s --cert %s --key %s %s/health", CA, CERT, KEY, LOCAL
    )
    assert with_cert.rc == 0, with_cert.stderr
    assert json.loads(with_cert.stdout)["health"] == "true", with_cert.stdout


def test_etcd_05_peer_urls_are_https(host):
    assert all(url.startswith("https://") for m in members(host) for url in m["peerURLs"]), members(
        host
    )
    peer = setting(host, "ETCD_LISTEN_PEER_URLS")
    assert peer.startswith("https://"), peer
    # The peer port speaks only TLS, and only to holders of a stack certificate.
    plain = host.run("curl -sS -m 5 %s/version", "http" + peer[len("https") :])
    assert plain.rc != 0, plain.stdout
    anonymous = host.run("curl -sS -m 5 --http1.1 --cacert %s %s/version", CA, peer)
    assert anonymous.rc != 0, anonymous.stdout
    peer_tls = host.run(
        "curl -sS -m 5 --http1.1 --cacert %s --cert %s --key %s %s/version", CA, CERT, KEY, peer
    )
    assert peer_tls.rc == 0, peer_tls.stderr
    assert "etcdserver" in json.loads(peer_tls.stdout), peer_tls.stdout


def test_etcd_06_tls_copies_owned_by_root_and_etcd(host):
    directory = host.file("/etc/etcd/tls")
    assert directory.is_directory and directory.user == "root" and directory.group == "etcd"
    assert directory.mode == 0o750
    for name, mode in (("host.crt", 0o644), ("host.key", 0o640), ("ca.crt", 0o644)):
        copy = host.file(f"/etc/etcd/tls/{name}")
        assert copy.user == "root" and copy.group == "etcd", name
        assert copy.mode == mode, f"{name}: {oct(copy.mode)}"
    assert setting(host, "ETCD_KEY_FILE") == "/etc/etcd/tls/host.key"
