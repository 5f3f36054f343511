"""The whole stack, end to end through nginx, as a user and an operator see it.

Control IDs (stack-NN) name each check. Requests start on web1 and go to its loopback
(nginx on 443), so every one crosses nginx -> app -> PgBouncer -> PostgreSQL / Redis.
Writes and a user's orders need a bearer token: tests log seeded demo users in through
the site (stack_testinfra.bearer_header), and curl reads the header from a file on web1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from stack_testinfra import (
    assert_refused,
    bearer_header,
    inventory_dir,
    prometheus_auth,
    run_playbook,
    token_file,
)

testinfra_hosts = ["web1"]
JOURNAL_UNITS = ["nginx"]
APP_HOSTS = ["app1", "app2"]
PROJECT = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
SITE = "https://127.0.0.1"
CURL = "curl -sk --max-time 20"
# Label values may hold braces themselves (route="/api/users/{user_id}").
METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? ([-+0-9.eE]+|NaN|[+-]Inf)$")
# The next release carries a no-op migration, so that its deploy runs `shop migrate`, and
# a bounded recorder writes `ps -eo args` every 0.1 s (at most 6000 samples) on the app and
# db hosts meanwhile: test_stack_secrets (secrets-stack-03) searches it for vault values.
PS_LOG = "/root/secrets-ps.log"
PS_UNIT = "secrets-ps-recorder"
PS_HOSTS = [*APP_HOSTS, "db1"]
PS_LOOP = (
    f": > {PS_LOG}; i=0; while [ $i -lt 6000 ]; do i=$((i+1)); "
    f"ps -eo args >> {PS_LOG}; sleep 0.1; done"
)
REVISION = re.compile(r'^revision(?:: str)? = "([^"]+)"', re.MULTILINE)
DOWN_REVISION = re.compile(r'^down_revision(?:: [^=]+)? = "([^"]+)"', re.MULTILINE)
NOOP_REVISION = "stack_next_noop"
NOOP_MIGRATION = '''"""A no-op revision, so that the next release's deploy migrates (tests only).

Revision ID: {revision}
Revises: {down}
"""

from alembic import op

revision: str = "{revision}"
down_revision: str | None = "{down}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("SELECT 1")


def downgrade() -> None:
    pass
'''


def schema_head(versions: Path) -> str:
    revisions, parents = set(), set()
    for path in versions.glob("*.py"):
        text = path.read_text()
        revisions.update(REVISION.findall(text))
        parents.update(DOWN_REVISION.findall(text))
    heads = revisions - parents
    assert len(heads) == 1, heads
    return heads.pop()


def schema_revision(db_host) -> str:
    out = db_host.run(
        "runuser -u postgres -- psql -d shop -Atc 'SELECT version_num FROM alembic_version'"
    )
    assert out.rc == 0, out.stderr
    return out.stdout.strip()


def curl(host, path: str, *options: str) -> tuple[int, dict[str, str], str]:
    """One request through nginx on web1; returns status, lower-cased headers and body."""
    out = host.run(f"{CURL} -D /dev/stderr {' '.join(options)} '{SITE}{path}'")
    assert out.rc == 0, out.stderr
    blocks = [b for b in out.stderr.replace("\r", "").split("\n\n") if b.startswith("HTTP/")]
    lines = blocks[-1].splitlines()
    status = int(lines[0].split()[1])
    found = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        found[name.strip().lower()] = value.strip()
    return status, found, out.stdout


def get(
    host, path: str, headers: tuple[str, ...] = (), body: bool = True
) -> tuple[int, dict[str, str], str]:
    """GET; pass body=False for a compressed or binary body."""
    return curl(host, path, *(f"-H '{h}'" for h in headers), "" if body else "-o /dev/null")


def send(
    host, method: str, path: str, data: str | None = None, as_user: str | None = None
) -> tuple[int, dict[str, str], str]:
    """A request with a JSON body and, as_user, the bearer header file bearer_header()
    wrote on web1 (curl reads it from there: the token is on no command line)."""
    options = [f"-X {method}"]
    if as_user:
        options.append(f"-H @{as_user}")
    if data is not None:
        options.append(f"-H 'Content-Type: application/json' -d '{data}'")
    return curl(host, path, *options)


ORDER = '{"items": [{"product_id": 1, "quantity": 2}]}'
ORDERS_COUNT = "runuser -u postgres -- psql -d shop -tAc 'SELECT count(*) FROM orders'"


def orders_in_database(scenario_host) -> int:
    out = scenario_host("db1").run(ORDERS_COUNT)
    assert out.rc == 0, out.stderr
    return int(out.stdout)


def get_json(host, path: str):
    status, _, body = get(host, path)
    assert status == 200, body
    return json.loads(body)


def metric_sum(scenario_host, name: str, **labels: str) -> float:
    """Sum of one metric over both app hosts, read from each host's /metrics."""
    total = 0.0
    for app in APP_HOSTS:
        total += host_metric(scenario_host(app), name, **labels)
    return total


