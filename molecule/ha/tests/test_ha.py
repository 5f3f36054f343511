"""The HA layout (issue 18): PostgreSQL under Patroni on three db hosts, with etcd; the app
reaches the leader through HAProxy on its own loopback.

The failover tests run paced load through nginx (paced_load.LoadRun: 12 requests/s, each
bounded, stopping by itself) while one event happens, and print one row per event of the
timeline table (requests, failures by kind, the longest request, when the cluster was
ready again, the first success and the recovery, in seconds from the event).
Events: the leader's container is killed (`docker kill`: its PostgreSQL, Patroni, etcd
member and PgBouncer die at once, as with a host that loses power), then started again.

By hand, after `molecule converge -s ha`:
    molecule verify -s ha
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from ha_cluster import DBS, FOLLOWING, docker, leader, members, psql, running, sh
from paced_load import (
    LOAD_MAX_SECONDS,
    READERS,
    REQUEST_TIMEOUT,
    WRITERS,
    LoadRun,
    event_under_load,
    failure_kind,
    header,
)
from stack_testinfra import Tokens, run_playbook

testinfra_hosts = ["ha-db1"]

PROJECT = Path(__file__).resolve().parents[3]
WEB = "ha-web1"  # the load runs on its loopback, not through the floating address
FAILOVER_BOUND = 30.0  # the bound for a new leader after the leader's host dies
REJOIN_WAIT = 180.0  # a killed host boots, and its member rewinds and streams again
ROWS: list[str] = []


@pytest.fixture(scope="module")
def tokens(scenario_host) -> Tokens:
    web = scenario_host(WEB)
    return Tokens(web.check_output, WRITERS + READERS)


def test_ha_01_one_leader_and_two_streaming_replicas_one_synchronous():
    found = members()
    roles = sorted(m["Role"] for m in found)
    assert roles == ["Leader", "Replica", "Sync Standby"], found
    replicas = [m for m in found if m["Role"] != "Leader"]
    assert all(m["State"] in FOLLOWING for m in replicas), found
    primary = leader()
    streams = psql(
        primary,
        "SELECT application_name, sync_state FROM pg_stat_replication "
        "WHERE state = 'streaming' ORDER BY 1",
    ).split()
    names = sorted(row.split("|")[0] for row in streams)
    assert names == sorted(m["Member"] for m in replicas), streams
    assert sorted(row.split("|")[1] for row in streams) == ["async", "sync"], streams
    assert not [m for m in found if m.get("Pending restart")], found


def test_ha_02_replicas_are_read_only_copies_of_the_leader():
    primary = leader()
    assert primary, members()
    counts = {db: psql(db, "SELECT count(*) FROM products").strip() for db in DBS}
    assert len(set(counts.values())) == 1 and counts[primary] != "0", counts
    for db in DBS:
        expected = "off" if db == primary else "on"
        assert psql(db, "SHOW transaction_read_only").strip() == expected, db


def test_ha_03_leader_settings_come_from_the_role():
    """The tuned settings reach every member; Patroni's command-line ones too."""
    for db in DBS:
        assert psql(db, "SHOW wal_compression").strip() == "lz4", db
        assert psql(db, "SHOW wal_log_hints").strip() == "on", db
        assert psql(db, "SHOW ssl").strip() == "on", db
    settings = {db: psql(db, "SHOW max_connections").strip() for db in DBS}
    assert len(set(settings.values())) == 1, settings


def test_ha_03b_every_members_patroni_metrics_scrape_as_numbers():
    """Prometheus scrapes each member's /metrics and refuses the whole page at one value
    that is not a number: a replica that cannot ask its own server for the timeline (a
    local replication connection pg_hba refused) says `None` there."""
    timelines = {}
    for db in DBS:
        page = sh(db, "curl -fsSk --max-time 5 https://$(hostname -i | cut -d' ' -f1):8008/metrics")
        samples = [line for line in page.splitlines() if line and not line.startswith("#")]
        assert samples, f"{db}: no samples"
        bad = []
        for line in samples:
            try:
                float(line.rsplit(" ", 1)[1])
            except ValueError:
                bad.append(line)
        assert not bad, f"{db}: {bad}"
        timelines[db] = [line for line in samples if line.startswith("patroni_postgres_timeline")]
    values = {db: found[0].rsplit(" ", 1)[1] for db, found in timelines.items() if found}
    assert len(values) == len(DBS) and len(set(values.values())) == 1, timelines
    assert float(next(iter(values.values()))) >= 1, values


