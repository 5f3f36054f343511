"""The fault suite (issue 14): one fault at a time under paced load through nginx.

Each test starts faults_load.py on the web host (12 requests/s to nginx on its loopback,
a mix of cached and uncached reads and order writes, each request bounded; the writes and
a user's orders with demo users' tokens, logged in through nginx before), lets it run
cleanly for a moment, injects one fault, ends it, keeps the load going until the stack
has answered only successes for RECOVERY_RUN seconds (or SETTLE_MAX pass), then stops
the load. Each fault adds a row to a table printed in the test output, with the columns
fault, requests, failed, 5xx, 429, timeout/conn, other, longest s, ready s, first ok s,
recovered s and alert (COLUMNS). requests counts those not finished when the fault began;
failed counts every answer that is not 2xx (5xx, 429 and other 4xx) and every request
that got none in REQUEST_TIMEOUT (timeout/conn). The last four columns count from the end
of the fault: when the dependency answered again (pg_isready, for the database faults),
the first success, and the first success after which nothing failed (recovery). alert is
the Prometheus alert that matches the fault and what it did (pending or firing while the
fault lasted, resolved afterwards).

Faults are injected and ended from the machine that runs the tests, with `docker exec`
and `docker restart` on the scenario's containers: the timings need the shared clock and
the speed of a plain exec. The bounds the app must keep (the request deadline, the
statement timeout) are read from the inventory or the roles' defaults, falling back to
the issue's numbers.

By hand against `make up`'s stack (containers stack-web1, ...), from the repository root
(as root, for docker; the tests read the inventory with ansible-inventory from .venv):
    PATH=$PWD/.venv/bin:$PATH MOLECULE_INVENTORY_FILE=inventories/local/hosts.yml \\
      PYTHONPATH=molecule/_shared pytest -s -p stack_testinfra \\
      molecule/default/tests/test_faults.py
Prometheus there scrapes every 15 s, so each alert takes longer to show and to resolve.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from paced_load import (
    LOAD_MAX_SECONDS,
    READERS,
    REQUEST_TIMEOUT,
    WRITERS,
    LoadRun,
    Outcome,
    failure_kind,
    header,
)
from stack_testinfra import (
    PROMETHEUS_NETRC,
    PROMETHEUS_PASSWORD_FILE,
    PROMETHEUS_USER,
    STACK_CA,
    Tokens,
    hosts_in,
)

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parents[2]

BASELINE = 2.0  # seconds of load before each fault, which must all succeed
# What TLS, nginx and a busy 2-core machine add to the app's own deadline, as a client
# on the web host measures it. 0.5 s was exceeded once (3.66 s against 2.9 + 0.5 in
# test_faults_08) while three scenarios shared the 2 cores: the bound proves that every
# answer is cut off by the deadline, not how fast a starved CPU gets there.
ALLOWANCE = 1.0
# The bounds, used when the roles do not set them.
DEADLINE_DEFAULT = 3.0
RECOVERY_BOUND = 2.0
TARGETS_WAIT = 120.0  # a restarted host's exporters are all back within a minute


def _seconds(value: object, name: str) -> float | None:
    """A bound from a variable: a number (milliseconds when the name ends in _ms) or a
    duration such as 3s or 500ms; None for anything else (a Jinja expression)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value / 1000 if name.endswith("_ms") else float(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*", str(value))
    if not match:
        return None
    number = float(match[1])
    if match[2] == "ms" or (match[2] is None and name.endswith("_ms")):
        return number / 1000
    return number


@functools.cache
def _role_defaults(role: str) -> dict:
    path = PROJECT / "roles" / role / "defaults" / "main.yml"
    return yaml.safe_load(path.read_text()) or {} if path.exists() else {}


def _duration(text: str) -> float:
    """A Prometheus duration (15s, 1m, 1m30s) in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+)(ms|s|m|h)", text))


class Stack:
    """The scenario's hosts, reached with docker exec, and its Prometheus."""

    def __init__(self, hostvars: Callable[[str], dict]) -> None:
        self.hostvars = hostvars
        self._addresses: dict[str, list[str]] = {}
        self.web = hosts_in("web")[0]
        self.apps = hosts_in("app")
        self.db = hosts_in("db")[0]
        self.cache = hosts_in("cache")[0]
        self.mon = hosts_in("monitoring")[0]
        assert len(self.apps) >= 2, "the app faults need two app hosts"
        # The tokens stay on the web host, where the load reads them.
        self.tokens = Tokens(
            lambda command: self.sh(self.web, command, timeout=180), WRITERS + READERS
        )
        # The request deadline (roles/stack) and the app's bounds on the database
        # (roles/app), as the app hosts were given them.
        self.deadline = self.setting(
            self.apps[0], ("app_request_timeout_seconds", "app_request_deadline"), DEADLINE_DEFAULT
        )
        statement = self.setting(
            self.apps[0], ("app_db_statement_timeout_seconds", "app_db_statement_timeout"), 0
        )
        pool_wait = self.setting(self.apps[0], ("app_db_pool_timeout_seconds",), 0)
        # A slow database: a statement waits at most its bound, and a request may first
        # wait for a pooled connection the slow statements hold; never past the deadline.
        self.slow_db_bound = (
            min(self.deadline, statement + pool_wait) if statement else self.deadline
        )

    def setting(self, host: str, names: tuple[str, ...], default: float) -> float:
        """The first of these variables the host's inventory, its role's defaults or
        roles/stack's (the values several roles share) hold."""
        variables = self.hostvars(host)
        for name in names:
            value = variables.get(name)
            for role in (name.split("_")[0], "stack"):
                value = _role_defaults(role).get(name) if value is None else value
            seconds = _seconds(value, name) if value is not None else None
            if seconds is not None:
                return seconds
        return default

    def var(self, host: str, name: str, default: object) -> object:
        value = self.hostvars(host).get(name, default)
        return default if isinstance(value, str) and "{{" in value else value

    def container(self, host: str) -> str:
        # Molecule's hosts are the containers themselves; make up's are named
        # <local_env_prefix>-<host> and reached over SSH.
        variables = self.hostvars(host)
        if "docker" in str(variables.get("ansible_connection", "")):
            return host
        return f"{variables.get('local_env_prefix', 'stack')}-{host}"

    def sh(self, host: str, command: str, *, stdin: str | None = None, timeout: float = 60) -> str:
        interactive = ["-i"] if stdin is not None else []
        proc = subprocess.run(
            ["docker", "exec", *interactive, self.container(host), "sh", "-c", command],
            input=stdin,
            stdin=subprocess.DEVNULL if stdin is None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert proc.returncode == 0, f"{host}: {command}: {proc.stdout}{proc.stderr}"
        return proc.stdout

    def docker(self, *args: str, timeout: float = 120) -> None:
        proc = subprocess.run(
            ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        assert proc.returncode == 0, f"docker {' '.join(args)}: {proc.stdout}{proc.stderr}"

    def addresses(self, host: str) -> list[str]:
        """The host's IPv4 addresses, the private one first (as test_stack reads it)."""
        # `docker restart` keeps a container's addresses, so they can be remembered.
        if host not in self._addresses:
            found = self.sh(host, "hostname -I").split()
            self._addresses[host] = [a for a in found if ":" not in a]
        return self._addresses[host]

    def address(self, host: str) -> str:
        return self.addresses(host)[0]

    # --- Prometheus ---------------------------------------------------------------
    @functools.cached_property
    def prometheus_curl(self) -> str:
        """curl for Prometheus on the monitoring host: https verified with the stack CA,
        basic auth from a root-only netrc built from the role's password file there (the
        password is on no command line)."""
        self.sh(
            self.mon,
            f"umask 077 && {{ printf 'default login %s password ' {PROMETHEUS_USER}"
            f" && cat {PROMETHEUS_PASSWORD_FILE}; }} > {PROMETHEUS_NETRC}",
        )
        return f"curl -sf --max-time 5 --cacert {STACK_CA} --netrc-file {PROMETHEUS_NETRC}"

    def prometheus(self, path: str, **params: str) -> dict:
        port = self.var(self.mon, "prometheus_port", 9090)
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        url = f"https://{self.address(self.mon)}:{port}{path}{query}"
        return json.loads(self.sh(self.mon, f"{self.prometheus_curl} '{url}'"))

    @functools.cached_property
    def alert_wait(self) -> float:
        """How long an alert may take to show or to resolve: a failed scrape, then an
        evaluation, twice over, and some slack."""
        config = yaml.safe_load(self.prometheus("/api/v1/status/config")["data"]["yaml"])
        scrape = _duration(config["global"]["scrape_interval"])
        evaluation = _duration(config["global"]["evaluation_interval"])
        return 2 * (scrape + evaluation) + 10

    def alert_states(self, name: str, labels: dict[str, str]) -> list[str]:
        alerts = self.prometheus("/api/v1/alerts")["data"]["alerts"]
        return [
            alert["state"]
            for alert in alerts
            if alert["labels"].get("alertname") == name
            and all(alert["labels"].get(k) == v for k, v in labels.items())
        ]

    def check_alert(
        self, name: str, labels: dict[str, str], since: float, seen: bool | None
    ) -> tuple[bool, bool]:
        """Whether the alert went pending or firing since the fault began (unless the
        fault was held until it did), and whether it resolved afterwards."""
        deadline = time.monotonic() + self.alert_wait
        while not seen:
            seen = self.alert_seen_since(name, labels, since)
            if seen or time.monotonic() > deadline:
                break
            time.sleep(1)
        deadline = time.monotonic() + self.alert_wait
        while self.alert_states(name, labels) and time.monotonic() < deadline:
            time.sleep(1)
        return bool(seen), not self.alert_states(name, labels)

    def alert_seen_since(self, name: str, labels: dict[str, str], since: float) -> bool:
        """Whether the alert was pending or firing at any evaluation since then (ALERTS
        keeps a sample per evaluation while an alert is active)."""
        matchers = ",".join([f'alertname="{name}"'] + [f'{k}="{v}"' for k, v in labels.items()])
        data = self.prometheus(
            "/api/v1/query_range",
            query=f"ALERTS{{{matchers}}}",
            start=f"{since:.3f}",
            end=f"{time.time():.3f}",
            step="1",
        )
        return bool(data["data"]["result"])

    def down_targets(self) -> list[tuple[str, str, str]]:
        targets = self.prometheus("/api/v1/targets")["data"]["activeTargets"]
        return [
            (t["labels"]["job"], t["labels"].get("host", ""), t["lastError"])
            for t in targets
            if t["health"] != "up"
        ]

    def wait_targets_up(self, seconds: float = TARGETS_WAIT) -> list[tuple[str, str, str]]:
        deadline = time.monotonic() + seconds
        while (down := self.down_targets()) and time.monotonic() < deadline:
            time.sleep(1)
        return down

    # --- probes -----------------------------------------------------------------
    def postgres_ready(self, port: object = None) -> float:
        """Blocks until PostgreSQL (or PgBouncer, on its port) accepts connections on its
        Unix socket; returns when it did, as epoch seconds."""
        port = port or self.var(self.db, "postgresql_port", 5432)
        out = self.sh(
            self.db,
            f"for i in $(seq 1200); do pg_isready -q -d shop -p {port} && "
            "{ date +%s.%N; exit 0; }; sleep 0.05; done; exit 1",
            timeout=90,
        )
        return float(out.split()[-1])

    def pgbouncer_ready(self) -> float:
        # PgBouncer keeps its socket next to PostgreSQL's (roles/pgbouncer).
        return self.postgres_ready(self.var(self.db, "pgbouncer_port", 6432))

    def psql(self, sql: str, timeout: float = 30) -> str:
        return self.sh(
            self.db,
            "runuser -u postgres -- psql -X -At -v ON_ERROR_STOP=1 -d shop",
            stdin=sql,
            timeout=timeout,
        )


@dataclass
class Fault:
    name: str
    inject: Callable[[], None]
    restore: Callable[[], None] = lambda: None
    hold: float = 0.0  # seconds between inject and restore when no alert is awaited
    # The alert that matches the fault (name, labels); with hold_for_alert the fault
    # lasts until Prometheus shows it pending or firing.
    alert: tuple[str, dict[str, str]] | None = None
    hold_for_alert: bool = False
    ready: Callable[[], float] | None = None


@pytest.fixture(scope="module")
def stack(hostvars) -> Stack:
    stack = Stack(hostvars)
    down = stack.wait_targets_up(60)
    assert not down, f"the stack is not healthy before the faults: {down}"
    return stack


@pytest.fixture(scope="module")
def table():
    rows: list[str] = []
    began = time.monotonic()
    yield rows
    print(f"\n\nfault suite ({time.monotonic() - began:.0f} s):\n{header()}\n" + "\n".join(rows))


@pytest.fixture(scope="module")
def acknowledged_orders() -> list[int]:
    return []


@pytest.fixture
def run(stack, table, acknowledged_orders) -> Callable[[Fault], Outcome]:
    def run_fault(fault: Fault) -> Outcome:
        stack.tokens.fresh(LOAD_MAX_SECONDS + REQUEST_TIMEOUT)
        load = LoadRun(stack.container(stack.web), stack.web)
        try:
            time.sleep(BASELINE)
            started = time.time()
            seen = None
            try:
                fault.inject()
                if fault.hold_for_alert:
                    assert fault.alert is not None
                    deadline = time.monotonic() + stack.alert_wait
                    while not (seen := bool(stack.alert_states(*fault.alert))):
                        if time.monotonic() > deadline:
                            break
                        time.sleep(0.5)
                else:
                    time.sleep(fault.hold)
            finally:
                fault.restore()
            ended = time.time()
            ready = fault.ready() if fault.ready else None
            load.wait_recovered(max(ended, ready or ended))
        finally:
            records = load.stop()
        outcome = Outcome(fault.name, records, started, ended, ready)
        acknowledged_orders.extend(r["order"] for r in records if r["order"] is not None)

        # Targets first: an alert about a restarted host resolves only once it is back.
        outcome.down_targets = stack.wait_targets_up()
        if fault.alert:
            name, labels = fault.alert
            seen, resolved = stack.check_alert(name, labels, started, seen)
            outcome.alert_seen, outcome.alert_resolved = seen, resolved
            outcome.alert = (
                f"{name} {','.join(labels.values())}: "
                f"{'seen' if seen else 'NOT SEEN'}, {'resolved' if resolved else 'ACTIVE'}"
            )
        table.append(outcome.row())
        print(f"\n{header()}\n{outcome.row()}")
        if outcome.failures():
            print("failures:", outcome.describe_failures())

        assert not outcome.baseline_failures(), (
            "failures before the fault: the stack was not healthy"
        )
        assert not outcome.down_targets, f"targets still down: {outcome.down_targets}"
        if fault.alert:
            assert outcome.alert_seen, f"{outcome.alert}: never pending or firing during the fault"
            assert outcome.alert_resolved, f"{outcome.alert}: still active after the fault"
        return outcome

    return run_fault


def assert_answered_within(outcome: Outcome, seconds: float) -> None:
    hung = outcome.count("timeout/conn")
    assert hung == 0, f"{hung} requests got no answer: {outcome.describe_failures()}"
    assert outcome.longest <= seconds + ALLOWANCE, (
        f"longest request {outcome.longest:.2f}s, bound {seconds}s (+{ALLOWANCE}s)"
    )


def assert_recovered_after_ready(outcome: Outcome) -> None:
    assert outcome.ready is not None
    recovered = outcome.recovered()
    assert recovered is not None, f"never recovered: {outcome.describe_failures()}"
    late = recovered - (outcome.ready - outcome.ended)
    assert late <= RECOVERY_BOUND, (
        f"recovered {late:.2f}s after the dependency answered again (bound {RECOVERY_BOUND}s)"
    )


def test_faults_01_redis_stopped_then_started(stack, run):
    outcome = run(
        Fault(
            "redis stopped, started",
            inject=lambda: stack.sh(stack.cache, "systemctl stop redis-server"),
            restore=lambda: stack.sh(stack.cache, "systemctl start redis-server"),
            alert=("RedisDown", {"host": stack.cache}),
            hold_for_alert=True,
        )
    )
    assert not outcome.failures(), outcome.describe_failures()


def test_faults_02_cache_host_restarted(stack, run):
    outcome = run(
        Fault(
            "cache host restarted",
            # Stopped, then started once Prometheus saw it gone (as the db host below):
            # a `docker restart` can be quicker than a scrape (on make up's stack, 15 s).
            inject=lambda: stack.docker("stop", "--time", "20", stack.container(stack.cache)),
            restore=lambda: stack.docker("start", stack.container(stack.cache)),
            alert=("TargetDown", {"host": stack.cache}),
            hold_for_alert=True,
        )
    )
    assert not outcome.failures(), outcome.describe_failures()


def test_faults_03_gunicorn_worker_killed(stack, run):
    app = stack.apps[0]
    unit = stack.var(app, "app_name", "shop")
    workers = f"pgrep -P $(systemctl show -p MainPID --value {unit})"
    before = stack.sh(app, workers).split()
    assert before, "no Gunicorn worker found"
    killed: list[float] = []

    def kill() -> None:
        killed.append(time.time())
        stack.sh(app, f"kill -KILL {before[0]}")
        killed.append(time.time())

    outcome = run(Fault("gunicorn worker SIGKILL", inject=kill, hold=0.5))
    in_flight = outcome.in_flight_between(*killed)
    # Requests in flight anywhere at the kill: an upper bound of the killed worker's.
    assert len(outcome.failures()) <= in_flight, (
        f"{len(outcome.failures())} failures, {in_flight} requests in flight at the kill: "
        + outcome.describe_failures()
    )
    deadline = time.monotonic() + 30
    while len(after := stack.sh(app, workers).split()) < len(before):
        assert time.monotonic() < deadline, f"Gunicorn did not replace the worker: {after}"
        time.sleep(0.5)
    assert before[0] not in after


def test_faults_04_app_host_service_stopped(stack, run):
    app = stack.apps[0]
    unit = stack.var(app, "app_name", "shop")
    outcome = run(
        Fault(
            "app host service stopped",
            # The socket too: with it listening, systemd would start the service again.
            inject=lambda: stack.sh(app, f"systemctl stop {unit}.socket {unit}.service"),
            restore=lambda: stack.sh(app, f"systemctl start {unit}.socket {unit}.service"),
            alert=("TargetDown", {"job": "app", "host": app}),
            hold_for_alert=True,
        )
    )
    assert not outcome.failures("GET"), outcome.describe_failures()


def test_faults_05_app_host_cut_off_from_the_web_host(stack, run):
    app, web = stack.apps[0], ", ".join(stack.addresses(stack.web))
    # A table of its own, in front of common's firewall (priority -10): packets to and
    # from the web host vanish (dropped, not refused), as behind a dead switch port.
    rules = f"""
table inet fault_suite {{
    chain input {{
        type filter hook input priority -10; policy accept;
        ip saddr {{ {web} }} drop
    }}
    chain output {{
        type filter hook output priority -10; policy accept;
        ip daddr {{ {web} }} drop
    }}
}}
"""
    outcome = run(
        Fault(
            "app host cut off (DROP)",
            inject=lambda: stack.sh(app, "nft -f -", stdin=rules),
            restore=lambda: stack.sh(app, "nft delete table inet fault_suite || true"),
            hold=max(6.0, 2 * stack.deadline),
        )
    )
    assert not outcome.failures("GET"), outcome.describe_failures()


def test_faults_06_pgbouncer_restarted(stack, run):
    outcome = run(
        Fault(
            "pgbouncer restarted",
            inject=lambda: stack.sh(stack.db, "systemctl restart pgbouncer"),
            ready=stack.pgbouncer_ready,
        )
    )
    assert_answered_within(outcome, stack.deadline)
    assert_recovered_after_ready(outcome)


def test_faults_07_postgresql_stopped_then_started(stack, run):
    version = stack.var(stack.db, "postgresql_version", 15)
    unit = f"postgresql@{version}-main"
    outcome = run(
        Fault(
            "postgresql stopped, started",
            inject=lambda: stack.sh(stack.db, f"systemctl stop {unit}"),
            restore=lambda: stack.sh(stack.db, f"systemctl start {unit}"),
            alert=("PostgresDown", {"host": stack.db}),
            hold_for_alert=True,
            ready=stack.postgres_ready,
        )
    )
    assert_answered_within(outcome, stack.deadline)
    assert_recovered_after_ready(outcome)


def test_faults_08_database_slow_lock_on_products(stack, run):
    seconds = max(5.0, 2 * stack.slow_db_bound)
    # Every read of products (category pages, a user's orders, the popular list when it
    # is not cached) and every order waits for this lock until its statement times out.
    sql = (
        "BEGIN; SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0; "
        "LOCK TABLE products IN ACCESS EXCLUSIVE MODE; "
        f"SELECT pg_sleep({seconds}); COMMIT;"
    )
    held: dict[str, object] = {}

    def hold_lock() -> None:
        began = time.monotonic()
        try:
            stack.psql(sql, timeout=seconds + 30)
        except (AssertionError, subprocess.SubprocessError) as exc:  # reported below
            held["error"] = exc
        held["seconds"] = time.monotonic() - began

    holder = threading.Thread(target=hold_lock)
    outcome = run(
        Fault(
            f"database slow ({seconds:.0f} s lock)",
            inject=holder.start,
            restore=lambda: holder.join(seconds + 40),
        )
    )
    assert not holder.is_alive(), "the lock was still held"
    assert "error" not in held, f"the lock could not be held: {held['error']}"
    assert held["seconds"] >= seconds - 0.5, held
    # The fault bit: some requests waited or failed (else this proves nothing).
    assert any(failure_kind(r) or r["seconds"] > 1 for r in outcome.during()), outcome.row()
    assert_answered_within(outcome, stack.slow_db_bound)


def test_faults_09_db_host_restarted(stack, run):
    outcome = run(
        Fault(
            "db host restarted",
            # Stopped, then started once Prometheus saw it gone: `docker restart` alone can
            # be quicker than a scrape, and then no alert ever sees the outage.
            inject=lambda: stack.docker("stop", "--time", "20", stack.container(stack.db)),
            restore=lambda: stack.docker("start", stack.container(stack.db)),
            alert=("TargetDown", {"host": stack.db}),
            hold_for_alert=True,
            ready=stack.postgres_ready,
        )
    )
    assert_answered_within(outcome, stack.deadline)
    assert_recovered_after_ready(outcome)


def test_faults_10_no_acknowledged_order_is_lost(stack, acknowledged_orders):
    assert len(acknowledged_orders) > 20, "too few orders were written to prove anything"
    ids = ",".join(map(str, sorted(set(acknowledged_orders))))
    # ids are the integers the app answered, nothing a client could inject.
    found = stack.psql(f"SELECT id FROM orders WHERE id IN ({ids});").split()  # noqa: S608
    missing = sorted(set(acknowledged_orders) - set(map(int, found)))
    assert not missing, f"orders answered 201 but not in the database: {missing}"
