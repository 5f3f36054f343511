"""The HA layout's web and cache tiers (issue 19) under faults: two nginx hosts share a
floating address (keepalived), and a Redis primary with a replica is watched by three
Sentinels, which the app asks for the primary.

Paced load (paced_load.LoadRun: 12 requests/s, each bounded, stopping by itself) runs from
the app host to the floating address, so the web host that dies is never the client. Events,
in order: nginx stops on the address's holder; the (new) holder's container is killed and
started again; the Redis primary's container is killed (its Sentinel dies with it), and
started again. One row per event goes into the timeline table, printed by the last test.

By hand, after `molecule converge -s ha`:
    molecule verify -s ha
"""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

import pytest
import yaml
from ha_cluster import docker, running, sh
from paced_load import (
    LOAD_MAX_SECONDS,
    READERS,
    REQUEST_TIMEOUT,
    WRITERS,
    LoadRun,
    event_under_load,
    header,
)
from stack_testinfra import Tokens

testinfra_hosts = ["ha-app"]

CLIENT = "ha-app"  # where the load runs: not a web host, so killing one spares the client
WEBS = ("ha-web1", "ha-web2")
CACHES = ("ha-cache1", "ha-cache2")
MOVE_BOUND = 3.0  # the bound for the address to move to the other web host
PROMOTE_BOUND = 30.0  # Sentinel's down-after plus a failover; generous on 2 shared cores
HIT_BOUND = 30.0  # the bound for cache hits on the new primary
BOOT_WAIT = 120.0  # a killed host boots and its services answer again
ROWS: list[str] = []
PROJECT = Path(__file__).resolve().parents[3]
# The exporters' ports, from their one home (role defaults are not in the inventory's
# host variables).
_STACK = yaml.safe_load((PROJECT / "roles/stack/defaults/main.yml").read_text())
PORTS = {
    "node": int(_STACK["common_node_exporter_port"]),
    "redis": int(_STACK["redis_exporter_port"]),
}


@pytest.fixture(scope="module")
def vip(hostvars) -> str:
    addresses = {hostvars(web)["keepalived_virtual_address"] for web in WEBS}
    assert len(addresses) == 1, addresses
    return addresses.pop()


@pytest.fixture(scope="module")
def tokens(scenario_host, vip) -> Tokens:
    client = scenario_host(CLIENT)
    return Tokens(client.check_output, WRITERS + READERS, site=f"https://{vip}")


def holders(vip: str) -> list[str]:
    """The running web hosts that have the address on an interface."""
    pattern = re.compile(rf"\binet {re.escape(vip)}/")
    return [
        web
        for web in WEBS
        if running(web) and pattern.search(sh(web, "ip -o -4 addr show", check=False))
    ]


def wait_for_move(vip: str, old: str, bound: float) -> tuple[float | None, str | None]:
    """(when, to whom) the address is held by a web host other than `old` alone."""
    deadline = time.time() + bound + 10
    while time.time() < deadline:
        now = holders(vip)
        if now and old not in now:
            return time.time(), now[0]
        time.sleep(0.1)
    return None, None


def metrics(container: str, port: int, name: str) -> list[str]:
    """The host's own exporter's samples of one metric (from the host itself: the firewall
    opens exporters to the monitoring group only, and this scenario has none)."""
    out = sh(
        container,
        f"curl -fsS --max-time 5 http://$(hostname -i | cut -d' ' -f1):{port}/metrics",
        check=False,
    )
    return [line for line in out.splitlines() if line.startswith(name)]


def redis_role(cache: str) -> str | None:
    """master or slave, as the cache host's redis exporter reads it from INFO."""
    for line in metrics(cache, PORTS["redis"], "redis_instance_info{"):
        found = re.search(r'role="(\w+)"', line)
        if found:
            return found.group(1)
    return None


def redis_hits(cache: str) -> float:
    samples = metrics(cache, PORTS["redis"], "redis_keyspace_hits_total")
    return float(samples[0].split()[-1]) if samples else -1.0


def wait_web_ready(web: str) -> None:
    deadline = time.time() + BOOT_WAIT
    while time.time() < deadline:
        out = sh(
            web,
            "systemctl is-active nginx keepalived; curl -sk -o /dev/null -w '%{http_code}' "
            "--max-time 2 https://127.0.0.1/",
            check=False,
        )
        if out.split() == ["active", "active", "200"]:
            return
        time.sleep(1)
    raise AssertionError(f"{web} did not serve again within {BOOT_WAIT:.0f} s: {out}")


def web_event(tokens: Tokens, vip: str, label: str, act, restore) -> str | None:
    """Load through the address; `act(holder)` breaks the holder and `restore(holder)` mends
    it afterwards, whatever happened. Asserts the address moved within MOVE_BOUND and that
    no request failed but those in flight until it moved; returns the new holder."""
    before = holders(vip)
    assert len(before) == 1, f"the address {vip} is held by {before}"
    old = before[0]
    tokens.fresh(LOAD_MAX_SECONDS + REQUEST_TIMEOUT)
    new = None

    def moved(_ended: float) -> float | None:
        nonlocal new
        when, new = wait_for_move(vip, old, MOVE_BOUND)
        return when

    try:
        outcome = event_under_load(
            LoadRun(CLIENT, "localhost", vip), f"{label} {old}", lambda: act(old), moved, ROWS
        )
        assert not outcome.baseline_failures(), outcome.describe_failures()
        assert outcome.ready, f"the address stayed on {old} or went nowhere: {holders(vip)}"
        took = outcome.ready - outcome.started
        assert took <= MOVE_BOUND, f"the address moved from {old} to {new} after {took:.2f} s"
        in_flight = outcome.in_flight_between(outcome.started, outcome.ready)
        assert len(outcome.failures()) <= in_flight, outcome.describe_failures()
        assert outcome.recovered() is not None, outcome.row()
    finally:
        restore(old)
    return new


