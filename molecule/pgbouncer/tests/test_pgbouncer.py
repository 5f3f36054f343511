"""Behaviour of the pgbouncer role: the app host's clients reach PostgreSQL through 6432.

Control IDs (pgbouncer-NN) name each check.
"""

import csv
import io
import json
import time

import pytest
from stack_testinfra import assert_refused

testinfra_hosts = ["pgbouncer-db"]
JOURNAL_UNITS = ["pgbouncer", "prometheus-pgbouncer-exporter", "postgresql@15-main"]
DB, APP = "pgbouncer-db", "pgbouncer-app"


@pytest.fixture(scope="module")
def secret(hostvars):
    """The scenario's test value of a vault password (molecule.yml)."""
    return lambda name: hostvars(DB)[f"vault_{name}_password"]


def bouncer(host, query: str, password: str, user: str = "shop_app", db: str = "shop"):
    """A query through PgBouncer on the db host, as CSV rows (header first)."""
    out = host.run(
        "PGPASSWORD=%s PGCONNECT_TIMEOUT=5 psql -X --csv -h %s -p 6432 -U %s -d %s -c %s",
        password,
        DB,
        user,
        db,
        query,
    )
    rows = list(csv.DictReader(io.StringIO(out.stdout))) if out.rc == 0 else []
    return out, rows


def test_pgbouncer_01_app_connects_through_6432_with_scram(scenario_host, secret):
    app = scenario_host(APP)
    out, rows = bouncer(
        app, "SELECT current_user AS who, inet_server_port() AS port", secret("db_app")
    )
    assert out.rc == 0, out.stderr
    # PgBouncer logged in to PostgreSQL's 5432 for the client.
    assert rows == [{"who": "shop_app", "port": "5432"}]
    out, _ = bouncer(app, "SELECT 1", secret("db_app") + "-wrong")
    # PgBouncer checks the SCRAM proof itself and refuses the client.
    assert out.rc != 0 and "SASL authentication failed" in out.stderr, out.stderr
    out, rows = bouncer(
        scenario_host(APP), "SHOW CONFIG", secret("pgbouncer_stats"), "pgbouncer_stats", "pgbouncer"
    )
    config = {row["key"]: row["value"] for row in rows}
    assert config["auth_type"] == "scram-sha-256"


def test_pgbouncer_02_auth_file_is_private(host):
    auth = host.file("/etc/pgbouncer/userlist.txt")
    assert (auth.user, auth.group, auth.mode) == ("postgres", "postgres", 0o640)
    users = [
        line.split('"')[1] for line in auth.content_string.splitlines() if line.startswith('"')
    ]
    # The database owner is not among them: migrations reach PostgreSQL directly.
    assert users == ["shop_app", "pgbouncer_admin", "pgbouncer_stats"]


def test_pgbouncer_03_listens_on_loopback_and_private_address_only(host):
    lines = [line for line in host.run("ss -Hltn sport = :6432").stdout.splitlines() if line]
    private = host.run("getent hosts %s", DB).stdout.split()[0]
    assert sorted(line.split()[3].rsplit(":", 1)[0] for line in lines) == sorted(
        ["127.0.0.1", private]
    )


def test_pgbouncer_04_show_pools_in_transaction_mode(scenario_host, secret):
    out, rows = bouncer(
        scenario_host(APP), "SHOW POOLS", secret("pgbouncer_stats"), "pgbouncer_stats", "pgbouncer"
    )
    assert out.rc == 0, out.stderr
    modes = {(row["database"], row["user"]): row["pool_mode"] for row in rows}
    assert modes[("shop", "shop_app")] == "transaction", rows
    # The stats user may look, not act.
    out, _ = bouncer(
        scenario_host(APP), "RELOAD", secret("pgbouncer_stats"), "pgbouncer_stats", "pgbouncer"
    )
    assert out.rc != 0 and "admin access needed" in out.stderr


def pool_size(host, password: str) -> tuple[int, int]:
    out, rows = bouncer(host, "SHOW CONFIG", password, "pgbouncer_admin", "pgbouncer")
    assert out.rc == 0, out.stderr
    config = {row["key"]: row["value"] for row in rows}
    return int(config["default_pool_size"]), int(config["max_db_connections"])


