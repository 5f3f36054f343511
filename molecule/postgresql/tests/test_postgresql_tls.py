"""TLS on PostgreSQL (issue 16): the stack CA's certificate, hostssl for every remote client.

The app host is a remote client (pg_hba admits shop_app from the app group, now with
`hostssl`); the db host's loopback keeps `host`. Passwords reach psql in root-only
PGPASSFILEs written through standard input (write_root_file), never on a command line.
"""

import pytest
from stack_testinfra import assert_refused, write_root_file

testinfra_hosts = ["postgresql-db"]
JOURNAL_UNITS = ["postgresql@15-main"]
DB, APP = "postgresql-db", "postgresql-app"
CA = "/etc/ssl/stack/ca.crt"
PASSFILE = "/root/postgresql-tls.pgpass"
SSL_OF_THIS_SESSION = (
    "SELECT ssl::text || ' ' || coalesce(version, '-') FROM pg_stat_ssl"
    " WHERE pid = pg_backend_pid()"
)


def sql(host, query: str, db: str = "shop") -> str:
    """A query as the postgres superuser over the local socket (peer)."""
    out = host.run("runuser -u postgres -- psql -XAtq -d %s -c %s", db, query)
    assert out.rc == 0, out.stderr
    return out.stdout.strip()


@pytest.fixture(scope="module")
def passfiles(hostvars, scenario_host):
    """shop_app's password in a PGPASSFILE on the app host and on the db host."""
    password = hostvars(DB)["vault_db_app_password"]
    for name in (APP, DB):
        write_root_file(name, PASSFILE, f"*:5432:shop:shop_app:{password}\n")
    yield PASSFILE
    for name in (APP, DB):
        scenario_host(name).run("rm -f %s", PASSFILE)


def psql(host, conninfo: str, query: str):
    """psql as shop_app with a libpq connection string (sslmode and the rest) and the passfile."""
    return host.run(
        "PGPASSFILE=%s PGCONNECT_TIMEOUT=5 psql -XAtq -w -d %s -c %s",
        PASSFILE,
        f"dbname=shop user=shop_app {conninfo}",
        query,
    )


def db_address(host) -> str:
    """The db host's private address, as the app host resolves its inventory name."""
    return host.run("getent hosts %s", DB).stdout.split()[0]


def test_postgresql_tls_01_server_offers_tls_with_the_stack_certificate(host):
    assert sql(host, "SHOW ssl") == "on"
    assert sql(host, "SHOW ssl_cert_file") == "/etc/ssl/stack/host.crt"
    assert sql(host, "SHOW ssl_key_file") == "/etc/ssl/stack/host.key"
    assert sql(host, "SHOW ssl_ca_file") == CA
    assert sql(host, "SHOW ssl_min_protocol_version") == "TLSv1.2"
    # The server reads the key (root:ssl-cert 0640) as a member of ssl-cert.
    assert "ssl-cert" in host.user("postgres").groups
    key = host.file("/etc/ssl/stack/host.key")
    assert (key.user, key.group, key.mode) == ("root", "ssl-cert", 0o640)


def test_postgresql_tls_02_hba_hostssl_except_loopback(host):
    rows = sql(host, "SELECT type, address FROM pg_hba_file_rules WHERE type <> 'local'")
    rules = [line.split("|") for line in rows.splitlines()]
    assert rules, rows
    for kind, address in rules:
        expected = "host" if address in ("127.0.0.1", "::1") else "hostssl"
        assert kind == expected, rules
    assert any(kind == "hostssl" for kind, _ in rules), rules


def test_postgresql_tls_03_remote_cleartext_client_refused(scenario_host, passfiles):
    app = scenario_host(APP)
    out = psql(app, f"host={DB} sslmode=disable", "SELECT 1")
    assert out.rc != 0, out.stdout
    # pg_hba has only hostssl lines for this address: no entry for a cleartext login.
    assert "no pg_hba.conf entry for host" in out.stderr, out.stderr
    assert "no encryption" in out.stderr, out.stderr


@pytest.mark.parametrize("by", ["name", "address"])
def test_postgresql_tls_04_remote_client_verify_full_succeeds(scenario_host, passfiles, by):
    app = scenario_host(APP)
    server = DB if by == "name" else db_address(app)
    # verify-full: the chain to the stack CA and the name dialled (the inventory name, or
    # the private address as an IP name) must both match the server's certificate.
    out = psql(app, f"host={server} sslmode=verify-full sslrootcert={CA}", SSL_OF_THIS_SESSION)
    assert out.rc == 0, out.stderr
    ssl, version = out.stdout.split()
    assert ssl == "true"
    assert version in ("TLSv1.2", "TLSv1.3"), version


def test_postgresql_tls_05_wrong_name_refused_by_the_client(scenario_host, passfiles):
    # A name the certificate does not hold: verify-full refuses the server.
    # hostaddr is where libpq connects, host the name it checks the certificate against.
    app = scenario_host(APP)
    conninfo = f"host=pg-alias hostaddr={db_address(app)} sslmode=verify-full sslrootcert={CA}"
    out = psql(app, conninfo, "SELECT 1")
    assert out.rc != 0, out.stdout
    assert "does not match host name" in out.stderr, out.stderr


def test_postgresql_tls_06_own_private_address_counts_as_remote(host, passfiles):
    # The db host's own private address is not loopback: hostssl applies to it too
    # (pg_hba admits shop_app from the db group).
    address = host.run("getent hosts %s", DB).stdout.split()[0]
    out = psql(host, f"host={address} sslmode=disable", "SELECT 1")
    assert out.rc != 0 and "no encryption" in out.stderr, out.stderr
    out = psql(host, f"host={address} sslmode=verify-full sslrootcert={CA}", SSL_OF_THIS_SESSION)
    assert out.rc == 0, out.stderr
    assert out.stdout.split()[0] == "true"


def test_postgresql_tls_07_loopback_keeps_cleartext(host, passfiles):
    # Loopback rules stay `host`: local tools (the exporter's DSN has sslmode=disable).
    out = psql(host, "host=127.0.0.1 sslmode=disable", SSL_OF_THIS_SESSION)
    assert out.rc == 0, out.stderr
    assert out.stdout.split()[0] == "false"


def test_postgresql_tls_08_bad_protocol_refused_before_any_change():
    assert_refused(
        "-e",
        "postgresql_tls_min_protocol_version=TLSv1.0",
        message="postgresql_tls_min_protocol_version",
    )
