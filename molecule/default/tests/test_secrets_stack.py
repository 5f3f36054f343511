"""Least privilege for secrets across the whole stack (issue 16).

- The database owner (shop_owner, DDL rights) gets past pg_hba from the migration host
  (the first app host) only: from the second app host PostgreSQL answers "no pg_hba.conf
  entry", while the runtime role (shop_app) still gets as far as its password check there.
- No vault value reaches a process command line during a migration: a bounded loop
  records `ps -eo args` every 0.1 s on the app and db hosts while a deploy migrates.
- No vault value is in any host's journal (sudo's COMMAND lines included) after the
  converge and that deploy.

The checks need no secret on the hosts: the pg_hba probes use a wrong password (pg_hba
decides before any password is checked), and the recorded command lines and journals are
read back and searched on the control node, so no command run here names a secret.
Control IDs (secrets-stack-NN) name each check.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from stack_testinfra import run_playbook

testinfra_hosts = ["app1"]
JOURNAL_UNITS = ["shop.service"]
PROJECT = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
APP_HOSTS = ["app1", "app2"]
DB_HOST = "db1"
ALL_HOSTS = ["web1", "app1", "app2", "db1", "cache1", "mon1"]
MIGRATE_ENV = "/etc/shop/migrate.env"
# The ps recorder: at most 6000 samples (10 minutes at 0.1 s), stopped by the test.
PS_LOG = "/root/secrets-ps.log"
PS_UNIT = "secrets-ps-recorder"
PS_LOOP = (
    f": > {PS_LOG}; i=0; while [ $i -lt 6000 ]; do i=$((i+1)); "
    f"ps -eo args >> {PS_LOG}; sleep 0.1; done"
)
# A login probe with the release's own driver; the password is deliberately wrong.
PROBE = """
import asyncio, sys
import asyncpg

async def main(user):
    try:
        conn = await asyncpg.connect(host=sys.argv[2], port=5432, user=user, database="shop",
                                     password="not-the-password", timeout=10)
    except Exception as exc:
        print(type(exc).__name__, exc)
    else:
        await conn.close()
        print("connected")

asyncio.run(main(sys.argv[1]))
"""
PROBE_PATH = "/root/secrets-pg-probe.py"
REVISION = re.compile(r'^revision(?:: str)? = "([^"]+)"', re.MULTILINE)
DOWN_REVISION = re.compile(r'^down_revision(?:: [^=]+)? = "([^"]+)"', re.MULTILINE)
NOOP_MIGRATION = '''"""A no-op revision, so that a deploy runs `shop migrate` (tests only).

Revision ID: secrets_probe
Revises: {down}
"""

from alembic import op

revision: str = "secrets_probe"
down_revision: str | None = "{down}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("SELECT 1")


def downgrade() -> None:
    pass
'''


def vault_values(hostvars) -> dict[str, str]:
    """The scenario's vault values (inventories/local/group_vars/all/vault.yml)."""
    values = {
        key: value
        for key, value in hostvars("app1").items()
        if key.startswith("vault_") and isinstance(value, str) and len(value) >= 8
    }
    assert "vault_db_owner_password" in values and len(values) >= 6, sorted(values)
    return values


def leaked(text: str, secrets: dict[str, str]) -> list[str]:
    """Names (never values) of the secrets that appear in text."""
    return sorted(name for name, value in secrets.items() if value in text)


def schema_head(versions: Path) -> str:
    revisions, parents = set(), set()
    for path in versions.glob("*.py"):
        text = path.read_text()
        revisions.update(REVISION.findall(text))
        parents.update(DOWN_REVISION.findall(text))
    heads = revisions - parents
    assert len(heads) == 1, heads
    return heads.pop()


def probe(host, user: str, server: str = DB_HOST) -> str:
    host.run(f"cat > {PROBE_PATH} <<'EOF'\n{PROBE}\nEOF")
    out = host.run(f"/opt/shop/current/venv/bin/python3 {PROBE_PATH} {user} {server}")
    assert out.rc == 0, out.stderr
    return out.stdout.strip()


def test_secrets_stack_01_owner_refused_by_pg_hba_from_the_second_app_host(scenario_host):
    first, second = (scenario_host(name) for name in APP_HOSTS)
    # The migration host gets past pg_hba as the owner: only the (wrong) password fails.
    assert "password authentication failed" in probe(first, "shop_owner")
    # The other app host: refused by pg_hba before any password is asked for.
    refused = probe(second, "shop_owner")
    assert "no pg_hba.conf entry" in refused, refused
    # The runtime role from the same host reaches its password check: the path is open and
    # the refusal above is the owner's rule.
    assert "password authentication failed" in probe(second, "shop_app")


