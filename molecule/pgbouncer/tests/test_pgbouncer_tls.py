"""TLS on PgBouncer (issue 16): required from TCP clients, verify-full towards PostgreSQL.

Passwords reach psql in root-only PGPASSFILEs written through standard input
(write_root_file), never on a command line.
"""

import csv
import io
import json

import pytest
from stack_testinfra import assert_refused, write_root_file

testinfra_hosts = ["pgbouncer-db"]
JOURNAL_UNITS = ["pgbouncer", "postgresql@15-main"]
DB, APP = "pgbouncer-db", "pgbouncer-app"
CA = "/etc/ssl/stack/ca.crt"
PASSFILE = "/root/pgbouncer-tls.pgpass"
VERIFY_FULL = f"sslmode=verify-full sslrootcert={CA}"


@pytest.fixture(scope="module")
def passfiles(hostvars, scenario_host):
    """shop_app's and the admin console users' passwords, on the app and the db host."""
    secrets = hostvars(DB)
    content = (
        f"*:6432:shop:shop_app:{secrets['vault_db_app_password']}\n"
        f"*:6432:pgbouncer:pgbouncer_stats:{secrets['vault_pgbouncer_stats_password']}\n"
        f"*:6432:pgbouncer:pgbouncer_admin:{secrets['vault_pgbouncer_admin_password']}\n"
    )
    for name in (APP, DB):
        write_root_file(name, PASSFILE, content)
    yield PASSFILE
    for name in (APP, DB):
        scenario_host(name).run("rm -f %s", PASSFILE)


def psql(host, conninfo: str, query: str, user: str = "shop_app", db: str = "shop"):
    """psql with a libpq connection string to port 6432 and the passfile; CSV rows."""
    out = host.run(
        "PGPASSFILE=%s PGCONNECT_TIMEOUT=5 psql -X --csv -w -d %s -c %s",
        PASSFILE,
        f"port=6432 dbname={db} user={user} {conninfo}",
        query,
    )
    rows = list(csv.DictReader(io.StringIO(out.stdout))) if out.rc == 0 else []
    return out, rows


def test_pgbouncer_tls_01_cleartext_client_refused(scenario_host, passfiles):
    out, _ = psql(scenario_host(APP), f"host={DB} sslmode=disable", "SELECT 1")
    assert out.rc != 0, out.stdout
    assert "SSL required" in out.stderr, out.stderr


def test_pgbouncer_tls_02_loopback_tcp_needs_tls_too_unix_socket_does_not(host, passfiles):
    out, _ = psql(host, "host=127.0.0.1 sslmode=disable", "SELECT 1")
    assert out.rc != 0 and "SSL required" in out.stderr, out.stderr
    # 127.0.0.1 is among the host certificate's names: verify-full holds on loopback.
    out, rows = psql(host, f"host=127.0.0.1 {VERIFY_FULL}", "SELECT 1 AS one")
    assert out.rc == 0 and rows == [{"one": "1"}], out.stderr
    # A unix-socket client is not asked for TLS (no network hop).
    out, rows = psql(host, "host=/var/run/postgresql sslmode=disable", "SELECT 1 AS one")
    assert out.rc == 0 and rows == [{"one": "1"}], out.stderr


@pytest.mark.parametrize("by", ["name", "address"])
def test_pgbouncer_tls_03_verify_full_client_served(scenario_host, passfiles, by):
    app = scenario_host(APP)
    server = DB if by == "name" else app.run("getent hosts %s", DB).stdout.split()[0]
    out, rows = psql(app, f"host={server} {VERIFY_FULL}", "SELECT current_user AS who")
    assert out.rc == 0, out.stderr
    assert rows == [{"who": "shop_app"}]


def test_pgbouncer_tls_04_server_connections_use_tls(scenario_host, passfiles):
    app = scenario_host(APP)
    # The query runs on the PostgreSQL backend of PgBouncer's server connection: that
    # backend's own row in pg_stat_ssl says whether PgBouncer's hop is encrypted.
    out, rows = psql(
        app,
        f"host={DB} {VERIFY_FULL}",
        "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )
    assert out.rc == 0, out.stderr
    assert rows and rows[0]["ssl"] == "t", rows
    assert rows[0]["version"] in ("TLSv1.2", "TLSv1.3"), rows
    # The admin console agrees: the server connections of the shop pool carry TLS, and
    # the settings are the role's.
    out, rows = psql(
        app, f"host={DB} {VERIFY_FULL}", "SHOW SERVERS", "pgbouncer_admin", "pgbouncer"
    )
    assert out.rc == 0, out.stderr
    servers = [row for row in rows if row["database"] == "shop"]
    assert servers and all(row["tls"] for row in servers), rows
    out, rows = psql(app, f"host={DB} {VERIFY_FULL}", "SHOW CONFIG", "pgbouncer_admin", "pgbouncer")
    config = {row["key"]: row["value"] for row in rows}
    assert config["client_tls_sslmode"] == "require"
    assert config["server_tls_sslmode"] == "verify-full"
    assert config["client_tls_key_file"] == "/etc/pgbouncer/tls/host.key"


def test_pgbouncer_tls_05_clients_listed_with_tls(scenario_host, passfiles):
    app = scenario_host(APP)
    out, rows = psql(
        app, f"host={DB} {VERIFY_FULL}", "SHOW CLIENTS", "pgbouncer_stats", "pgbouncer"
    )
    assert out.rc == 0, out.stderr
    # This very console connection came over the network: PgBouncer lists it with TLS.
    mine = [row for row in rows if row["user"] == "pgbouncer_stats" and row["addr"] != "unix"]
    assert mine and all(row["tls"].startswith("TLSv1.") for row in mine), rows


def test_pgbouncer_tls_06_key_copy_readable_by_postgres_only(host):
    key = host.file("/etc/pgbouncer/tls/host.key")
    assert (key.user, key.group, key.mode) == ("root", "postgres", 0o640)
    assert host.file("/etc/pgbouncer/tls").mode == 0o750
    # The same key as the host's (compared by checksum: no key material in a report).
    assert key.sha256sum == host.file("/etc/ssl/stack/host.key").sha256sum


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        # verify-full towards a PostgreSQL that offers no TLS.
        (
            json.dumps({"postgresql_tls_enabled": False, "pgbouncer_server_tls_enabled": True}),
            "has postgresql_tls_enabled: false",
        ),
        (json.dumps({"pgbouncer_tls_protocols": ["tlsv1.0"]}), "pgbouncer_tls_protocols must list"),
    ],
)
def test_pgbouncer_tls_07_bad_tls_variables_fail_before_any_change(extra, message):
    assert_refused("-e", extra, message=message)
