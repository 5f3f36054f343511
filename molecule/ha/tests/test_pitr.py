"""pgBackRest and the point-in-time restore of the HA layout (issue 18).

ha-app is the repository host (the `backup` group): the db hosts archive their WAL there
through pgBackRest's TLS server, and its timers take the backups. The restore test writes
rows, takes a timestamp, writes more rows, runs playbooks/restore_pitr.yml to that
timestamp, and checks that the first rows are back, the later ones are not, and the
cluster has a leader and two replicas that follow it again. It runs last in this scenario
(its restore drops whatever the earlier tests wrote after its timestamp).

By hand, after `molecule converge -s ha`:
    molecule verify -s ha
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from ha_cluster import DBS, FOLLOWING, leader, members, psql
from stack_testinfra import run_playbook

testinfra_hosts = ["ha-app"]
JOURNAL_UNITS = ["pgbackrest", "pgbackrest-backup@full", "pgbackrest-backup@incr"]

PROJECT = Path(__file__).resolve().parents[3]
PGBACKREST_CONFIG = "/etc/pgbackrest/pgbackrest.conf"
METRICS_FILE = "/var/lib/prometheus/node-exporter/pgbackrest.prom"
TABLE = "pitr_probe"
SETTLE = 180.0  # seconds for the members to be listed as leader and two followers


def stanza(host) -> str:
    """The stanza: the section of the repository host's pgbackrest.conf beside [global]."""
    sections = re.findall(
        r"(?m)^\[([A-Za-z0-9_-]+)\]\s*$", host.file(PGBACKREST_CONFIG).content_string
    )
    names = [name for name in sections if name != "global"]
    assert len(names) == 1, sections
    return names[0]


def info(host) -> dict:
    out = host.run("runuser -u postgres -- pgbackrest --stanza=%s --output=json info", stanza(host))
    assert out.rc == 0, out.stderr
    return json.loads(out.stdout)[0]


def test_pitr_01_stanza_has_a_full_backup_and_archived_wal(host):
    """The role created the stanza, took its first full backup and archiving works."""
    found = info(host)
    assert found["status"]["code"] == 0, found["status"]
    fulls = [b for b in found["backup"] if b["type"] == "full" and not b["error"]]
    assert fulls, found["backup"]
    assert found["archive"] and found["archive"][0]["max"], found["archive"]
    # `check` makes the primary switch WAL segments and waits until the new one arrives.
    out = host.run("runuser -u postgres -- pgbackrest --stanza=%s check", stanza(host))
    assert out.rc == 0, out.stderr
    for unit in ("pgbackrest-backup-full.timer", "pgbackrest-backup-incr.timer"):
        assert host.service(unit).is_enabled, unit
        assert host.service(unit).is_running, unit


def test_pitr_02_backup_age_reaches_the_node_exporter(host):
    """The newest full backup's stop time is in the textfile and served by the exporter."""
    newest = max(
        b["timestamp"]["stop"]
        for b in info(host)["backup"]
        if b["type"] == "full" and not b["error"]
    )
    metrics = host.run("curl -s --max-time 5 http://127.0.0.1:9100/metrics")
    assert metrics.rc == 0, metrics.stderr
    line = re.search(
        r'^pgbackrest_backup_last_stop_timestamp_seconds\{[^}]*type="full"[^}]*\} (\S+)$',
        metrics.stdout,
        re.MULTILINE,
    )
    assert line, host.file(METRICS_FILE).content_string
    # The file was written after the newest full backup, or by an earlier one when a
    # later full backup of the timers ran after this test's start: never newer than it.
    assert 0 < float(line[1]) <= newest, (line[0], newest)
    assert host.file(METRICS_FILE).user == "postgres"


def test_pitr_03_restore_to_a_point_in_time(host):
    """Rows before the target come back, rows after it do not, on every member; the
    cluster has a leader and two replicas that follow it; archiving goes on."""
    primary = leader()
    assert primary, members()
    psql(primary, f"DROP TABLE IF EXISTS {TABLE}", "postgres")
    psql(
        primary,
        f"CREATE TABLE {TABLE} (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())",
        "postgres",
    )
    psql(primary, f"INSERT INTO {TABLE} (id) SELECT generate_series(1, 5)", "postgres")
    time.sleep(1.5)
    # The leader's clock, in UTC with microseconds: what recovery compares commits with.
    target = psql(
        primary,
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
        "postgres",
    )
    time.sleep(1.5)
    psql(primary, f"INSERT INTO {TABLE} (id) SELECT generate_series(6, 10)", "postgres")
    assert psql(primary, f"SELECT count(*) FROM {TABLE}", "postgres") == "10"  # noqa: S608

    started = time.time()
    run = run_playbook(
        str(PROJECT / "playbooks/restore_pitr.yml"), "-e", json.dumps({"pitr_target": target})
    )
    took = time.time() - started
    print(f"\nrestore_pitr.yml to {target}: {took:.0f} s, rc {run.returncode}")
    assert run.returncode == 0, run.output[-4000:]

    deadline = time.time() + SETTLE
    state: list[dict] = []
    while time.time() < deadline:
        state = members()
        roles = sorted(m["Role"] for m in state)
        following = [m for m in state if m["Role"] != "Leader" and m["State"] in FOLLOWING]
        if roles == ["Leader", "Replica", "Sync Standby"] and len(following) == 2:
            break
        time.sleep(2)
    else:
        pytest.fail(
            f"no leader with two following replicas {SETTLE:.0f} s after the restore: {state}"
        )

    restored = leader()
    assert restored, state
    assert psql(restored, "SELECT pg_is_in_recovery()", "postgres") == "f"
    for db in DBS:
        ids = psql(db, f"SELECT string_agg(id::text, ',' ORDER BY id) FROM {TABLE}", "postgres")  # noqa: S608
        assert ids == "1,2,3,4,5", f"{db} after the restore to {target}: {ids}"

    # The restored cluster archives to the same stanza (its system identifier is
    # unchanged), on its new timeline.
    out = host.run("runuser -u postgres -- pgbackrest --stanza=%s check", stanza(host))
    assert out.rc == 0, out.stderr
    psql(restored, f"DROP TABLE {TABLE}", "postgres")