def test_secrets_stack_02_owner_credentials_only_on_the_migration_host(scenario_host):
    env = scenario_host(APP_HOSTS[0]).file(MIGRATE_ENV)
    assert env.exists
    assert (env.user, env.group, env.mode) == ("root", "root", 0o600)
    for name in APP_HOSTS[1:]:
        assert not scenario_host(name).file(MIGRATE_ENV).exists, name
    for name in APP_HOSTS:
        shop_env = scenario_host(name).file("/etc/shop/shop.env").content_string
        assert "shop_owner" not in shop_env, name


@pytest.fixture(scope="module")
def migrating_release_source(tmp_path_factory):
    """A copy of app/ with one more (no-op) migration, so that its deploy migrates."""
    src = tmp_path_factory.mktemp("migrating") / "app"
    shutil.copytree(
        PROJECT / "app",
        src,
        ignore=shutil.ignore_patterns(".venv", "dist", "__pycache__", ".*_cache"),
    )
    (src / ".venv").symlink_to(PROJECT / "app" / ".venv")
    versions = src / "src" / "shop" / "alembic" / "versions"
    head = schema_head(versions)
    (versions / "9999_secrets_probe.py").write_text(NOOP_MIGRATION.format(down=head))
    return src, head


def test_secrets_stack_03_no_secret_in_ps_during_a_migration(
    scenario_host, hostvars, migrating_release_source
):
    src, head = migrating_release_source
    secrets = vault_values(hostvars)
    watched = [*APP_HOSTS, DB_HOST]
    for name in watched:
        started = scenario_host(name).run(
            f"systemd-run --unit {PS_UNIT} --collect --property=RuntimeMaxSec=900 sh -c '{PS_LOOP}'"
        )
        assert started.rc == 0, started.stderr
    try:
        deploy = run_playbook(str(PROJECT / "playbooks/deploy.yml"), "-e", f"app_source_dir={src}")
    finally:
        for name in watched:
            scenario_host(name).run(f"systemctl stop {PS_UNIT}")
    try:
        assert deploy.returncode == 0, deploy.output[-6000:]
        seen = {
            name: scenario_host(name).run(f"sort -u {PS_LOG}; rm -f {PS_LOG}").stdout
            for name in watched
        }
        # The recorder saw the migration itself (on the first app host, the migration host).
        assert "shop migrate" in seen[APP_HOSTS[0]], "the recorder missed the migration"
        revision = scenario_host(DB_HOST).run(
            "runuser -u postgres -- psql -d shop -Atc 'SELECT version_num FROM alembic_version'"
        )
        assert revision.stdout.strip() == "secrets_probe", revision.stdout + revision.stderr
        found = {name: leaked(text, secrets) for name, text in seen.items()}
        assert not any(found.values()), f"vault values on a command line: {found}"
    finally:
        # Back to the schema revision and release of the converge: the no-op revision
        # changed nothing but alembic_version, and the original release is still installed.
        stamp = f"UPDATE alembic_version SET version_num = '{head}'"  # noqa: S608 - a revision id
        scenario_host(DB_HOST).run(f'runuser -u postgres -- psql -d shop -c "{stamp}"')
        back = run_playbook(str(PROJECT / "playbooks/deploy.yml"))
        assert back.returncode == 0, back.output[-6000:]


def test_secrets_stack_04_no_vault_value_in_any_journal(scenario_host, hostvars):
    """After the converge and the deploys above: every host's whole journal, sudo's
    COMMAND lines and Ansible's module invocations included."""
    secrets = vault_values(hostvars)
    found = {}
    for name in ALL_HOSTS:
        journal = scenario_host(name).run("journalctl --no-pager -o cat")
        assert journal.rc == 0, journal.stderr
        found[name] = leaked(journal.stdout, secrets)
    assert not any(found.values()), f"vault values in the journal: {found}"


def test_secrets_stack_05_sudo_commands_are_in_the_journal(scenario_host):
    """The journal search above covers sudo's log: sudo logs every become there (the
    postgres tasks on the db host become postgres through sudo)."""
    out = scenario_host(DB_HOST).run("journalctl --no-pager -o cat _COMM=sudo")
    assert out.rc == 0, out.stderr
    assert "COMMAND=" in out.stdout, out.stdout[-2000:]
