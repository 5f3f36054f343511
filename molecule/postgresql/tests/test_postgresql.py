"""Behaviour of the postgresql role: a db host, an allowed app host, a refused web host.

Control IDs (postgresql-NN) name each check.
"""

import json
import re

import pytest
from stack_testinfra import assert_refused, converge

testinfra_hosts = ["postgresql-db"]
JOURNAL_UNITS = ["postgresql@15-main", "prometheus-postgres-exporter", "postgresql-backup"]
DB, APP, WEB = "postgresql-db", "postgresql-app", "postgresql-web"


# Only the server settings (every other feature's tag skipped), to keep these runs short
# on a busy test machine. No --limit: preflight and pg_hba need every host's facts.
SETTINGS_ONLY = (
    "--skip-tags",
    "common,postgresql_install,postgresql_hba,postgresql_databases,postgresql_indexes,"
    "postgresql_backup,postgresql_exporter",
)

# Only the indexes (the include in the shared converge has no tags, so skip the rest).
INDEXES_SKIP = (
    "common,postgresql_install,postgresql_settings,postgresql_hba,postgresql_databases,"
    "postgresql_backup,postgresql_exporter"
)


def sql(host, query: str, db: str = "shop") -> str:
    """Run a query as the postgres superuser over the local socket (peer)."""
    out = host.run("runuser -u postgres -- psql -XAtq -d %s -c %s", db, query)
    assert out.rc == 0, out.stderr
    return out.stdout.strip()


@pytest.fixture(scope="module")
def secret(hostvars):
    """The scenario's test value of a vault password (molecule.yml)."""
    return lambda name: hostvars(DB)[f"vault_db_{name}_password"]


def tcp(host, query: str, password: str, user: str = "shop_app", server: str = DB):
    """Run a query over TCP with a password, as a remote client would."""
    return host.run(
        "PGPASSWORD=%s PGCONNECT_TIMEOUT=5 psql -XAtq -h %s -U %s -d shop -c %s",
        password,
        server,
        user,
        query,
    )


def started(host) -> str:
    return sql(host, "SELECT pg_postmaster_start_time()")