def host_metric(app_host, name: str, **labels: str) -> float:
    out = app_host.run("curl -s --max-time 10 http://127.0.0.1:8000/metrics")
    assert out.rc == 0, out.stderr
    total = 0.0
    for line in out.stdout.splitlines():
        match = METRIC_LINE.match(line)
        if not match or match[1] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match[2] or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match[3])
    return total


def release_of(app_host) -> str:
    out = app_host.run("curl -s --max-time 10 http://127.0.0.1:8000/health/live")
    assert out.rc == 0, out.stderr
    return json.loads(out.stdout)["release"]


def test_stack_01_static_asset_arrives_with_cache_headers(host):
    manifest = get_json(host, "/static/manifest.json")
    css = next(v for k, v in manifest.items() if k.endswith(".css"))
    status, headers, _ = get(host, f"/static/{css}", ("Accept-Encoding: gzip",), body=False)
    assert status == 200
    assert headers["cache-control"] == "public, max-age=31536000, immutable"
    assert headers.get("content-encoding") == "gzip"
    assert "accept-encoding" in headers.get("vary", "").lower()
    assert headers.get("x-content-type-options") == "nosniff"
    assert headers.get("strict-transport-security", "").startswith("max-age=")


def test_stack_02_reads_go_through_pgbouncer_then_redis(host, scenario_host, hostvars):
    db = scenario_host("db1")
    stats_password = hostvars("db1")["vault_pgbouncer_stats_password"]
    address = db.run("hostname -I").stdout.split()[0]

    # The password reaches psql in a root-only PGPASSFILE written through standard input:
    # never on a command line (ps, sudo's journal lines).
    passfile = "/root/pgbouncer-stats.pgpass"
    subprocess.run(
        ["docker", "exec", "-i", "db1", "sh", "-c", f"umask 077 && cat > {passfile}"],
        input=f"*:6432:pgbouncer:pgbouncer_stats:{stats_password}\n",
        text=True,
        check=True,
    )

    def pgbouncer_transactions() -> int:
        out = db.run(
            "PGPASSFILE=%s psql -h %s -p 6432 -U pgbouncer_stats -d pgbouncer -AF, -c 'SHOW STATS'",
            passfile,
            address,
        )
        assert out.rc == 0, out.stderr
        rows = [line.split(",") for line in out.stdout.splitlines() if "," in line]
        header, data = rows[0], rows[1:]
        return sum(int(row[header.index("total_xact_count")]) for row in data if row[0] == "shop")

    before = pgbouncer_transactions()
    user = get_json(host, "/api/users/1")
    assert set(user) == {"id", "name"}
    assert pgbouncer_transactions() > before, "the read did not pass PgBouncer"

    hits = metric_sum(scenario_host, "shop_cache_requests_total", result="hit")
    first = get_json(host, "/api/products/popular?limit=5")
    second = get_json(host, "/api/products/popular?limit=5")
    assert first == second and len(first) == 5
    assert metric_sum(scenario_host, "shop_cache_requests_total", result="hit") > hits


