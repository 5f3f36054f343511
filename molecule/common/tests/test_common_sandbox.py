"""Issue 15's systemd sandboxing of common's node exporter, on every host of the scenario.

The exposure of `systemd-analyze security` is deterministic, so the issue's ceiling is
asserted. The sandbox must not blind the exporter: it still reads /proc and /sys, its
textfile directory, and sees the host's mount flags rather than its own read-only view.
Control IDs name the checks (sandbox-node-exporter-NN).
"""

import re
import time

from stack_testinfra import exposure

JOURNAL_UNITS = ["prometheus-node-exporter"]
UNIT = "prometheus-node-exporter.service"
METRICS = "curl -s -m 10 http://127.0.0.1:9100/metrics"
READONLY = re.compile(r'^node_filesystem_readonly\{[^}]*mountpoint="([^"]+)"[^}]*\} (\S+)$', re.M)


def show(host, *properties: str) -> dict[str, str]:
    out = host.check_output("systemctl show -p %s %s", ",".join(properties), UNIT)
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def sample(text: str, name: str, labels: str = "") -> float | None:
    """The value of the first series `name{...labels...}` in an exposition text."""
    pattern = re.compile(
        rf"^{re.escape(name)}(\{{[^}}]*{re.escape(labels)}[^}}]*\}})? (\S+)$", re.M
    )
    found = pattern.search(text)
    return float(found.group(2)) if found else None


def test_sandbox_node_exporter_01_exposure_at_most_2_0(host):
    score = exposure(host, UNIT)
    assert score <= 2.0, host.run("systemd-analyze security --no-pager %s", UNIT).stdout


def test_sandbox_node_exporter_02_sandboxed_and_running(host):
    props = show(
        host, "ProtectSystem", "CapabilityBoundingSet", "NoNewPrivileges", "User", "ActiveState"
    )
    assert props == {
        "ProtectSystem": "strict",
        "CapabilityBoundingSet": "",
        "NoNewPrivileges": "yes",
        "User": "prometheus",
        "ActiveState": "active",
    }, props


def test_sandbox_node_exporter_03_still_reads_proc_sys_and_mount_flags(host):
    text = host.check_output(METRICS)
    assert sample(text, "node_load1") is not None
    assert sample(text, "node_memory_MemTotal_bytes") > 0
    assert sample(text, "node_cpu_seconds_total") is not None
    assert sample(text, "node_network_receive_bytes_total") is not None
    assert sample(text, "node_scrape_collector_success", 'collector="filesystem"') == 1
    # Its own mount namespace is read-only (ProtectSystem=strict); it reports the host's
    # mount flags (from /proc/1/mounts), which DiskAlmostFull and friends rely on.
    flags = dict(READONLY.findall(text))
    assert flags, "no node_filesystem_readonly series:\n" + text[-2000:]
    for mountpoint, value in flags.items():
        options = host.check_output("findmnt -n -o OPTIONS --mountpoint %s", mountpoint)
        expected = 1.0 if options.split(",")[0] == "ro" else 0.0
        assert float(value) == expected, f"{mountpoint}: {value}, host says {options}"


def test_sandbox_node_exporter_04_reads_its_textfile_directory(host):
    directory = "/var/lib/prometheus/node-exporter"
    assert host.file(directory).is_directory
    path = f"{directory}/sandbox_probe.prom"
    stamp = int(time.time())
    host.check_output(
        "printf 'sandbox_probe_stamp %s\\n' > %s && chmod 0644 %s", str(stamp), path, path
    )
    try:
        text = host.check_output(METRICS)
    finally:
        host.run("rm -f %s", path)
    assert sample(text, "sandbox_probe_stamp") == stamp, text[-2000:]
    assert sample(text, "node_textfile_scrape_error") == 0
