"""Shared testinfra helpers, loaded into every scenario's verify step as a pytest plugin.

- `scenario_host(name)` gives a testinfra host for another inventory host of the scenario,
  so a test can act from one host against another (a peer allowed, a non-peer refused).
- `hostvars` gives the scenario's Ansible variables for a host, so tests compare with what
  the role was told to do instead of repeating numbers.
- `exposure(host, unit)` is the unit's overall exposure score from `systemd-analyze
  security` (0 to 10, lower is better): deterministic, so tests may assert a ceiling;
  `unit_status(host, unit)` the /proc status of its main process.
- A test marked `@pytest.mark.journal("unit", ...)` (or a module with `JOURNAL_UNITS`)
  prints the tail of those units' journals when it fails, on the host it ran against.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import testinfra
from testinfra.utils.ansible_runner import AnsibleRunner

JOURNAL_LINES = 60
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def inventory_dir() -> str:
    return str(Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent)


@functools.cache
def _runner() -> AnsibleRunner:
    return AnsibleRunner(inventory_dir())


def hosts_in(group: str) -> list[str]:
    """Inventory hosts of a group, for `testinfra_hosts` at module level."""
    return _runner().get_hosts(group)


@dataclass
class PlaybookRun:
    returncode: int
    output: str
    changed: dict[str, int]

    @property
    def any_changed(self) -> bool:
        return any(self.changed.values())


EXPOSURE = re.compile(r"Overall exposure level for \S+: (\d+\.\d+)")


def exposure(host, unit: str) -> float:
    """`systemd-analyze security`'s overall exposure score of a unit on a testinfra host."""
    out = host.check_output("systemd-analyze security --no-pager %s 2>&1", unit)
    found = EXPOSURE.search(ANSI.sub("", out))
    assert found, f"no exposure score for {unit}:\n{out[-500:]}"
    return float(found.group(1))


def unit_status(host, unit: str) -> dict[str, str]:
    """The /proc/<pid>/status lines (Uid, CapEff, NoNewPrivs, ...) of a running unit's
    main process on a testinfra host."""
    pid = host.run("systemctl show -p MainPID --value %s", unit).stdout.strip()
    assert pid not in ("", "0"), f"{unit} has no main process"
    lines = host.file(f"/proc/{pid}/status").content_string.splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def run_playbook(playbook: str, *args: str) -> PlaybookRun:
    """Run a playbook against the scenario's inventory from the control node."""
    proc = subprocess.run(
        ["ansible-playbook", "-i", inventory_dir(), *args, playbook],
        capture_output=True,
        text=True,
        check=False,
        env={
            **os.environ,
            "ANSIBLE_STDOUT_CALLBACK": "default",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
        },
    )
    stdout = ANSI.sub("", proc.stdout)
    output = stdout + ANSI.sub("", proc.stderr)
    changed = {
        line.split()[0]: int(re.search(r"changed=(\d+)", line)[1])
        for line in stdout.splitlines()
        if re.search(r"\bok=\d+.*changed=\d+", line)
    }
    return PlaybookRun(proc.returncode, output, changed)


def converge(*args: str) -> PlaybookRun:
    """Run the scenario's converge playbook again from the control node.

    Used to prove check mode predicts no change, and that bad variables are rejected
    before anything changes (`-e name=value` in args).
    """
    playbook = os.environ.get(
        "SCENARIO_CONVERGE_PLAYBOOK",
        str(Path(os.environ["MOLECULE_PROJECT_DIRECTORY"], "molecule/_shared/converge.yml")),
    )
    return run_playbook(playbook, *args)


def assert_refused(*args: str, message: str) -> PlaybookRun:
    """Converge with bad input (`-e name=value` in args) and prove it is refused.

    The run must fail, say `message`, and change nothing. The converge playbooks (the
    shared one and site.yml) check every role's variables on every host in their first
    play, so a refusal must come from that play: the output holds no second play.
    """
    run = converge(*args)
    assert run.returncode != 0, run.output[-3000:]
    assert message in run.output, run.output[-3000:]
    assert not run.any_changed, run.changed
    assert run.output.count("PLAY [") == 1, "refused after the first play:\n" + run.output[-3000:]
    return run


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "journal(*units): print these units' journal on failure")


@pytest.fixture(scope="session")
def scenario_host():
    cache: dict[str, testinfra.host.Host] = {}

    def get(name: str) -> testinfra.host.Host:
        if name not in cache:
            cache[name] = testinfra.get_host(
                f"ansible://{name}?ansible_inventory={inventory_dir()}"
            )
        return cache[name]

    return get


@pytest.fixture(scope="session")
def hostvars():
    @functools.cache
    def get(name: str) -> dict:
        return _runner().get_variables(name)

    return get


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.when != "call" or not report.failed:
        return report
    units: list[str] = []
    for marker in item.iter_markers("journal"):
        units.extend(marker.args)
    units.extend(getattr(item.module, "JOURNAL_UNITS", []))
    host = getattr(item, "funcargs", {}).get("host")
    if not units or host is None:
        return report
    for unit in dict.fromkeys(units):
        try:
            out = host.run(
                "journalctl --no-pager -o short-iso -n %s -u %s", str(JOURNAL_LINES), unit
            )
            text = out.stdout or out.stderr
        except Exception as exc:
            text = f"(could not read the journal: {exc})"
        report.sections.append((f"journal of {unit} on {host.backend.get_hostname()}", text))
    return report