def test_postgresql_01_settings_sized_from_the_host_are_live(host):
    mem_mb = int(re.search(r"MemTotal:\s+(\d+)", host.file("/proc/meminfo").content_string)[1])
    mem_mb //= 1024
    vcpus = int(host.run("nproc").stdout)
    shared_mb = int(mem_mb * 0.25)
    max_conn = max(vcpus * 4, 20) + 3 + 15
    mib = 1024 * 1024
    expected = {
        "shared_buffers": str(shared_mb * mib),
        "effective_cache_size": str(int(mem_mb * 0.75) * mib),
        "maintenance_work_mem": str(min(mem_mb // 16, 2048) * mib),
        "work_mem": str(max((mem_mb - shared_mb) * 1024 // (max_conn * 4), 4096) * 1024),
        "max_connections": str(max_conn),
        "max_parallel_workers": str(vcpus),
        "random_page_cost": "1.1",
        "password_encryption": "scram-sha-256",
        "shared_preload_libraries": "pg_stat_statements",
        "log_min_duration_statement": "500ms",
        "max_wal_size": "4GB",
        "checkpoint_completion_target": "0.9",
    }
    memory = {"shared_buffers", "effective_cache_size", "maintenance_work_mem", "work_mem"}
    live = {
        name: sql(
            host,
            f"SELECT pg_size_bytes(current_setting('{name}'))"
            if name in memory
            else f"SHOW {name}",
        )
        for name in expected
    }
    assert live == expected
    assert sql(host, "SELECT count(*) FROM pg_settings WHERE pending_restart") == "0"


def test_postgresql_02_listens_on_loopback_and_private_address_only(host):
    listening = host.run("ss -Hltn sport = :5432").stdout.split("\n")
    addresses = sorted(line.split()[3].rsplit(":", 1)[0] for line in listening if line)
    private = host.run("getent hosts %s", DB).stdout.split()[0]
    assert addresses == sorted(["127.0.0.1", private])


def test_postgresql_03_app_role_connects_over_tcp_with_scram(scenario_host, secret):
    out = tcp(scenario_host(APP), "SELECT current_user", secret("app"))
    assert out.rc == 0, out.stderr
    assert out.stdout.strip() == "shop_app"
    db = scenario_host(DB)
    stored = sql(db, "SELECT rolpassword FROM pg_authid WHERE rolname = 'shop_app'")
    assert stored.startswith("SCRAM-SHA-256$")
    rules = sql(db, "SELECT DISTINCT auth_method FROM pg_hba_file_rules WHERE type = 'host'")
    assert rules.split() == ["scram-sha-256"]


def test_postgresql_04_app_role_is_least_privilege(scenario_host, secret):
    app = scenario_host(APP)
    query = "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = current_user"
    out = tcp(app, query, secret("app"))
    assert out.stdout.strip() == "f|f|f", out.stderr
    out = tcp(app, "CREATE DATABASE sneaky", secret("app"))
    assert out.rc != 0 and "permission denied to create database" in out.stderr
    out = tcp(app, "CREATE TABLE public.sneaky (id int)", secret("app"))
    assert out.rc != 0 and "permission denied for schema public" in out.stderr


def test_postgresql_05_wrong_password_refused(scenario_host, secret):
    out = tcp(scenario_host(APP), "SELECT 1", secret("app") + "-wrong")
    assert out.rc != 0
    assert 'password authentication failed for user "shop_app"' in out.stderr


def test_postgresql_06_host_outside_the_allowed_groups_refused(scenario_host, secret):
    # The web host reaches 5432 (the scenario opens the firewall for it): pg_hba refuses.
    out = tcp(scenario_host(WEB), "SELECT 1", secret("app"))
    assert out.rc != 0
    assert "no pg_hba.conf entry for host" in out.stderr, out.stderr
    # The monitoring role is allowed from the database host's loopback only.
    out = tcp(scenario_host(APP), "SELECT 1", secret("monitor"), user="shop_monitor")
    assert out.rc != 0 and "no pg_hba.conf entry for host" in out.stderr, out.stderr


@pytest.fixture(scope="module")
def orders(scenario_host, secret):
    """The table the declared indexes are for, seeded by the owner role (as migrations would)."""
    db = scenario_host(DB)
    seed = """
        CREATE TABLE IF NOT EXISTS orders (
            id bigserial PRIMARY KEY, reference text NOT NULL, customer_id int NOT NULL,
            status text NOT NULL, created_at timestamptz NOT NULL);
        INSERT INTO orders (reference, customer_id, status, created_at)
        SELECT 'ref-' || g, g % 5000, CASE WHEN g % 20 = 0 THEN 'open' ELSE 'done' END,
               now() - g * interval '1 minute'
        FROM generate_series(1, 200000) g
        WHERE NOT EXISTS (SELECT 1 FROM orders);
        ANALYZE orders;
    """
    out = tcp(db, seed, secret("owner"), user="shop_owner", server="127.0.0.1")
    assert out.rc == 0, out.stderr
    return converge("--skip-tags", INDEXES_SKIP)


def test_postgresql_07_declared_indexes_built_and_used(scenario_host, secret, orders):
    assert orders.returncode == 0, orders.output[-4000:]
    db = scenario_host(DB)
    indexes = sql(
        db,
        "SELECT i.relname, x.indisunique, x.indisvalid, pg_get_expr(x.indpred, x.indrelid) "
        "FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
        "WHERE x.indrelid = 'orders'::regclass AND NOT x.indisprimary ORDER BY 1",
    )
    assert indexes.splitlines() == [
        "orders_open_customer_idx|f|t|(status = 'open'::text)",
        "orders_reference_key|t|t|",
    ]
    # The app's role reads the owner's table (default privileges) and the planner picks
    # the declared indexes.
    app = scenario_host(APP)
    plan = tcp(app, "EXPLAIN SELECT * FROM orders WHERE reference = 'ref-4242'", secret("app"))
    assert plan.rc == 0, plan.stderr
    assert "orders_reference_key" in plan.stdout, plan.stdout
    plan = tcp(
        app,
        "EXPLAIN SELECT id FROM orders WHERE status = 'open' AND customer_id = 40 "
        "ORDER BY created_at DESC LIMIT 10",
        secret("app"),
    )
    assert "orders_open_customer_idx" in plan.stdout, plan.stdout


def test_postgresql_08_backup_timer_dumps_restorable_archives(host):
    assert host.service("postgresql-backup.timer").is_enabled
    assert host.service("postgresql-backup.timer").is_running
    # Older dumps beyond postgresql_backup_keep (3 in this scenario) are removed.
    for stamp in ("20000101T000000Z", "20000102T000000Z", "20000103T000000Z"):
        host.run("runuser -u postgres -- touch /var/backups/postgresql/shop-%s.dump", stamp)
    out = host.run("systemctl start postgresql-backup.service")
    assert out.rc == 0, out.stderr
    dumps = sorted(host.file("/var/backups/postgresql").listdir())
    assert len(dumps) == 3, dumps
    assert "shop-20000101T000000Z.dump" not in dumps
    newest = f"/var/backups/postgresql/{dumps[-1]}"
    assert host.file(newest).user == "postgres" and host.file(newest).mode == 0o600
    listing = host.run("pg_restore --list %s", newest)
    assert listing.rc == 0, listing.stderr
    assert "dbname: shop" in listing.stdout
    assert "Format: CUSTOM" in listing.stdout


def test_postgresql_09_exporter_reports_the_server_up(host):
    private = host.run("getent hosts %s", DB).stdout.split()[0]
    out = host.run("curl -sf -m 5 http://%s:9187/metrics", private)
    assert out.rc == 0, out.stderr
    assert "\npg_up 1\n" in out.stdout
    monitor = sql(
        host,
        "SELECT pg_has_role('shop_monitor', 'pg_monitor', 'member'), "
        "rolsuper FROM pg_roles WHERE rolname = 'shop_monitor'",
    )
    assert monitor == "t|f"


def test_postgresql_10_statements_tracked_and_slow_ones_logged(host):
    sql(host, "SELECT pg_sleep(0.6) AS slow_probe")
    calls = sql(host, "SELECT sum(calls) FROM pg_stat_statements WHERE query LIKE '%slow_probe%'")
    assert int(calls) >= 1
    log = host.run("grep -c 'duration: .*slow_probe' /var/log/postgresql/postgresql-15-main.log")
    assert int(log.stdout or 0) >= 1, log.stderr


def test_postgresql_11_reload_when_enough_restart_when_needed(host):
    before = started(host)
    run = converge(*SETTINGS_ONLY, "-e", "postgresql_log_min_duration_ms=750")
    assert run.returncode == 0, run.output[-4000:]
    assert sql(host, "SHOW log_min_duration_statement") == "750ms"
    assert "Restarting PostgreSQL" not in run.output
    assert started(host) == before

    default_max = sql(host, "SHOW max_connections")
    run = converge(*SETTINGS_ONLY, "-e", "postgresql_max_connections=60")
    assert run.returncode == 0, run.output[-4000:]
    # The run names the setting it restarts for (work_mem, sized from max_connections,
    # changes too but only needs the reload).
    said = " ".join(run.output.split())
    assert "Restarting PostgreSQL: max_connections only take effect after a restart" in said
    assert sql(host, "SHOW max_connections") == "60"
    assert started(host) != before

    run = converge(*SETTINGS_ONLY)
    assert run.returncode == 0, run.output[-4000:]
    assert sql(host, "SHOW max_connections") == default_max


def test_postgresql_12_bad_setting_never_leaves_the_server_down(host):
    # A value that is no size is refused before anything is written.
    work_mem = sql(host, "SHOW work_mem")
    run = converge(
        *SETTINGS_ONLY, "-e", json.dumps({"postgresql_settings_extra": {"work_mem": "lots"}})
    )
    assert run.returncode != 0
    assert "(item=work_mem = lots)" in run.output, run.output[-3000:]
    assert sql(host, "SHOW work_mem") == work_mem
    auto_conf = host.file("/var/lib/postgresql/15/main/postgresql.auto.conf").content_string
    assert "lots" not in auto_conf
    # A value it accepts but cannot start with (no huge pages in this host): the restart
    # fails, the value is taken back, the server runs again and the run says so.
    run = converge(
        *SETTINGS_ONLY, "-e", json.dumps({"postgresql_settings_extra": {"huge_pages": "on"}})
    )
    assert run.returncode != 0
    assert "PostgreSQL did not start with the new values of huge_pages" in run.output, run.output[
        -3000:
    ]
    assert host.run("pg_isready -q").rc == 0
    assert sql(host, "SHOW huge_pages") == "try"
    assert sql(host, "SELECT count(*) FROM pg_settings WHERE pending_restart") == "0"


def hba_rule(**fields) -> str:
    rule = {"databases": ["shop"], "users": ["shop_app"], "method": "scram-sha-256", **fields}
    return json.dumps({"postgresql_hba_rules": [rule]})


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("postgresql_shared_buffers_mb=99999999", "less than the host's RAM"),
        ("postgresql_work_mem_kb=-5", "work_mem >= 64 kB"),
        ("postgresql_maintenance_work_mem_mb=-1", "every size"),
        ("postgresql_max_connections=10", "postgresql_max_connections (10) must hold"),
        ("postgresql_wal_compression=maybe", "postgresql_wal_compression"),
        ("vault_db_app_password=short", "postgresql_app_password is undefined or shorter than 12"),
        (hba_rule(sources=["webz"]), "unknown: ['webz']"),
        (hba_rule(sources=["app"], method="trust"), "postgresql_hba_rules"),
        (
            json.dumps(
                {
                    "postgresql_indexes": [
                        {"name": "x_idx", "table": "x", "columns": ["a"], "method": "bitmap"}
                    ]
                }
            ),
            "postgresql_indexes",
        ),
    ],
)
def test_postgresql_13_bad_variables_fail_before_any_change(extra, message):
    # No --limit: preflight needs every host's facts (firewall peers, pg_hba sources).
    assert_refused("-e", extra, message=message)
