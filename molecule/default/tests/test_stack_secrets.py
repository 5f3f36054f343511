"""Least privilege for secrets across the whole stack (issue 16).

- The database owner (shop_owner, DDL rights) gets past pg_hba from the migration host
  (the first app host) only: from the second app host PostgreSQL answers "no pg_hba.conf
  entry", while the runtime role (shop_app) still gets as far as its password check there.
- No vault value reaches a process command line during a migration: test_stack_06's
  rolling deploy migrates (its release carries a no-op revision) while a bounded loop
  records `ps -eo args` every 0.1 s on the app and db hosts; this module, collected after
  test_stack.py, reads those recordings.
- No vault value is in any host's journal (sudo's COMMAND lines included) after the
  converge, that deploy and its rollback, and the rest of the scenario's tests.

The checks need no secret on the hosts: the pg_hba probes use a wrong password (pg_hba
decides before any password is checked), and the recorded command lines and journals are
read back and searched on the control node, so no command run here names a secret.
Control IDs (secrets-stack-NN) name each check.
"""

from __future__ import annotations

testinfra_hosts = ["app1"]
JOURNAL_UNITS = ["shop.service"]
APP_HOSTS = ["app1", "app2"]
DB_HOST = "db1"
ALL_HOSTS = ["web1", "app1", "app2", "db1", "cache1", "mon1"]
MIGRATE_ENV = "/etc/shop/migrate.env"
# Written by test_stack_06 (test_stack.PS_LOG) on each of these hosts.
PS_LOG = "/root/secrets-ps.log"
PS_HOSTS = [*APP_HOSTS, DB_HOST]
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


def test_secrets_stack_03_no_secret_in_ps_during_a_migration(scenario_host, hostvars):
    secrets = vault_values(hostvars)
    seen = {}
    for name in PS_HOSTS:
        out = scenario_host(name).run(f"sort -u {PS_LOG}")
        assert out.rc == 0, f"{name}: no recording; test_stack_06's deploy makes it ({out.stderr})"
        seen[name] = out.stdout
    # The recorder saw the migration itself, on the first app host (the migration host).
    assert "shop migrate" in seen[APP_HOSTS[0]], "the recorder missed the migration"
    found = {name: leaked(text, secrets) for name, text in seen.items()}
    assert not any(found.values()), f"vault values on a command line: {found}"


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
