"""Behaviour of the app role: the shop service under Gunicorn, run by systemd.

One host holds the app and its data tier: PostgreSQL, PgBouncer and Redis from their
roles. Control IDs (app-NN) name each check. Tests that converge again leave the host as
the scenario's converge left it, so idempotence and check mode still apply afterwards.
"""

import json
import os
import re
import shlex
import shutil
import time
from pathlib import Path

import pytest
from stack_testinfra import Refusals, bearer_header, converge, hosts_in

testinfra_hosts = hosts_in("app")

JOURNAL_UNITS = ["shop.service", "shop.socket"]
LOCAL = "http://127.0.0.1:8000"
CURRENT = "/opt/shop/current"
# The scenario's other roles. Converges in these tests skip their tasks (every role's
# preflight still runs first): the app is what changes here.
OTHER_ROLES = "postgresql,pgbouncer,redis,nginx"
REQUESTS_TOTAL = re.compile(r"^http_requests_total\{(?P<labels>[^}]*)\} (?P<value>[0-9.e+]+)$")


def get(host, path: str) -> tuple[int, str]:
    out = host.run(f"curl -s -m 20 -w '\\n%{{http_code}}' {LOCAL}{path}")
    body, _, code = out.stdout.rpartition("\n")
    return int(code or 0), body


def main_pid(host) -> str:
    return host.run("systemctl show -p MainPID --value shop.service").stdout.strip()


def workers(host) -> int:
    return len(host.run(f"ps --ppid {main_pid(host)} -o pid=").stdout.split())