def test_stack_03_an_order_with_a_token_is_placed_for_that_user(host, scenario_host):
    as_user1 = bearer_header(host, 1)
    status, _, body = send(host, "GET", "/api/users/me", as_user=as_user1)
    assert status == 200, body
    assert json.loads(body)["id"] == 1
    status, _, body = send(host, "POST", "/api/orders", ORDER, as_user=as_user1)
    assert status == 201, body
    order = json.loads(body)
    assert order["id"] > 0
    owner = scenario_host("db1").run(
        "runuser -u postgres -- psql -d shop -tAc 'SELECT user_id FROM orders WHERE id = %s'",
        str(order["id"]),
    )
    assert owner.stdout.strip() == "1", owner.stdout + owner.stderr
    status, _, body = send(host, "GET", "/api/users/1/orders", as_user=as_user1)
    assert status == 200, body
    assert order["id"] in [o["id"] for o in json.loads(body)["orders"]]


def test_stack_04_both_app_hosts_receive_traffic(host, scenario_host):
    def served() -> dict[str, float]:
        route = "/api/users/{user_id}"
        return {
            app: host_metric(scenario_host(app), "http_requests_total", route=route)
            for app in APP_HOSTS
        }

    before = served()
    for user_id in range(1, 21):
        get_json(host, f"/api/users/{user_id}")
    after = served()
    assert all(after[a] > before[a] for a in APP_HOSTS), (before, after)


def test_stack_05_prometheus_sees_every_target_up(scenario_host):
    mon = scenario_host("mon1")
    # Prometheus listens on the host's private address only.
    address = mon.run("hostname -I").stdout.split()[0]
    deadline = time.monotonic() + 180
    while True:
        out = mon.run(
            f"curl -s --max-time 10 {prometheus_auth(mon)} https://{address}:9090/api/v1/targets"
        )
        assert out.rc == 0, out.stderr
        targets = json.loads(out.stdout)["data"]["activeTargets"]
        down = [
            (t["labels"]["job"], t["labels"].get("instance"), t["lastError"])
            for t in targets
            if t["health"] != "up"
        ]
        if not down or time.monotonic() > deadline:
            break
        time.sleep(5)
    jobs = {t["labels"]["job"] for t in targets}
    assert {"node", "app"} <= jobs, jobs
    assert not down, down


# A bounded load on web1's loopback: 4 threads, a new connection per request, until the
# test creates the stop file (or 600 s pass). Counts every unexpected status or error as
# failed. One request in twelve places an order and one reads the orders, as the demo
# user whose token file and id load.py gets: a token from before the deploy still works
# after it, and no write is lost to the switch.
LOAD_DIR = "/root/stack-load"
LOAD_USER = 3
LOAD_SCRIPT = r"""
import http.client, json, os, ssl, sys, threading, time
ctx = ssl._create_unverified_context()
with open(sys.argv[1]) as f:
    bearer = {"Authorization": "Bearer " + f.read().strip()}
user = int(sys.argv[2])
order = json.dumps({"items": [{"product_id": 2, "quantity": 1}]}).encode()
public = ("/api/products/popular?limit=5", "/api/users/7", "/health/live")
reads = [("GET", path, None, 200) for path in public]
requests = reads * 3 + [
    ("GET", f"/api/users/{user}/orders", None, 200),
    ("POST", "/api/orders", order, 201),
    ("GET", "/health/live", None, 200),
]
stop_file, deadline = "stop", time.monotonic() + 600
counts = {"total": 0, "failed": 0, "orders": 0, "errors": [], "releases": []}
lock = threading.Lock()

def worker(n):
    i = n
    while not os.path.exists(stop_file) and time.monotonic() < deadline:
        # Paced under nginx's per-IP limit_req (20 r/s): this measures the deploy, not the limiter.
        time.sleep(0.25)
        method, path, body, wanted = requests[i % len(requests)]
        i += 1
        headers = {"Connection": "close"}
        if body is not None or path.endswith("/orders"):
            headers.update(bearer)
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            conn = http.client.HTTPSConnection("127.0.0.1", 443, context=ctx, timeout=30)
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            answer = resp.read()
            conn.close()
            ok, what = resp.status == wanted, f"{resp.status} {method} {path}"
        except Exception as exc:
            ok, answer, what = False, b"", f"{type(exc).__name__} {method} {path}: {exc}"
        with lock:
            counts["total"] += 1
            if not ok:
                counts["failed"] += 1
                counts["errors"] = (counts["errors"] + [what])[-20:]
            elif method == "POST":
                counts["orders"] += 1
            elif path == "/health/live":
                release = json.loads(answer)["release"]
                if release not in counts["releases"]:
                    counts["releases"].append(release)

threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
with open("load.json.partial", "w") as f:
    json.dump(counts, f)
os.rename("load.json.partial", "load.json")
"""


