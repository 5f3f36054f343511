"""Least privilege for the database owner's secret (issue 16), on the app scenario's host.

The running service holds only the runtime role's credentials (shop_app): the owner
(shop_owner, DDL rights) is in neither /etc/shop/shop.env nor any Gunicorn process's
environment, and PgBouncer does not know it. Only the migration host keeps the owner's
password, in /etc/shop/migrate.env (root's, 0600), read by systemd for the migrations.

Secrets never go into a command run here (a module's arguments reach the journal): they
are compared on the control node, and psql reads the passwords from a password file made
on the host from the files the role wrote.
Control IDs (secrets-NN) name each check.
"""

from __future__ import annotations

import json

import pytest
from stack_testinfra import Refusals, hosts_in

testinfra_hosts = hosts_in("app")

JOURNAL_UNITS = ["shop.service", "pgbouncer.service"]
SHOP_ENV = "/etc/shop/shop.env"
MIGRATE_ENV = "/etc/shop/migrate.env"
PASSFILE = "/root/.secrets-test-pgpass"


def owner_password(host, hostvars) -> str:
    password = hostvars(host.backend.get_hostname())["vault_db_owner_password"]
    assert password, "the scenario sets vault_db_owner_password"
    return password


def gunicorn_pids(host) -> list[str]:
    main = host.run("systemctl show -p MainPID --value shop.service").stdout.strip()
    assert main and main != "0", "shop.service runs"
    children = host.run(f"ps --ppid {main} -o pid=").stdout.split()
    assert children, "Gunicorn has workers"
    return [main, *children]


def test_secrets_01_service_environment_file_holds_no_owner_credentials(host, hostvars):
    content = host.file(SHOP_ENV).content_string
    assert "SHOP_DATABASE_URL=" in content
    assert owner_password(host, hostvars) not in content
    assert "shop_owner" not in content
    assert "SHOP_MIGRATION_DATABASE_URL" not in content


def test_secrets_02_no_gunicorn_process_environment_holds_the_owner_password(host, hostvars):
    password = owner_password(host, hostvars)
    for pid in gunicorn_pids(host):
        environ = host.run(f"cat /proc/{pid}/environ")
        assert environ.rc == 0, environ.stderr
        assert password not in environ.stdout, f"the owner's password is in {pid}'s environment"
        assert "shop_owner" not in environ.stdout


def test_secrets_03_owner_credentials_only_in_a_root_only_file(host, hostvars):
    env = host.file(MIGRATE_ENV)
    assert env.exists, "the migration host keeps the owner's credentials"
    assert (env.user, env.group, env.mode) == ("root", "root", 0o600)
    assert owner_password(host, hostvars) in env.content_string
    assert host.run(f"runuser -u shop -- cat {MIGRATE_ENV}").rc != 0


# Builds a libpq password file on the host from the URLs the role wrote (the owner's in
# migrate.env, the runtime role's in shop.env): no password is on a command line, in a
# module's arguments (which reach the journal) or on the control node's command line.
PASSFILE_SCRIPT = f"""
import os, urllib.parse
lines = []
sources = (
    ("{MIGRATE_ENV}", "SHOP_MIGRATION_DATABASE_URL"),
    ("{SHOP_ENV}", "SHOP_DATABASE_URL"),
)
for path, key in sources:
    text = open(path).read().splitlines()
    env = dict(l.split("=", 1) for l in text if "=" in l and not l.startswith("#"))
    url = urllib.parse.urlsplit(env[key])
    lines.append(f"127.0.0.1:6432:shop:{{url.username}}:{{urllib.parse.unquote(url.password)}}\\n")
fd = os.open("{PASSFILE}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
os.write(fd, "".join(lines).encode())
os.close(fd)
"""


@pytest.fixture
def passfile(host):
    """A libpq password file (0600, root's) with the owner's and the runtime role's
    passwords, for psql through PGPASSFILE (never PGPASSWORD)."""
    made = host.run(f"python3 - <<'EOF'\n{PASSFILE_SCRIPT}\nEOF")
    assert made.rc == 0, made.stderr
    yield PASSFILE
    host.run(f"rm -f {PASSFILE}")


def psql_via_pgbouncer(host, passfile: str, user: str):
    return host.run(
        f"PGPASSFILE={passfile} PGCONNECT_TIMEOUT=5 "
        f"psql -XAtq -w -h 127.0.0.1 -p 6432 -U {user} -d shop -c 'SELECT current_user'"
    )


def test_secrets_04_owner_cannot_log_in_through_pgbouncer(host, passfile):
    # The runtime role gets in with its password from the same file: the path works.
    app = psql_via_pgbouncer(host, passfile, "shop_app")
    assert app.rc == 0 and app.stdout.strip() == "shop_app", app.stderr
    # The owner, with its right password, is refused at the login: PgBouncer has no entry.
    owner = psql_via_pgbouncer(host, passfile, "shop_owner")
    assert owner.rc != 0, owner.stdout
    # PgBouncer 1.18 says "SASL authentication failed" for a user its auth file lacks.
    assert "authentication failed" in owner.stderr, owner.stderr
    auth_file = host.file("/etc/pgbouncer/userlist.txt").content_string
    assert '"shop_owner"' not in auth_file


# Not a vault value: a placeholder long enough for the password checks.
PLACEHOLDER = "placeholder-password"
OWNER_VIA_PGBOUNCER = {"pgbouncer_users": [{"name": "shop_owner", "password": PLACEHOLDER}]}
OWNER_FROM_A_GROUP = {
    "postgresql_hba_rules": [
        {
            "databases": ["shop"],
            "users": ["shop_owner"],
            "sources": ["app"],
            "method": "scram-sha-256",
        }
    ]
}


# A migration host outside the inventory is refused by the postgresql role's checks first
# (postgresql_migration_host follows it), one outside `app` by the app role's.
OWNER_EXPOSURES = [
    ("app_migration_host=nowhere", "migration_host (nowhere) must be"),
    (json.dumps(OWNER_VIA_PGBOUNCER), "shop_owner, in pgbouncer_refused_users"),
    (json.dumps(OWNER_FROM_A_GROUP), "admits a database owner (shop_owner) from app"),
]
OWNER_EXPOSURE_RUNS = Refusals(["-e", extra] for extra, _ in OWNER_EXPOSURES)


@pytest.mark.parametrize(
    ("extra", "message"),
    OWNER_EXPOSURES,
    ids=["migration-host-outside-app", "owner-in-pgbouncer-users", "owner-hba-from-a-group"],
)
def test_secrets_05_owner_exposure_refused_before_any_change(extra, message):
    OWNER_EXPOSURE_RUNS.assert_refused("-e", extra, message=message)
