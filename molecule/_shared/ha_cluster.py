"""The ha scenario's view of its Patroni cluster, from the Docker host (docker exec), for
the tests that kill, start and restore members (test_ha.py, test_pitr.py)."""

from __future__ import annotations

import json
import subprocess

DBS = ("ha-db1", "ha-db2", "ha-db3")
# A replica that follows the leader: Patroni 3.0.2 (Debian 12) says running, later streaming.
FOLLOWING = ("running", "streaming")
PATRONI_CONFIG = "/etc/patroni/15-main.yml"


def sh(container: str, command: str, *, timeout: float = 60, check: bool = True) -> str:
    proc = subprocess.run(
        ["docker", "exec", container, "sh", "-c", command],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check:
        assert proc.returncode == 0, f"{container}: {command}: {proc.stdout}{proc.stderr}"
    return proc.stdout


def docker(*args: str) -> None:
    proc = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, f"docker {' '.join(args)}: {proc.stdout}{proc.stderr}"


def running(container: str) -> bool:
    proc = subprocess.run(
        ["docker", "inspect", "-f", "{{.State.Running}}", container],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip() == "true"


def members(via: tuple[str, ...] = DBS) -> list[dict]:
    """patronictl's view of the cluster, asked on the first member that answers."""
    for db in via:
        if not running(db):
            continue
        out = sh(db, f"patronictl -c {PATRONI_CONFIG} list -f json", timeout=20, check=False)
        if out.strip().startswith("["):
            return json.loads(out)
    return []


def leader(via: tuple[str, ...] = DBS) -> str | None:
    """The running leader among these members. A killed leader stays listed as the
    leader until its key expires: asking only the survivors about themselves skips it."""
    found = [
        m["Member"]
        for m in members(via)
        if m["Role"] == "Leader" and m["State"] == "running" and m["Member"] in via
    ]
    return found[0] if found else None


def psql(db: str, sql: str, database: str = "shop") -> str:
    """One query as postgres on a member (no double quotes or $ in sql), its rows as text."""
    return sh(db, f'runuser -u postgres -- psql -X -d {database} -Atc "{sql}"').strip()