@pytest.fixture(scope="module")
def new_release_source(tmp_path_factory):
    """A copy of app/ with a code change: what a developer's next commit looks like."""
    src = tmp_path_factory.mktemp("next") / "app"
    shutil.copytree(
        PROJECT / "app",
        src,
        ignore=shutil.ignore_patterns(".venv", "dist", "__pycache__", ".*_cache"),
    )
    (src / ".venv").symlink_to(PROJECT / "app" / ".venv")
    init = src / "src" / "shop" / "__init__.py"
    init.write_text(init.read_text() + "\n# next release\n")
    # and a (no-op) migration, so that the deploy migrates.
    versions = src / "src" / "shop" / "alembic" / "versions"
    head = schema_head(versions)
    (versions / "9999_next_noop.py").write_text(
        NOOP_MIGRATION.format(revision=NOOP_REVISION, down=head)
    )
    # and a style change: a new fingerprinted stylesheet, as `make -C app fingerprint` makes.
    css = src / "assets" / "app.css"
    css.write_text(css.read_text() + "\n/* next release */\n")
    made = subprocess.run(
        ["make", "-s", "-C", str(src), "fingerprint"], capture_output=True, text=True, check=False
    )
    assert made.returncode == 0, made.stdout + made.stderr
    return src


def test_stack_06_rolling_deploy_drops_no_request(host, scenario_host, new_release_source):
    old = {a: release_of(scenario_host(a)) for a in APP_HOSTS}
    assert len(set(old.values())) == 1, old
    old_css = get_json(host, "/static/manifest.json")["app.css"]
    new_css = json.loads((new_release_source / "static" / "manifest.json").read_text())["app.css"]
    assert new_css != old_css

    host.run(f"rm -rf {LOAD_DIR} && mkdir -p {LOAD_DIR}")
    host.run(f"cat > {LOAD_DIR}/load.py <<'EOF'\n{LOAD_SCRIPT}\nEOF")
    bearer_header(host, LOAD_USER)
    started = host.run(
        f"systemd-run --unit=stack-load --working-directory={LOAD_DIR} "
        f"--property=RuntimeMaxSec=700 python3 load.py {token_file(LOAD_USER)} {LOAD_USER}"
    )
    assert started.rc == 0, started.stderr
    for name in PS_HOSTS:
        recorder = scenario_host(name).run(
            f"systemd-run --unit {PS_UNIT} --collect --property=RuntimeMaxSec=900 sh -c '{PS_LOOP}'"
        )
        assert recorder.rc == 0, recorder.stderr
    try:
        time.sleep(5)
        deploy = run_playbook(
            str(PROJECT / "playbooks/deploy.yml"), "-e", f"app_source_dir={new_release_source}"
        )
        time.sleep(5)
    finally:
        host.run(f"touch {LOAD_DIR}/stop")
        for name in PS_HOSTS:
            scenario_host(name).run(f"systemctl stop {PS_UNIT}")
    for _ in range(60):
        if host.file(f"{LOAD_DIR}/load.json").exists:
            break
        time.sleep(1)
    load = json.loads(host.file(f"{LOAD_DIR}/load.json").content_string)
    print("load during the deploy:", json.dumps(load))
    assert deploy.returncode == 0, deploy.output[-6000:]

    new = {a: release_of(scenario_host(a)) for a in APP_HOSTS}
    assert len(set(new.values())) == 1 and set(new.values()) != set(old.values()), (old, new)
    # The deploy migrated (the release's no-op revision), from the first app host.
    assert schema_revision(scenario_host("db1")) == NOOP_REVISION
    assert load["total"] > 50, load
    assert load["failed"] == 0, load
    assert load["orders"] > 3, load
    # The load saw the switch happen: the old release answered, then the new one.
    assert load["releases"][0] == old["app1"] and load["releases"][-1] == new["app1"], load
    # The deploy left `previous` at the release that served before it: the rollback's target.
    for a in APP_HOSTS:
        previous = scenario_host(a).run("readlink /opt/shop/previous").stdout.strip()
        assert previous.rsplit("/", 1)[-1] == old[a], (a, previous)

    # The release's new stylesheet is cached for good; pages of the old release still
    # find theirs.
    assert get_json(host, "/static/manifest.json")["app.css"] == new_css
    status, headers, _ = get(host, f"/static/{new_css}")
    assert status == 200
    assert headers["cache-control"] == "public, max-age=31536000, immutable"
    assert get(host, f"/static/{old_css}")[0] == 200

    # Rollback is the documented way back: to the release that served before the deploy,
    # which leaves the stack as converged.
    try:
        back = run_playbook(str(PROJECT / "playbooks/deploy.yml"), "-e", "app_rollback=true")
        assert back.returncode == 0, back.output[-6000:]
        assert {a: release_of(scenario_host(a)) for a in APP_HOSTS} == old
    finally:
        # A rollback migrates nothing back: the no-op revision stays recorded, and the old
        # release's next deploy would not know it. Back to the converge's revision.
        head = schema_head(PROJECT / "app" / "src" / "shop" / "alembic" / "versions")
        stamp = f"UPDATE alembic_version SET version_num = '{head}'"  # noqa: S608 - a revision id
        scenario_host("db1").run(f'runuser -u postgres -- psql -d shop -c "{stamp}"')
    assert schema_revision(scenario_host("db1")) == head


