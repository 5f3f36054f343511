"""Behaviour of the common role on a web host and a monitoring host.

Control IDs (common-NN) name each check, the way hardening baselines do.
"""

import json
import os
from pathlib import Path

import pytest
import yaml
from stack_testinfra import assert_refused

JOURNAL_UNITS = ["nftables", "prometheus-node-exporter"]
WEB, MON = "common-web", "common-mon"
PROJECT = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
PROBE = "curl -s -o /dev/null -w '%{{http_code}}' -m 4 http://{}:{}/"


def in_container(host) -> bool:
    return host.run("systemd-detect-virt --container").rc == 0


def test_common_01_declared_packages_installed_and_tools_work(host, hostvars):
    # The inventory's values where it sets them, else the role's defaults.
    defaults = yaml.safe_load((PROJECT / "roles/common/defaults/main.yml").read_text())
    wanted = {**defaults, **hostvars(host.backend.get_hostname())}
    packages = wanted["common_packages"] + wanted["common_packages_extra"]
    missing = [name for name in packages if not host.package(name).is_installed]
    assert not missing, f"declared in common_packages but not installed: {missing}"
    # The tools other roles' tasks and operators reach for, doing real work.
    assert host.run("echo '{\"a\": 41}' | jq '.a + 1'").stdout.strip() == "42"
    assert host.run("curl -s -o /dev/null -w '%{http_code}' file:///etc/hostname").rc == 0
    assert host.run("pgrep -x systemd").stdout.split() == ["1"]


def test_common_02_time_zone(host, hostvars):
    zone = hostvars(host.backend.get_hostname())["common_timezone"]
    assert host.run("timedatectl show -p Timezone --value").stdout.strip() == zone
    assert host.run("date +%Z").stdout.strip() in {"CET", "CEST"}


def test_common_03_time_sync_enabled(host):
    assert host.service("systemd-timesyncd").is_enabled


def test_common_04_login_sessions_get_the_locale(host):
    assert "en_US.utf8" in host.run("locale -a").stdout.split()
    out = host.run("su - nobody -s /bin/sh -c 'echo $LANG; locale charmap'")
    assert out.stdout.split() == ["en_US.UTF-8", "UTF-8"], out.stderr


def test_common_05_kernel_settings(host):
    wanted = {
        "net.core.somaxconn": "4096",
        "net.ipv4.tcp_max_syn_backlog": "8192",
        "fs.file-max": "2097152",
        "net.ipv4.ip_local_port_range": "10240 65535",
    }
    written = dict(
        (part.strip() for part in line.split("=", 1))
        for line in host.file("/etc/sysctl.d/60-common.conf").content_string.splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert written == wanted
    if not in_container(host):
        for key, value in wanted.items():
            assert " ".join(host.run(f"sysctl -n {key}").stdout.split()) == value


def test_common_06_open_files_limit_for_logins_and_services(host, hostvars):
    limit = str(hostvars(host.backend.get_hostname())["common_nofile_limit"])
    assert host.run("su - nobody -s /bin/sh -c 'ulimit -n'").stdout.strip() == limit
    pid = host.run("systemctl show -p MainPID --value prometheus-node-exporter").stdout.strip()
    limits = host.file(f"/proc/{pid}/limits").content_string
    line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
    assert line.split()[3:5] == [limit, limit]


def test_common_07_node_exporter_serves_monitoring_host(scenario_host):
    out = scenario_host(MON).run(f"curl -sf -m 5 http://{WEB}:9100/metrics")
    assert out.rc == 0, out.stderr
    assert "node_exporter_build_info" in out.stdout
    # Collectors switched off in the role's defaults are really off.
    assert 'collector="xfs"' not in out.stdout
    assert 'node_scrape_collector_success{collector="cpu"} 1' in out.stdout


def test_common_08_firewall_refuses_non_peer(scenario_host):
    # The web host is not a monitoring host: the monitoring host's exporter stays closed
    # to it (dropped, so curl times out instead of getting a reset).
    out = scenario_host(WEB).run(f"curl -s -m 3 http://{MON}:9100/metrics")
    assert out.rc == 28, (out.rc, out.stdout[:200])


@pytest.fixture
def listeners(scenario_host):
    """Throwaway HTTP listeners, so open and closed ports can be told apart by behaviour."""
    started = []

    def listen(name, port):
        host = scenario_host(name)
        unit = f"probe-{port}"
        cmd = f"systemd-run --unit {unit} python3 -m http.server {port} --directory /tmp"
        assert host.run(cmd).rc == 0
        wait = f"timeout 10 sh -c 'until ss -ltn | grep -q :{port}; do sleep 0.2; done'"
        assert host.run(wait).rc == 0
        started.append((host, unit))

    yield listen
    for host, unit in started:
        host.run(f"systemctl stop {unit}")


def test_common_09_web_port_open_to_anyone_other_ports_closed(scenario_host, listeners):
    listeners(WEB, 80)
    listeners(WEB, 8081)
    mon = scenario_host(MON)
    assert mon.run(PROBE.format(WEB, 80)).stdout == "200"
    assert mon.run(PROBE.format(WEB, 8081)).rc == 28


def test_common_10_operator_port_closed_to_others(scenario_host, listeners):
    listeners(MON, 9090)
    assert scenario_host(MON).run(PROBE.format(MON, 9090)).stdout == "200"
    assert scenario_host(WEB).run(PROBE.format(MON, 9090)).rc == 28


def test_common_11_security_upgrades_only(host):
    dump = host.run("apt-config dump Unattended-Upgrade::Origins-Pattern").stdout
    patterns = [line for line in dump.splitlines() if "origin=" in line]
    assert len(patterns) == 1 and "Debian-Security" in patterns[0], dump
    periodic = host.run("apt-config dump APT::Periodic::Unattended-Upgrade").stdout
    assert 'APT::Periodic::Unattended-Upgrade "1";' in periodic
    assert host.run("unattended-upgrade --dry-run").rc == 0


def extra_service(**fields) -> str:
    service = {"name": "probe", "groups": ["web"], **fields}
    return json.dumps({"common_firewall_services_extra": [service]})


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("common_nofile_limit=-5", "common_nofile_limit >= 1024"),
        ("common_nofile_limit=lots", "common_nofile_limit"),
        ("common_sysctl_local_port_range='60000 1024'", "low < high"),
        ("common_timezone='Mars/Olympus Mons'", "tz name"),
        (extra_service(port=99999, sources=["any"]), "with a port 1-65535"),
        (extra_service(port=81, sources=["moniter"]), "unknown: ['moniter']"),
    ],
)
def test_common_12_bad_variables_fail_before_any_change(extra, message):
    assert_refused("-e", extra, message=message)
