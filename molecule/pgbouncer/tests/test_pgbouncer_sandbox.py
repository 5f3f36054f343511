"""Sandboxing of the pgbouncer role's units (issue 15, pgbouncer_sandbox_enabled).

Each unit's `systemd-analyze security` score stays under the issue's ceiling, and
PgBouncer and its exporter still do their work inside their sandboxes.
"""

import time

from stack_testinfra import exposure, hosts_in, unit_status

testinfra_hosts = hosts_in("db")
JOURNAL_UNITS = ["pgbouncer", "prometheus-pgbouncer-exporter", "postgresql@15-main"]
APP = hosts_in("app")[0]


def admin(host, hostvars, command: str, target: str = "/run/postgresql"):
    """A command on PgBouncer's admin console as the stats user (unix socket by default)."""
    password = hostvars(host.backend.get_hostname())["vault_pgbouncer_stats_password"]
    return host.run(
        "PGPASSWORD=%s PGCONNECT_TIMEOUT=5 psql -XAtq -h %s -p 6432 -U pgbouncer_stats "
        "-d pgbouncer -c %s",
        password,
        target,
        command,
    )


def through_pgbouncer(app, db: str, hostvars):
    """The app host's query through PgBouncer, as the app's role."""
    password = hostvars(db)["vault_db_app_password"]
    return app.run(
        "PGPASSWORD=%s PGCONNECT_TIMEOUT=5 psql -XAtq -h %s -p 6432 -U shop_app -d shop -c %s",
        password,
        db,
        "SELECT 1",
    )


def test_sandbox_pgbouncer_exposure_at_most_3_5(host):
    assert host.file("/etc/systemd/system/pgbouncer.service.d/sandbox.conf").exists
    # The role's other drop-in still applies next to it.
    assert host.run("systemctl show -p Restart --value pgbouncer").stdout.strip() == "on-failure"
    assert exposure(host, "pgbouncer") <= 3.5


def test_sandbox_pgbouncer_exporter_exposure_at_most_2_0(host):
    assert exposure(host, "prometheus-pgbouncer-exporter") <= 2.0


def test_sandbox_pgbouncer_runs_without_capabilities(host):
    proc = unit_status(host, "pgbouncer")
    assert proc["Uid"].split()[0] == str(host.user("postgres").uid)
    assert int(proc["CapEff"], 16) == 0 and int(proc["CapBnd"], 16) == 0
    assert proc["NoNewPrivs"] == "1"
    assert int(proc["Seccomp"]) == 2


def test_sandbox_pgbouncer_serves_its_socket_and_pid_file_and_reloads(host, hostvars):
    # Its unix socket and pid file live in /run/postgresql, the one place it may write.
    out = admin(host, hostvars, "SHOW VERSION")
    assert out.rc == 0 and "PgBouncer" in out.stdout, out.stderr
    pid = host.run("systemctl show -p MainPID --value pgbouncer").stdout.strip()
    assert host.file("/run/postgresql/pgbouncer.pid").content_string.strip() == pid
    # ExecReload (kill -HUP) runs in the same sandbox and keeps the process.
    assert host.run("systemctl reload pgbouncer").rc == 0
    time.sleep(1)
    assert host.run("systemctl show -p MainPID --value pgbouncer").stdout.strip() == pid
    assert admin(host, hostvars, "SHOW VERSION", target="127.0.0.1").rc == 0


def test_sandbox_pgbouncer_restart_leaves_postgresql_shared_memory_alone(
    host, scenario_host, hostvars
):
    """PgBouncer and its exporter run as postgres, like the server: RemoveIPC stays off,
    or the end of their units (the exporter stops with PgBouncer) would delete the
    server's shared memory."""
    for unit in ("pgbouncer", "prometheus-pgbouncer-exporter"):
        assert host.run("systemctl show -p RemoveIPC --value %s", unit).stdout.strip() == "no"
    assert host.run("systemctl restart pgbouncer").rc == 0
    # A parallel query needs dynamic shared memory (/dev/shm) created after the restart
    # and the server's main segment from before it.
    plan = host.run(
        "runuser -u postgres -- psql -XAtq -d postgres -c %s",
        "SET force_parallel_mode = on; "
        "EXPLAIN (ANALYZE, COSTS OFF, FORMAT JSON) SELECT count(*) FROM pg_class",
    )
    assert plan.rc == 0, plan.stderr
    assert '"Workers Launched": 1' in plan.stdout, plan.stdout
    out = None
    for _ in range(20):
        out = through_pgbouncer(scenario_host(APP), host.backend.get_hostname(), hostvars)
        if out.rc == 0:
            break
        time.sleep(0.5)
    assert out.rc == 0 and out.stdout.strip() == "1", out.stderr


def test_sandbox_pgbouncer_exporter_scrapes_inside_its_sandbox(host):
    proc = unit_status(host, "prometheus-pgbouncer-exporter")
    assert int(proc["CapEff"], 16) == 0 and proc["NoNewPrivs"] == "1"
    # It reconnects by itself after the restart above (Restart=always in stack.conf).
    out = None
    for _ in range(20):
        out = host.run("curl -sf -m 5 http://%s:9127/metrics", host.backend.get_hostname())
        if out.rc == 0 and 'pgbouncer_pool_size{database="shop"}' in out.stdout:
            break
        time.sleep(1)
    assert out.rc == 0, out.stderr
    assert 'pgbouncer_pool_size{database="shop"}' in out.stdout