def test_stack_07_backup_then_restore_brings_the_data_back(host, scenario_host):
    db = scenario_host("db1")
    count = "runuser -u postgres -- psql -d shop -tAc 'SELECT count(*) FROM orders'"
    backup = run_playbook(str(PROJECT / "playbooks/backup.yml"))
    assert backup.returncode == 0, backup.output[-6000:]
    before = int(db.run(count).stdout)

    body = '{"items": [{"product_id": 3, "quantity": 1}]}'
    status, _, answer = send(host, "POST", "/api/orders", body, as_user=bearer_header(host, 2))
    assert status == 201, answer
    assert int(db.run(count).stdout) == before + 1

    restore = run_playbook(str(PROJECT / "playbooks/restore.yml"), "-e", "restore_dump=latest")
    assert restore.returncode == 0, restore.output[-6000:]
    assert int(db.run(count).stdout) == before
    assert get_json(host, "/health/ready")["database"] == "ok"


def test_stack_08_a_broken_connection_budget_is_refused_before_any_change():
    # site.yml's first play checks every role on every host: the db tier's budget stops
    # the run before common, the first tier, changes anything.
    assert_refused("-e", "pgbouncer_max_client_conn=10", message="pgbouncer_max_client_conn")


@pytest.mark.parametrize(("target", "port"), [("db1", 6432), ("cache1", 6379)])
def test_stack_09_only_app_hosts_reach_pgbouncer_and_redis(scenario_host, target, port):
    # PgBouncer and Redis have no address rules of their own: common's firewall keeps
    # every host but the app hosts out.
    address = scenario_host(target).run("hostname -I").stdout.split()[0]
    probe = f"timeout 5 bash -c '</dev/tcp/{address}/{port}'"
    assert scenario_host("app1").run(probe).rc == 0
    assert scenario_host("web1").run(probe).rc != 0


