"""What the runner reads from the Docker host: container CPU time, steal time, addresses."""

import json
import subprocess
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def cgroup_cpu_files(container_id: str) -> list[Path]:
    """Where this host keeps a container's CPU time, most precise first.

    cgroup v2 (systemd or cgroupfs driver) and the hybrid layout have cpu.stat with
    usage_usec (the hybrid one under unified/); plain v1 has cpuacct.usage (ns). The
    containers of `make up` run systemd with the host's cgroup namespace: their services
    live in sub-cgroups, which cpu.stat and cpuacct.usage include.
    """
    return [
        CGROUP / "system.slice" / f"docker-{container_id}.scope" / "cpu.stat",
        CGROUP / "docker" / container_id / "cpu.stat",
        CGROUP / "unified" / "docker" / container_id / "cpu.stat",
        CGROUP / "cpuacct" / "docker" / container_id / "cpuacct.usage",
        CGROUP / "cpu,cpuacct" / "docker" / container_id / "cpuacct.usage",
    ]


def read_cpu_usec(path: Path) -> int:
    text = path.read_text()
    if path.name == "cpuacct.usage":
        return int(text) // 1000
    return parse_cpu_stat(text)


def parse_cpu_stat(text: str) -> int:
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value)
    raise ValueError("no usage_usec in cpu.stat")


def container_ids(names: list[str]) -> dict[str, str]:
    out = subprocess.run(
        ["docker", "inspect", "--format", "{{.Name}} {{.Id}}", *names],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {name.lstrip("/"): cid for name, cid in (line.split() for line in out.splitlines())}


class CpuMeter:
    """CPU microseconds used by a set of containers, from their cgroups."""

    def __init__(self, names: list[str]) -> None:
        self.files = {}
        for name, cid in container_ids(names).items():
            found = [f for f in cgroup_cpu_files(cid) if f.exists()]
            if not found:
                raise RuntimeError(f"no cgroup CPU file for container {name} ({cid[:12]})")
            self.files[name] = found[0]

    def read(self) -> dict[str, int]:
        return {name: read_cpu_usec(path) for name, path in self.files.items()}


def parse_proc_stat(text: str) -> tuple[int, int, int]:
    """(steal, total, idle) jiffies of all CPUs from /proc/stat's first line; idle
    counts iowait too (a CPU waiting for a disk could run something else)."""
    fields = text.splitlines()[0].split()
    assert fields[0] == "cpu", "first line of /proc/stat is the cpu total"
    values = [int(v) for v in fields[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice]: guests are
    # already counted in user and nice.
    return values[7] if len(values) > 7 else 0, sum(values[:8]), values[3] + values[4]


def read_steal() -> tuple[int, int, int]:
    return parse_proc_stat(Path("/proc/stat").read_text())


def steal_pct(before: tuple, after: tuple) -> float:
    total = after[1] - before[1]
    return 100.0 * (after[0] - before[0]) / total if total > 0 else 0.0


def busy_pct(before: tuple, after: tuple) -> float:
    """How busy the whole machine was (every process, the load generator's too), in % of
    all its CPUs: what a comparison had left to win."""
    total = after[1] - before[1]
    return 100.0 * (total - (after[2] - before[2])) / total if total > 0 else 0.0


def network_gateway(network: str) -> str:
    """The Docker host's address on the stack's network: the IPAM gateway when the network
    names one, else the address of its bridge (br-<first 12 of the id>), which is what
    a network created with only a subnet gets."""
    out = subprocess.run(
        ["docker", "network", "inspect", network], check=True, capture_output=True, text=True
    ).stdout
    info = json.loads(out)[0]
    for config in info["IPAM"]["Config"] or []:
        if config.get("Gateway"):
            return config["Gateway"]
    bridge = (
        info.get("Options", {}).get("com.docker.network.bridge.name") or f"br-{info['Id'][:12]}"
    )
    addr = subprocess.run(
        ["ip", "-j", "-4", "addr", "show", "dev", bridge],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return bridge_address(addr)


def container_address(container: str, network: str) -> str:
    """A container's address on the stack network: where the load goes."""
    out = subprocess.run(
        ["docker", "inspect", container], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out)[0]["NetworkSettings"]["Networks"][network]["IPAddress"]


def bridge_address(ip_json: str) -> str:
    """The IPv4 address in `ip -j -4 addr show dev X` output."""
    for link in json.loads(ip_json):
        for addr in link.get("addr_info", []):
            if addr.get("family") == "inet":
                return addr["local"]
    raise RuntimeError("the stack network's bridge has no IPv4 address")
