"""Shared testinfra helpers, loaded into every scenario's verify step as a pytest plugin.

- `scenario_host(name)` gives a testinfra host for another inventory host of the scenario,
  so a test can act from one host against another (a peer allowed, a non-peer refused).
- `hostvars` gives the scenario's Ansible variables for a host, so tests compare with what
  the role was told to do instead of repeating numbers.
- `exposure(host, unit)` is the unit's overall exposure score from `systemd-analyze
  security` (0 to 10, lower is better): deterministic, so tests may assert a ceiling;
  `unit_status(host, unit)` the /proc status of its main process.
- `log_in(run, users)` gets bearer tokens for seeded demo users through the site, on the
  host that `run` executes shell commands on; the tokens stay in files there (mode 600):
  `token_header(user)` is the path for curl's `-H @file`, `token_file(user)` the bare token.
  `bearer_header(host, user)` does it for a testinfra host; `Tokens` logs in again before
  the tokens would expire.
- `write_root_file(name, path, content)` writes a root-only (0600) file in a scenario
  container through standard input, never a command line: a libpq PGPASSFILE for psql.
- `prometheus_auth(host)` gives the curl options that reach Prometheus from a monitoring
  host: the stack CA and a root-only netrc built from the password file roles/prometheus
  installs there (the password is on no command line); `prometheus_url(host)` its URL.
- `assert_refused(*args, message=...)` proves a converge with bad input is refused before
  any change; `Refusals(cases)` runs one parametrized test's refusal cases in parallel.
- A test marked `@pytest.mark.journal("unit", ...)` (or a module with `JOURNAL_UNITS`)
  prints the tail of those units' journals when it fails, on the host it ran against.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
import testinfra
from testinfra.utils.ansible_runner import AnsibleRunner

JOURNAL_LINES = 60
# Refusal runs of one test at a time (Refusals): each is one ansible-playbook process.
REFUSAL_RUNS = 4
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# The seed's demo accounts: user<N>@example.com, N = 1..app_seed_users, all with this
# password (shop.seed.DEMO_PASSWORD): public demo data, not a secret.
DEMO_PASSWORD = "demo-password"  # noqa: S105
# Where log_in() keeps the tokens on the host that logged in: root's only.
LOGIN_DIR = "/root/stack-tokens"
SITE = "https://127.0.0.1"
LOGIN_WAIT = 60.0  # seconds of 429s (hashing slots or nginx's zone) before giving up


def inventory_dir() -> str:
    return str(Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent)


@functools.cache
def _runner() -> AnsibleRunner:
    return AnsibleRunner(inventory_dir())


def hosts_in(group: str) -> list[str]:
    """Inventory hosts of a group, for `testinfra_hosts` at module level."""
    return _runner().get_hosts(group)


def groups_of(host: str) -> set[str]:
    """The host's inventory groups as Ansible's group_names has them (no all, ungrouped)."""
    return set(_runner().get_variables(host)["group_names"]) - {"all", "ungrouped"}


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


# Run on the host by python3, from a heredoc: the tokens never appear on a command line
# or in the test's output. Logs each user in through the site, waits as long as each 429
# asks (Retry-After, else 1 s), and prints one JSON line: {user: {"status", "expires_in",
# "detail"}}.
_LOG_IN = r"""
import json, os, ssl, sys, time, urllib.error, urllib.parse, urllib.request
site, directory, password = %(site)r, %(directory)r, %(password)r
users, deadline = %(users)r, time.monotonic() + %(wait)r
context = ssl._create_unverified_context()  # self-signed in the test bed
os.makedirs(directory, mode=0o700, exist_ok=True)
result = {}
for user in users:
    form = urllib.parse.urlencode(
        {"username": f"user{user}@example.com", "password": password}
    ).encode()
    while True:
        request = urllib.request.Request(site + "/api/auth/token", data=form)
        try:
            with urllib.request.urlopen(request, timeout=30, context=context) as response:
                status, headers, body = response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:
            status, headers, body = error.code, error.headers, error.read()
        if status != 429 or time.monotonic() > deadline:
            break
        time.sleep(min(float(headers.get("Retry-After") or 1), 10))
    entry = {"status": status, "expires_in": None, "detail": ""}
    if status == 200:
        answer = json.loads(body)
        entry["expires_in"] = answer.get("expires_in")
        for name, text in (
            (f"user{user}.token", answer["access_token"]),
            (f"user{user}.header", "Authorization: Bearer " + answer["access_token"] + "\n"),
        ):
            path = os.path.join(directory, name)
            fd = os.open(path + ".new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(path + ".new", path)
    else:
        entry["detail"] = body[:300].decode("utf-8", "replace")
    result[str(user)] = entry
print(json.dumps(result))
"""


# Prometheus' TLS and basic auth (roles/prometheus, prometheus_web_*).
STACK_CA = "/etc/ssl/stack/ca.crt"
PROMETHEUS_USER = "prometheus"
PROMETHEUS_PASSWORD_FILE = "/etc/prometheus/web.password"  # noqa: S105 (a path)
PROMETHEUS_NETRC = "/root/prometheus.netrc"
_prometheus_netrc_written: set[str] = set()


def prometheus_url(host) -> str:
    """https://<listen address> of the Prometheus on a monitoring host (it serves TLS only)."""
    args = host.file("/etc/default/prometheus").content_string
    return "https://" + re.search(r"--web\.listen-address=(\S+?)\"?(\s|$)", args)[1]


def prometheus_auth(host) -> str:
    """curl options for Prometheus from a monitoring host: the stack CA, and a root-only
    netrc built from the password file the role installs (never on a command line),
    written once per host and test session."""
    name = host.backend.get_hostname()
    if name not in _prometheus_netrc_written:
        out = host.run(
            "umask 077 && { printf 'default login %%s password ' %s && cat %s; } > %s",
            PROMETHEUS_USER,
            PROMETHEUS_PASSWORD_FILE,
            PROMETHEUS_NETRC,
        )
        assert out.rc == 0, out.stderr
        _prometheus_netrc_written.add(name)
    return f"--cacert {STACK_CA} --netrc-file {PROMETHEUS_NETRC}"


def token_file(user: int) -> str:
    """The bare token of a demo user that log_in() fetched, on the host that fetched it."""
    return f"{LOGIN_DIR}/user{user}.token"


def token_header(user: int) -> str:
    """`Authorization: Bearer <token>` of a demo user, for curl's `-H @file`."""
    return f"{LOGIN_DIR}/user{user}.header"


def log_in(run: Callable[[str], str], users: list[int] | tuple[int, ...], site: str = SITE) -> int:
    """Log seeded demo users in through the site (POST /api/auth/token) from the host that
    `run` (a shell command -> its stdout) executes on; returns the tokens' lifetime in
    seconds. The tokens stay in that host's LOGIN_DIR (token_file, token_header)."""
    program = _LOG_IN % {
        "site": site,
        "directory": LOGIN_DIR,
        "password": DEMO_PASSWORD,
        "users": list(users),
        "wait": LOGIN_WAIT,
    }
    out = run(f"python3 - <<'LOG_IN'\n{program}\nLOG_IN").strip()
    assert out, "the log-in printed nothing"
    result = json.loads(out.splitlines()[-1])
    refused = {u: e for u, e in result.items() if e["status"] != 200}
    assert not refused, f"demo users not logged in: {refused}"
    return min(int(e["expires_in"] or 0) for e in result.values())


def bearer_header(host, user: int, site: str = SITE) -> str:
    """Log a demo user in from a testinfra host; the path of the header file on that host."""

    def run(command: str) -> str:
        out = host.run(command)
        assert out.rc == 0, out.stderr
        return out.stdout

    log_in(run, [user], site)
    return token_header(user)


class Tokens:
    """Demo users' tokens on one host (log_in), logged in again when they would expire
    before what they are needed for is over."""

    def __init__(
        self, run: Callable[[str], str], users: list[int] | tuple[int, ...], site: str = SITE
    ) -> None:
        self.run, self.users, self.site = run, list(users), site
        self.expires_at = 0.0

    def fresh(self, for_seconds: float) -> None:
        """Valid for at least for_seconds more (and a minute of margin) when this returns."""
        if time.monotonic() + for_seconds + 60 >= self.expires_at:
            began = time.monotonic()
            self.expires_at = began + log_in(self.run, self.users, self.site)


def write_root_file(name: str, path: str, content: str) -> str:
    """Write `content` to `path` (umask 077: root's only) in the container of inventory host
    `name`, through `docker exec -i`'s standard input: the content (a password) is on no
    command line (ps, sudo's journal lines). Returns the path."""
    subprocess.run(
        ["docker", "exec", "-i", name, "sh", "-c", f"umask 077 && cat > {path}"],
        input=content,
        text=True,
        check=True,
    )
    return path


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
    return check_refused(converge(*args), message=message)


class Refusals:
    """The refusal runs of one parametrized test, started together at its first case's
    call, REFUSAL_RUNS at a time, each case then checked as assert_refused checks it.

    A refused run changes nothing, so the runs may overlap; one at a time they were the
    largest part of a scenario's verify on a busy CI machine (tens of seconds each, most
    of it waiting for a CPU).

        BAD = [("app_port=70000", "app_port 1-65535"), ...]
        REFUSALS = Refusals(["-e", extra] for extra, _ in BAD)

        @pytest.mark.parametrize(("extra", "message"), BAD)
        def test_bad_variables(extra, message):
            REFUSALS.assert_refused("-e", extra, message=message)
    """

    def __init__(self, cases: Iterable[Iterable[str]]) -> None:
        self.cases = [tuple(case) for case in cases]
        self.runs: dict[tuple[str, ...], concurrent.futures.Future[PlaybookRun]] = {}

    def assert_refused(self, *args: str, message: str) -> PlaybookRun:
        if not self.runs:
            with concurrent.futures.ThreadPoolExecutor(REFUSAL_RUNS) as pool:
                self.runs = {case: pool.submit(converge, *case) for case in self.cases}
        future = self.runs.get(args)
        assert future is not None, f"{args} is not one of this test's cases: {self.cases}"
        return check_refused(future.result(), message=message)


def check_refused(run: PlaybookRun, message: str) -> PlaybookRun:
    """assert_refused's checks of a finished run."""
    assert run.returncode != 0, run.output[-3000:]
    # Whitespace collapsed: the YAML callback wraps a long message at any space.
    assert " ".join(message.split()) in " ".join(run.output.split()), run.output[-3000:]
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