def test_pgbouncer_05_twice_the_pool_size_of_clients_all_served(scenario_host, secret):
    app = scenario_host(APP)
    pool, server_max = pool_size(app, secret("pgbouncer_admin"))
    clients = 2 * pool
    # Start the clients, watch SHOW POOLS while they run, then count the successes.
    script = f"""
        rm -f /root/pool-ok /root/pool-errors
        export PGCONNECT_TIMEOUT=30
        for i in $(seq {clients}); do
            PGPASSWORD='{secret("db_app")}' psql -XAtq -h {DB} -p 6432 -U shop_app -d shop \\
                -c 'SELECT pg_sleep(2)' >/dev/null 2>>/root/pool-errors && echo ok >>/root/pool-ok &
        done
        for i in $(seq 100); do
            PGPASSWORD='{secret("pgbouncer_stats")}' psql -X --csv -h {DB} -p 6432 \\
                -U pgbouncer_stats -d pgbouncer -c 'SHOW POOLS' | sed 's/^/pools,/'
            [ "$(jobs -r | wc -l)" -eq 0 ] && break
            sleep 0.2
        done
        wait
        echo "served $(cat /root/pool-ok 2>/dev/null | wc -l)"
        cat /root/pool-errors >&2
    """
    out = app.run("bash -c %s", script)
    assert out.rc == 0, out.stderr
    served = int(out.stdout.splitlines()[-1].split()[1])
    assert served == clients, out.stderr
    polled = [
        line.removeprefix("pools,") for line in out.stdout.splitlines() if line.startswith("pools,")
    ]
    header = polled[0]
    samples = [
        row
        for row in csv.DictReader(
            io.StringIO("\n".join([header, *(p for p in polled if p != header)]))
        )
        if (row["database"], row["user"]) == ("shop", "shop_app")
    ]
    # Clients queued (cl_waiting > 0) instead of being refused, and PostgreSQL never saw
    # more server connections than the pool allows.
    assert max(int(row["cl_waiting"]) for row in samples) > 0, samples
    assert max(int(row["sv_active"]) for row in samples) <= server_max, samples


def test_pgbouncer_06_exporter_answers(host):
    private = host.run("getent hosts %s", DB).stdout.split()[0]
    out = host.run("curl -sf -m 5 http://%s:9127/metrics", private)
    assert out.rc == 0, out.stderr
    metrics = out.stdout.splitlines()
    assert any(line.startswith('pgbouncer_pool_size{database="shop"}') for line in metrics)
    assert any(line.startswith('pgbouncer_waiting_clients{database="shop"') for line in metrics)
    assert any(line.startswith("pgbouncer_requests_total{") for line in metrics)


def test_pgbouncer_08_comes_back_by_itself_after_a_crash(host, scenario_host, secret):
    """PgBouncer 1.18 can exit on an assertion after a cancel request (see the role's unit
    drop-in): systemd starts it again, and clients get through, within seconds."""
    before = host.run("systemctl show -p MainPID --value pgbouncer").stdout.strip()
    assert before not in ("", "0")
    host.run("kill -SEGV %s", before)
    after, out = before, None
    for _ in range(40):
        time.sleep(0.5)
        after = host.run("systemctl show -p MainPID --value pgbouncer").stdout.strip()
        if after not in ("", "0", before):
            out, _ = bouncer(scenario_host(APP), "SELECT 1", secret("db_app"))
            if out.rc == 0:
                break
    assert after not in ("", "0", before), "pgbouncer was not started again"
    assert out is not None and out.rc == 0, out.stderr if out else "no query got through"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("pgbouncer_pool_mode=bogus", "pgbouncer_pool_mode"),
        ("pgbouncer_default_pool_size=-3", "default_pool_size >= 1"),
        ("pgbouncer_default_pool_size=40", "must stay within postgresql_max_connections"),
        # max_client_conn grows with the app by default; set by hand, it must still fit.
        (
            json.dumps({"app_workers": 60, "pgbouncer_max_client_conn": 500}),
            "raise pgbouncer_max_client_conn",
        ),
        # The full-stack contract: 2 app workers x (5 + 5) clients cannot fit in 10.
        ("pgbouncer_max_client_conn=10", "more than pgbouncer_max_client_conn (10)"),
        ("postgresql_shared_buffers_mb=99999999", "less than the host's RAM"),
        (
            "vault_pgbouncer_stats_password=short",
            "pgbouncer_stats_password is undefined or shorter than 12",
        ),
        (
            json.dumps({"pgbouncer_databases": [{"name": "shop", "port": "many"}]}),
            "pgbouncer_databases",
        ),
    ],
)
def test_pgbouncer_07_bad_variables_fail_before_any_change(extra, message):
    # No --limit: the pool sizes come from the app hosts' facts.
    assert_refused("-e", extra, message=message)