def wait_for(predicate, timeout: float = 180.0):
    """Poll until predicate() is truthy; returns its last value (no timing is asserted)."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(1)
        value = predicate()
    return value


def vcpus(host) -> int:
    facts = host.ansible("setup", "filter=ansible_processor_vcpus", check=False)
    return int(facts["ansible_facts"]["ansible_processor_vcpus"])


def release(host) -> str:
    return Path(host.file(CURRENT).linked_to).name


def requests_served(host, route: str) -> float:
    _, text = get(host, "/metrics")
    total = 0.0
    for line in text.splitlines():
        match = REQUESTS_TOTAL.match(line)
        if match and f'route="{route}"' in match["labels"]:
            total += float(match["value"])
    return total


def app_converge(*args: str):
    return converge("--skip-tags", OTHER_ROLES, *args)


def converged(*args: str):
    run = app_converge(*args)
    assert run.returncode == 0, run.output[-6000:]
    return run


@pytest.fixture
def request_loop(host):
    """A bounded loop of requests on loopback, running while the test changes things.

    Each request is a new connection; the loop ends when the test ends it or after
    20000 requests, and the status codes (000 for a refused or broken one) are returned.
    It is paced (20 ms between requests): unpaced, a slow converge lets it reach
    app_max_requests, and the worker recycling that follows is not what is tested here.
    """
    # Paths inside the test host, whose /tmp belongs to the test.
    log, flag = "/tmp/probe-codes.log", "/tmp/probe-running"  # noqa: S108
    script = (
        f"touch {flag}; : > {log}; i=0; "
        f"while [ -e {flag} ] && [ $i -lt 20000 ]; do i=$((i+1)); "
        f"curl -s -o /dev/null -m 30 -w '%{{http_code}}\\n' {LOCAL}/health/live >> {log}; "
        "sleep 0.02; done"
    )
    assert host.run(f"systemd-run --unit probe-loop --collect sh -c {shlex.quote(script)}").rc == 0
    assert wait_for(lambda: host.file(log).exists and host.file(log).size > 0, 30)

    def stop() -> list[str]:
        host.run(f"rm -f {flag}")
        wait_for(lambda: host.run("systemctl is-active -q probe-loop").rc != 0, 60)
        return host.file(log).content_string.split()

    yield stop
    host.run(f"rm -f {flag}; systemctl stop probe-loop")


def test_app_01_workers_follow_the_vcpus(host):
    expected = vcpus(host)
    assert workers(host) == expected
    assert f"workers = {expected}\n" in host.file("/etc/shop/gunicorn.conf.py").content_string


def test_app_02_ready_and_serving_the_current_release(host):
    code, body = get(host, "/health/ready")
    assert code == 200, body
    assert json.loads(body) == {"status": "ok", "database": "ok", "redis": "ok"}
    code, body = get(host, "/health/live")
    assert code == 200
    assert json.loads(body)["release"] == release(host)


def test_app_03_listens_on_private_address_and_loopback_only(host, hostvars):
    address = host.ansible("setup", "filter=ansible_default_ipv4", check=False)["ansible_facts"][
        "ansible_default_ipv4"
    ]["address"]
    listening = {
        line.split()[3] for line in host.run("ss -Hltn 'sport = :8000'").stdout.splitlines()
    }
    assert listening == {f"{address}:8000", "127.0.0.1:8000"}
    out = host.run(f"curl -sf -m 20 http://{address}:8000/health/live")
    assert out.rc == 0, out.stderr


def test_app_04_runs_unprivileged_with_its_secrets_closed_to_others(host):
    user = host.user("shop")
    assert user.shell == "/usr/sbin/nologin"
    owners = host.run(f"ps --ppid {main_pid(host)} -o user=").stdout.split()
    assert owners and set(owners) == {"shop"}
    env = host.file("/etc/shop/shop.env")
    assert (env.user, env.group, env.mode) == ("root", "shop", 0o640)
    assert host.run("su -s /bin/sh nobody -c 'cat /etc/shop/shop.env'").rc != 0
    # The release is root's: the service cannot change its own code.
    assert host.run(f"runuser -u shop -- touch {CURRENT}/venv/x").rc != 0


def test_app_05_migrations_ran_before_traffic(host):
    tables = host.run(
        "runuser -u postgres -- psql -d shop -Atc "
        "\"SELECT count(*) FROM pg_tables WHERE schemaname = 'public'\""
    )
    assert int(tables.stdout) >= 4, tables.stderr
    out = host.run(
        f"set -a; . /etc/shop/shop.env; cd /; {CURRENT}/venv/bin/shop current 2>&1",
    )
    assert "(head)" in out.stdout, out.stdout


def test_app_06_metrics_sum_over_all_workers(host):
    before = requests_served(host, "/health/live")
    burst = f"seq 60 | xargs -P 6 -I{{}} curl -s -o /dev/null -m 20 {LOCAL}/health/live"
    assert host.run(burst).rc == 0
    assert requests_served(host, "/health/live") - before == 60
    # More than one worker wrote those counters, and one /metrics answer summed them.
    writers = host.run("ls /run/shop/prometheus").stdout.split()
    pids = {name.rsplit("_", 1)[1].split(".")[0] for name in writers if name.startswith("counter")}
    assert len(pids) >= 2, writers


def test_app_07_sandbox_scores_ok_or_better(host):
    out = host.run("systemd-analyze security --no-pager shop.service")
    summary = out.stdout.strip().splitlines()[-1]
    print(summary)
    match = re.search(r"exposure level for shop\.service: ([0-9.]+) (\w+)", summary)
    assert match, out.stdout[-2000:]
    # systemd rates below 5.0 as OK, below 1.0 SAFE.
    assert float(match[1]) < 5.0 and match[2] in {"OK", "SAFE", "PERFECT"}, summary
    assert host.run("systemd-analyze security --threshold=49 shop.service").rc == 0


def test_app_11_demo_data_is_seeded_once(host):
    # What a full-stack test relies on: users 1..20 and products 1..5.
    for user in (1, 20):
        code, body = get(host, f"/api/users/{user}")
        assert code == 200, body
        assert json.loads(body)["id"] == user
    ids = host.run(
        "runuser -u postgres -- psql -d shop -Atc "
        '"SELECT (SELECT count(*) FROM users WHERE id BETWEEN 1 AND 20), '
        '(SELECT count(*) FROM products WHERE id BETWEEN 1 AND 5)"'
    )
    assert ids.stdout.strip() == "20|5", ids.stderr
    # Seeding again leaves the data alone, and says so.
    out = host.run(
        f"set -a; . /etc/shop/shop.env; cd /; {CURRENT}/venv/bin/shop seed --users 5 --orders 0"
    )
    assert out.rc == 0, out.stderr
    assert "nothing seeded" in out.stdout


@pytest.fixture
def changed_source(tmp_path):
    """The app with its version bumped: a code change, so a new release."""
    app = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"], "app")
    copy = tmp_path / "app"
    ignore = shutil.ignore_patterns(".venv", "dist", "build", ".*_cache", "__pycache__", ".env")
    shutil.copytree(app, copy, ignore=ignore)
    # The copy builds with app/'s virtualenv; unchanged lock times keep it from rebuilding.
    (copy / ".venv").symlink_to(app / ".venv")
    pyproject = copy / "pyproject.toml"
    stat = pyproject.stat()
    pyproject.write_text(pyproject.read_text().replace('version = "0.1.0"', 'version = "0.1.1"'))
    os.utime(pyproject, (stat.st_atime, stat.st_mtime))
    return copy


def test_app_09_new_release_reloads_and_rollback_returns(host, changed_source):
    first, pid = release(host), main_pid(host)
    try:
        converged("-e", f"app_source_dir={changed_source}")
        second = release(host)
        assert second != first and second.startswith("0.1.1-")
        # Same master (a graceful reload), and its new workers run the new code.
        assert main_pid(host) == pid
        assert json.loads(get(host, "/health/live")[1])["release"] == second
        assert json.loads(get(host, "/openapi.json")[1])["info"]["version"] == "0.1.1"

        converged("-e", "app_rollback=true")
        assert release(host) == first
        assert json.loads(get(host, "/health/live")[1])["release"] == first
        assert json.loads(get(host, "/openapi.json")[1])["info"]["version"] == "0.1.0"
        assert host.file(f"/opt/shop/releases/{second}/venv/.installed").exists
    finally:
        if release(host) != first:
            converged()
    # Back on the scenario's own release, a normal run has nothing to do.
    assert not app_converge().any_changed


BAD_VARIABLES = [
    (
        json.dumps({"app_workers": 500, "pgbouncer_max_client_conn": 1000}),
        "pgbouncer_max_client_conn",
    ),
    ("app_port=70000", "app_port 1-65535"),
    ("vault_db_app_password=short", "vault_db_app_password"),
    ("app_releases_keep=1", "app_releases_keep >= 2"),
    ("app_vcpus=many", "app_vcpus"),
    ("vault_app_token_secret=short", "vault_app_token_secret"),
    ("app_token_ttl_seconds=30", "between 60 and 86400"),
]
BAD_VARIABLE_RUNS = Refusals(["-e", extra] for extra, _ in BAD_VARIABLES)


@pytest.mark.parametrize(("extra", "message"), BAD_VARIABLES)
def test_app_10_bad_variables_fail_before_any_change(extra, message):
    BAD_VARIABLE_RUNS.assert_refused("-e", extra, message=message)


# A test value, as the scenario's own vault values are.
ROTATED_SECRET = "rotated-token-secret-of-the-app-scenario"  # noqa: S105


def worker_pids(host) -> set[str]:
    pid = main_pid(host)
    if pid in ("", "0"):
        return set()
    return set(host.run(f"ps --ppid {pid} -o pid=").stdout.split())


def replaced(host, workers_before: set[str], count: int) -> bool:
    """Every worker is new (count of them), so every one read the environment again, and
    the service answers."""
    now = worker_pids(host)
    return len(now) == count and not now & workers_before and get(host, "/health/live")[0] == 200


def me(host, header_file: str) -> int:
    """Status of GET /api/users/me with the bearer header in that file (curl reads it)."""
    out = host.run(
        f"curl -s -m 20 -o /dev/null -w '%{{http_code}}' -H @{header_file} {LOCAL}/api/users/me"
    )
    return int(out.stdout or 0)


def test_app_08_12_more_workers_and_a_rotated_key_in_one_reload_fail_no_request(
    host, hostvars, request_loop, tmp_path
):
    """app-08: a vCPU override reloads (same master, new workers) without a failed request.
    app-12: after a key rotation, tokens of the new and the previous key work; once the
    previous key is dropped, a token of a key listed nowhere gets 401.

    One converge applies both, and one converge goes back: each converge of the app role
    costs minutes of CI, and both changes take the same path (a reload)."""
    default, pid = vcpus(host), main_pid(host)
    old = hostvars(host.backend.get_hostname()).get("vault_app_token_secret")
    assert old, "the scenario sets vault_app_token_secret"
    before = bearer_header(host, 1, LOCAL)
    assert me(host, before) == 200
    # Through a file: the keys stay off the command line.
    values = tmp_path / "vars.json"
    values.write_text(
        json.dumps(
            {
                "app_vcpus": default + 1,
                "vault_app_token_secret": ROTATED_SECRET,
                "vault_app_token_previous_secret": old,
            }
        )
    )
    values.chmod(0o600)
    try:
        workers_before = worker_pids(host)
        converged("-e", f"@{values}")
        # A reload: new workers (one more), which read the environment file again.
        assert wait_for(lambda: replaced(host, workers_before, default + 1), 60), workers(host)
        codes = request_loop()
        assert main_pid(host) == pid, "restarted, not reloaded"
        assert codes and set(codes) == {"200"}, f"{len(codes)} requests: {sorted(set(codes))}"
        after = bearer_header(host, 2, LOCAL)
        assert me(host, after) == 200
        assert me(host, before) == 200, "a token of the previous key was refused"
    finally:
        workers_before = worker_pids(host)
        converged()
        wait_for(lambda: replaced(host, workers_before, default), 60)
    assert workers(host) == default
    # Back on the scenario's key with no previous one: a token of the rotated key, now
    # listed nowhere, is refused (a dropped key), and the first works again.
    assert me(host, after) == 401, "a token of a dropped key was accepted"
    assert me(host, before) == 200