def test_edge_00_web_hosts_serve_the_same_files_headers_and_certificate():
    """Whichever web host holds the address, a client gets the same static files (the
    release's, as in app/static), the same cache headers and the same certificate."""
    static = sorted(p for p in (PROJECT / "app/static").iterdir() if p.is_file())
    expected = [hashlib.sha256(p.read_bytes()).hexdigest() for p in static]
    served = {}
    for web in WEBS:
        lines = []
        for path in static:
            lines.append(
                sh(
                    web,
                    f"curl -skf --max-time 5 -D /tmp/edge-headers https://127.0.0.1/static/{path.name}"
                    " | sha256sum | cut -c1-64 && grep -i '^cache-control:' /tmp/edge-headers"
                    " | tr -d '\\r'",
                ).strip()
            )
        certificate = sh(
            web,
            "openssl s_client -connect 127.0.0.1:443 -servername localhost </dev/null 2>/dev/null"
            " | openssl x509 -noout -fingerprint -sha256",
        ).strip()
        served[web] = (lines, certificate)
        assert [line.split()[0] for line in lines] == expected, (web, lines)
        assert certificate.startswith("sha256 Fingerprint="), (web, certificate)
    assert len({repr(v) for v in served.values()}) == 1, served


def test_edge_01_one_web_host_holds_the_address_and_says_so(vip):
    held = holders(vip)
    assert len(held) == 1, held
    for web in WEBS:
        samples = metrics(web, PORTS["node"], "keepalived_vip_owned{")
        assert samples, f"{web}: no keepalived_vip_owned from the node exporter"
        owned = [s for s in samples if f'address="{vip}"' in s]
        assert owned, samples
        assert owned[0].endswith(" 1" if web in held else " 0"), (web, owned)


def test_edge_02_stopping_nginx_moves_the_address(tokens, vip):
    new = web_event(
        tokens,
        vip,
        "stop nginx on",
        lambda web: sh(web, "systemctl stop nginx"),
        lambda web: sh(web, "systemctl start nginx"),
    )
    # nopreempt: the old holder's return does not take the address back.
    time.sleep(3)
    assert holders(vip) == [new], holders(vip)


def test_edge_03_killing_the_holder_moves_the_address(tokens, vip):
    def restart(web: str) -> None:
        docker("start", web)
        wait_web_ready(web)

    new = web_event(tokens, vip, "kill web host", lambda web: docker("kill", web), restart)
    assert holders(vip) == [new], holders(vip)


def test_edge_04_killing_the_redis_primary_fails_no_read(tokens, vip):
    """Sentinel promotes the replica; no read fails (the app fails open, then finds the new
    primary through Sentinel); cache hits rise on the new primary within HIT_BOUND."""
    primaries = [c for c in CACHES if redis_role(c) == "master"]
    assert len(primaries) == 1, {c: redis_role(c) for c in CACHES}
    old = primaries[0]
    (other,) = (c for c in CACHES if c != old)
    tokens.fresh(LOAD_MAX_SECONDS + REQUEST_TIMEOUT)
    hit = None

    def promoted_and_hit(started: float) -> float | None:
        """When `other` became the primary; then waits for a cache hit on it (`hit`)."""
        nonlocal hit
        promoted = None
        while time.time() < started + PROMOTE_BOUND and not promoted:
            if redis_role(other) == "master":
                promoted = time.time()
            else:
                time.sleep(0.25)
        if promoted:
            hits = redis_hits(other)
            while time.time() < promoted + HIT_BOUND and not hit:
                if redis_hits(other) > hits:
                    hit = time.time()
                else:
                    time.sleep(0.5)
        return promoted

    outcome = event_under_load(
        LoadRun(CLIENT, "localhost", vip),
        f"kill redis primary {old}",
        lambda: docker("kill", old),
        promoted_and_hit,
        ROWS,
    )
    promoted = outcome.ready
    if hit:
        ROWS.append(f"cache hits on {other}: {hit - promoted:.1f} s after the promotion")
    assert promoted, f"{other} was not promoted within {PROMOTE_BOUND:.0f} s"
    reads = [r for r in outcome.failures() if r["method"] == "GET"]
    assert not reads, outcome.describe_failures()
    assert not outcome.failures(), outcome.describe_failures()
    assert hit, f"no cache hit on the new primary {other} within {HIT_BOUND:.0f} s"


def test_edge_05_old_redis_primary_comes_back_as_a_replica():
    stopped = [c for c in CACHES if not running(c)]
    assert len(stopped) == 1, stopped
    (old,) = stopped
    began = time.time()
    docker("start", old)
    state: tuple = ()
    while time.time() < began + BOOT_WAIT:
        link = metrics(old, PORTS["redis"], "redis_master_link_up")
        state = (redis_role(old), link)
        if state[0] == "slave" and link and link[0].endswith(" 1"):
            break
        time.sleep(1)
    ROWS.append(f"rejoin {old}: replica in sync after {time.time() - began:.0f} s")
    assert state[0] == "slave", state
    assert state[1] and state[1][0].endswith(" 1"), state
    primaries = [c for c in CACHES if redis_role(c) == "master"]
    assert len(primaries) == 1 and old not in primaries, primaries


def test_edge_99_timeline():
    """The timeline table of the events above, in the test output."""
    assert ROWS, "no event ran"
    print(f"\n\nWeb and cache timeline:\n{header()}\n" + "\n".join(ROWS))