def test_stack_10_bench_smoke_applies_profiles_loads_and_reports(scenario_host, tmp_path):
    # `make bench-smoke`'s run, against this scenario's hosts: the profiles apply through
    # the real playbooks (noindex drops the secondary indexes), wrk and the open-loop
    # generator send load through nginx, and the report parses. No timing thresholds: a
    # point counts when it served requests without errors.
    proc = subprocess.run(
        [
            str(PROJECT / "bench/run.py"),
            "--smoke",
            "--inventory",
            inventory_dir(),
            "--prefix",
            "",
            "--network",
            "default-net",
            "--out",
            str(tmp_path),
        ],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        # A bound so that it stops by itself, not a timing check: the smoke applies its
        # playbooks seven times (a minute each on a loaded CI machine; 600 s was hit).
        timeout=1200,
        check=False,
        # As the project's ansible.cfg does for make up: facts cached between the runner's
        # playbooks, so app.yml alone knows the db and cache hosts' addresses.
        env={
            **os.environ,
            "ANSIBLE_GATHERING": "smart",
            "ANSIBLE_CACHE_PLUGIN": "ansible.builtin.jsonfile",
            "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(tmp_path / "facts"),
        },
    )
    print(proc.stdout[-4000:])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stem = next(tmp_path.glob("*.json")).with_suffix("")
    report = json.loads(stem.with_suffix(".json").read_text())
    assert report["mode"] == "smoke" and not report["failed"]
    served = {
        (point["profile"], point["endpoint"])
        for point in report["points"]
        if point["median"]["rps"] and point["median"]["errors"] == 0
    }
    assert {("tuned", "popular"), ("tuned", "category"), ("noindex", "category")} <= served
    assert stem.with_suffix(".png").stat().st_size > 0
    # The run ends on tuned: the indexes noindex dropped are back.
    indexes = scenario_host("db1").run(
        "sudo -u postgres psql -d shop -Atc "
        "\"SELECT indexname FROM pg_indexes WHERE indexname = 'ix_products_category_id'\""
    )
    assert indexes.stdout.strip() == "ix_products_category_id"


def test_stack_11_an_order_without_a_token_is_refused_and_not_written(host, scenario_host):
    before = orders_in_database(scenario_host)
    status, headers, body = send(host, "POST", "/api/orders", ORDER)
    assert status == 401, body
    assert headers.get("www-authenticate", "").startswith("Bearer"), headers
    # A made-up token is no better than none.
    status, headers, body = curl(
        host,
        "/api/orders",
        "-H 'Authorization: Bearer not.a.token'",
        f"-H 'Content-Type: application/json' -d '{ORDER}'",
    )
    assert status == 401, body
    assert headers.get("www-authenticate", "").startswith("Bearer"), headers
    assert orders_in_database(scenario_host) == before


def test_stack_12_another_users_orders_are_not_found(host):
    as_user1 = bearer_header(host, 1)
    assert send(host, "GET", "/api/users/1/orders", as_user=as_user1)[0] == 200
    status, _, other = send(host, "GET", "/api/users/2/orders", as_user=as_user1)
    assert status == 404, other
    # The same answer as for a user that does not exist: nothing tells the two apart.
    status, _, missing = send(host, "GET", "/api/users/999999/orders", as_user=as_user1)
    assert status == 404, missing
    assert json.loads(other).keys() == json.loads(missing).keys()
    status, headers, _ = send(host, "GET", "/api/users/2/orders")
    assert status == 401 and headers.get("www-authenticate", "").startswith("Bearer")


def test_stack_13_an_order_naming_a_user_is_refused(host, scenario_host):
    # The user comes from the token: a body that names one, even the caller, is refused.
    as_user1 = bearer_header(host, 1)
    before = orders_in_database(scenario_host)
    for user in (2, 1):
        body = f'{{"user_id": {user}, "items": [{{"product_id": 1, "quantity": 1}}]}}'
        status, _, answer = send(host, "POST", "/api/orders", body, as_user=as_user1)
        assert status == 422, answer
    assert orders_in_database(scenario_host) == before