def test_ha_04_killed_leader_is_replaced_and_no_acknowledged_order_is_lost(tokens):
    """Kill the leader's container under load: a new leader within FAILOVER_BOUND, writes
    resume, every order answered 201 is on the new leader, cached reads never fail."""
    old = leader()
    assert old, members()
    others = tuple(db for db in DBS if db != old)
    tokens.fresh(LOAD_MAX_SECONDS + REQUEST_TIMEOUT)
    new = None

    def new_leader(started: float) -> float | None:
        nonlocal new
        while time.time() < started + FAILOVER_BOUND + 30:
            new = leader(others)
            if new:
                return time.time()
            time.sleep(0.5)
        return None

    outcome = event_under_load(
        LoadRun(WEB, WEB), f"kill leader {old}", lambda: docker("kill", old), new_leader, ROWS
    )
    records, started, ready = outcome.records, outcome.started, outcome.ready
    assert new, f"no new leader within {FAILOVER_BOUND + 30:.0f} s: {members(others)}"
    assert ready - started <= FAILOVER_BOUND, f"new leader {new} after {ready - started:.1f} s"
    assert not outcome.baseline_failures(), outcome.describe_failures()
    writes_after = [
        r for r in records if r["method"] == "POST" and r["start"] > ready and r["status"] == 201
    ]
    assert writes_after, f"no order was placed after the failover: {outcome.row()}"
    cached = [r for r in outcome.during() if r["kind"] == "popular" and failure_kind(r)]
    assert not cached, outcome.describe_failures()
    acknowledged = sorted({r["order"] for r in records if r["status"] == 201 and r.get("order")})
    assert acknowledged
    ids = ",".join(str(i) for i in acknowledged)
    found = {int(i) for i in psql(new, f"SELECT id FROM orders WHERE id IN ({ids})").split()}  # noqa: S608
    missing = sorted(set(acknowledged) - found)
    assert not missing, f"orders answered 201 but not on the new leader {new}: {missing}"


def test_ha_05_old_leader_rejoins_as_a_replica():
    """The killed host starts again: its member rewinds and follows the new leader with
    no manual step."""
    stopped = [db for db in DBS if not running(db)]
    assert stopped, "test_ha_04 left every db container running"
    for db in stopped:
        docker("start", db)
    began = time.time()
    state: list[dict] = []
    while time.time() < began + REJOIN_WAIT:
        state = members()
        rejoined = [
            m
            for m in state
            if m["Member"] in stopped and m["Role"] != "Leader" and m["State"] in FOLLOWING
        ]
        if len(rejoined) == len(stopped) and len(state) == len(DBS):
            break
        time.sleep(2)
    else:
        pytest.fail(f"{stopped} did not rejoin within {REJOIN_WAIT:.0f} s: {state}")
    ROWS.append(f"rejoin {', '.join(stopped)}: streaming after {time.time() - began:.0f} s")
    print(f"\nrejoined after {time.time() - began:.0f} s: {state}")


def test_ha_06_planned_switchover_fails_only_requests_in_flight(tokens):
    """playbooks/switchover.yml under load: the leadership moves to a replica, and no
    request fails but those in flight while it moved."""
    old = leader()
    assert old, members()
    tokens.fresh(LOAD_MAX_SECONDS + REQUEST_TIMEOUT)
    runs = []
    outcome = event_under_load(
        LoadRun(WEB, WEB),
        f"switchover from {old}",
        lambda: runs.append(run_playbook(str(PROJECT / "playbooks/switchover.yml"))),
        lambda ended: ended,
        ROWS,
        spans=True,
    )
    new = leader()
    assert runs[0].returncode == 0, runs[0].output[-3000:]
    assert new and new != old, members()
    assert not outcome.baseline_failures(), outcome.describe_failures()
    in_flight = outcome.in_flight_between(outcome.started, outcome.ended)
    assert len(outcome.failures()) <= in_flight, outcome.describe_failures()
    assert outcome.recovered() is not None, outcome.row()


def test_ha_99_timeline():
    """The timeline table of the events above, in the test output."""
    assert ROWS, "no event ran"
    print(f"\n\nHA timeline:\n{header()}\n" + "\n".join(ROWS))
