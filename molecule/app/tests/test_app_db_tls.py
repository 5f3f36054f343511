"""TLS from the app to PgBouncer and PostgreSQL (issue 16), on the app scenario's host.

The host runs the app and its data tier. The service verifies PgBouncer (verify-full,
SHOP_DB_TLS_CA_FILE); the migrations verify PostgreSQL the same way. Passwords reach psql
in a root-only PGPASSFILE written through standard input (write_root_file); the owner's
credentials stay in migrate.env, which only systemd reads.
"""

from __future__ import annotations

import csv
import io
import shlex

import pytest
from stack_testinfra import hosts_in, write_root_file

testinfra_hosts = hosts_in("app")

JOURNAL_UNITS = ["shop.service", "pgbouncer.service", "postgresql@15-main"]
CA = "/etc/ssl/stack/ca.crt"
SHOP_ENV = "/etc/shop/shop.env"
MIGRATE_ENV = "/etc/shop/migrate.env"
PASSFILE = "/root/app-db-tls.pgpass"
WRONG_CA_ENV = "/root/migrate-wrong-ca.env"


def env_file(host, path: str) -> dict[str, str]:
    lines = host.file(path).content_string.splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def shop_current(host, env: str):
    """`shop current` of the release with an environment file, as roles/app runs it."""
    command = [
        "systemd-run", "--quiet", "--wait", "--pipe", "--collect", "--service-type=exec",
        "--uid=shop", "--gid=shop", "--working-directory=/opt/shop/current",
        f"--property=EnvironmentFile={env}", "/opt/shop/current/venv/bin/shop", "current",
    ]  # fmt: skip
    return host.run(shlex.join(command))


def test_app_db_tls_01_service_and_migrations_get_the_ca(host):
    assert env_file(host, SHOP_ENV)["SHOP_DB_TLS_CA_FILE"] == CA
    assert env_file(host, MIGRATE_ENV)["SHOP_DB_TLS_CA_FILE"] == CA


def test_app_db_tls_02_app_connections_to_pgbouncer_are_tls(host, hostvars):
    name = host.backend.get_hostname()
    stats_password = hostvars(name)["vault_pgbouncer_stats_password"]
    write_root_file(name, PASSFILE, f"*:6432:pgbouncer:pgbouncer_stats:{stats_password}\n")
    try:
        # A request that reads the database: the worker's pool holds its connection open.
        ready = host.run("curl -sf -m 20 http://127.0.0.1:8000/health/ready")
        assert ready.rc == 0, ready.stderr
        # The admin console over the unix socket (no TLS needed there) lists the clients.
        out = host.run(
            "PGPASSFILE=%s PGCONNECT_TIMEOUT=5 psql -X --csv -w -h /var/run/postgresql -p 6432 "
            "-U pgbouncer_stats -d pgbouncer -c 'SHOW CLIENTS'",
            PASSFILE,
        )
    finally:
        host.run("rm -f %s", PASSFILE)
    assert out.rc == 0, out.stderr
    clients = [row for row in csv.DictReader(io.StringIO(out.stdout)) if row["user"] == "shop_app"]
    assert clients, "no connection of the app in SHOW CLIENTS:\n" + out.stdout
    # Every connection of the app came over TCP with TLS (PgBouncer requires it).
    assert all(row["tls"].startswith("TLSv1.") for row in clients), clients


def test_app_db_tls_03_migrations_verify_postgresql(host):
    # The real file: `shop current` reaches PostgreSQL over TLS and verifies it.
    out = shop_current(host, MIGRATE_ENV)
    assert out.rc == 0, out.stderr
    # The same with another CA bundle (the public CAs): the certificate does not verify,
    # so the migrations' connection checks it (a driver default would not).
    public_cas = "/etc/ssl/certs/ca-certificates.crt"
    if not host.file(public_cas).exists:
        pytest.skip(f"{public_cas} is not on this host")
    made = host.run(
        f"umask 077 && sed 's#^SHOP_DB_TLS_CA_FILE=.*#SHOP_DB_TLS_CA_FILE={public_cas}#' "
        f"{MIGRATE_ENV} > {WRONG_CA_ENV}"
    )
    assert made.rc == 0, made.stderr
    try:
        out = shop_current(host, WRONG_CA_ENV)
    finally:
        host.run("rm -f %s", WRONG_CA_ENV)
    assert out.rc != 0, out.stdout
    assert "certificate verify failed" in out.stdout + out.stderr, out.stdout + out.stderr
