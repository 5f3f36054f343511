"""Paced load through nginx and its timeline, shared by the fault suite (default scenario)
and the failover tests (ha scenario).

LoadRun starts faults_load.py (this directory) in the web host's container: RATE requests
per second to nginx on its loopback, a mix of cached and uncached reads and order writes,
each bounded by REQUEST_TIMEOUT, for LOAD_MAX_SECONDS at most (it stops by itself).
Outcome turns the records of one event (a fault, a failover) into a row of the timeline
table (COLUMNS, header()).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from stack_testinfra import LOGIN_DIR

HERE = Path(__file__).resolve().parent

RATE = 12.0  # requests per second, under nginx's per-client limit_req (20 r/s)
# A client gives up after this long; a request still unanswered then hung.
REQUEST_TIMEOUT = 10.0
BASELINE = 3.0  # seconds of load before an event, which must all succeed
RECOVERY_RUN = 2.0  # seconds of nothing but successes that count as recovered
SETTLE_MAX = 20.0  # the load stops at the latest this long after the event ends
LOAD_MAX_SECONDS = 240.0
# Seeded demo users the load places orders as, and others whose own orders it reads: apart,
# so the writes (about one a second) leave the reads as costly in the last event as in the
# first.
WRITERS = (11, 12, 13, 14)
READERS = (15, 16, 17, 18)

COLUMNS = (
    ("fault", 28),
    ("requests", 8),
    ("failed", 6),
    ("5xx", 4),
    ("429", 4),
    ("timeout/conn", 12),
    ("other", 5),
    ("longest s", 9),
    ("ready s", 7),
    ("first ok s", 10),
    ("recovered s", 11),
    ("alert", 36),
)


def failure_kind(record: dict) -> str | None:
    status = record["status"]
    if 200 <= status < 300:
        return None
    if status == 0:
        return "timeout/conn"
    if status >= 500:
        return "5xx"
    if status == 429:
        return "429"
    return "other"


class LoadRun:
    """faults_load.py running in the web host's container; its records arrive while it runs.

    The caller makes sure the writers' and readers' tokens in LOGIN_DIR stay valid for
    LOAD_MAX_SECONDS + REQUEST_TIMEOUT (stack_testinfra.Tokens.fresh).
    """

    def __init__(self, container: str, server_name: str, address: str = "127.0.0.1") -> None:
        """From `container` to nginx at `address` (its own loopback by default; the web
        tier's floating address from another host in the ha scenario)."""
        # Closed in stop(), which every run reaches through its finally.
        self.stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                "docker",
                "exec",
                "-i",
                container,
                "python3",
                "-c",
                (HERE / "faults_load.py").read_text(),
                "--rate",
                str(RATE),
                "--timeout",
                str(REQUEST_TIMEOUT),
                "--max-seconds",
                str(LOAD_MAX_SECONDS),
                "--server-name",
                server_name,
                "--address",
                address,
                "--token-dir",
                LOGIN_DIR,
                "--writers",
                ",".join(map(str, WRITERS)),
                "--readers",
                ",".join(map(str, READERS)),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )
        self.records: list[dict] = []
        self.done = False
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            record = json.loads(line)
            if record.get("done"):
                self.done = True
            else:
                self.records.append(record)

    def wait_recovered(self, since: float) -> None:
        """Until the requests started since then end in RECOVERY_RUN seconds of successes,
        or SETTLE_MAX seconds pass."""
        while time.time() < since + SETTLE_MAX:
            if (
                time.time() > since + RECOVERY_RUN
                and success_run(self.records, since) >= RECOVERY_RUN
            ):
                return
            time.sleep(0.25)

    def stop(self) -> list[dict]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write("stop\n")
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            self.proc.wait(timeout=REQUEST_TIMEOUT + 30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.reader.join(5)
        self.stderr.seek(0)
        errors = self.stderr.read()
        self.stderr.close()
        assert self.done, f"the load did not finish: {errors[-3000:]}"
        return sorted(self.records, key=lambda r: r["start"])


def success_run(records: list[dict], since: float) -> float:
    """Seconds spanned by the successes that started after the last failure (of the
    requests started since then)."""
    after = sorted((r for r in list(records) if r["start"] >= since), key=lambda r: r["start"])
    last_failure = max((i for i, r in enumerate(after) if failure_kind(r)), default=-1)
    tail = after[last_failure + 1 :]
    return tail[-1]["start"] - tail[0]["start"] if tail else 0.0


@dataclass
class Outcome:
    """What one fault did to the load, and what Prometheus saw."""

    fault: str
    records: list[dict]
    started: float  # the fault began
    ended: float  # the fault was over (the restore step returned)
    ready: float | None = None  # the dependency answered again
    alert: str = "-"
    alert_seen: bool | None = None
    alert_resolved: bool | None = None
    down_targets: list = field(default_factory=list)

    def during(self) -> list[dict]:
        """Requests that had not finished before the fault began."""
        return [r for r in self.records if r["start"] + r["seconds"] >= self.started]

    def baseline_failures(self) -> list[dict]:
        return [
            r for r in self.records if r["start"] + r["seconds"] < self.started and failure_kind(r)
        ]

    def failures(self, method: str | None = None) -> list[dict]:
        return [
            r
            for r in self.during()
            if failure_kind(r) and (method is None or r["method"] == method)
        ]

    def count(self, kind: str) -> int:
        return sum(1 for r in self.during() if failure_kind(r) == kind)

    @property
    def longest(self) -> float:
        return max((r["seconds"] for r in self.during()), default=0.0)

    def first_ok(self) -> float | None:
        oks = [r["start"] for r in self.records if r["start"] >= self.ended and not failure_kind(r)]
        return min(oks) - self.ended if oks else None

    def recovered(self) -> float | None:
        """From the end of the fault to the first success after which nothing failed,
        when RECOVERY_RUN seconds of successes followed; None when they did not."""
        after = [r for r in self.records if r["start"] >= self.ended]
        last_failure = max((r["start"] for r in after if failure_kind(r)), default=self.ended)
        oks = [r["start"] for r in after if r["start"] >= last_failure and not failure_kind(r)]
        if not oks or max(oks) - min(oks) < RECOVERY_RUN - 1 / RATE:
            return None
        return min(oks) - self.ended

    def in_flight_between(self, first: float, last: float) -> int:
        return sum(
            1 for r in self.records if r["start"] <= last and r["start"] + r["seconds"] >= first
        )

    def row(self) -> str:
        def num(value: float | None) -> str:
            return "-" if value is None else f"{value:.2f}"

        cells = (
            self.fault,
            len(self.during()),
            len(self.failures()),
            self.count("5xx"),
            self.count("429"),
            self.count("timeout/conn"),
            self.count("other"),
            num(self.longest),
            num(None if self.ready is None else self.ready - self.ended),
            num(self.first_ok()),
            num(self.recovered()),
            self.alert,
        )
        return (
            "| "
            + " | ".join(f"{c!s:<{w}}" for c, (_, w) in zip(cells, COLUMNS, strict=True))
            + " |"
        )

    def describe_failures(self, limit: int = 12) -> str:
        return "; ".join(
            f"{r['method']} {r['kind']} at +{r['start'] - self.started:.2f}s "
            f"{r['status'] or r['error']} in {r['seconds']:.2f}s"
            for r in self.failures()[:limit]
        )


def header() -> str:
    names = "| " + " | ".join(f"{n:<{w}}" for n, w in COLUMNS) + " |"
    rule = "|" + "|".join("-" * (w + 2) for _, w in COLUMNS) + "|"
    return f"{names}\n{rule}"


def event_under_load(  # noqa: PLR0913 (keyword-only spans marks the planned kind)
    load: LoadRun,
    fault: str,
    act: Callable[[], object],
    wait_ready: Callable[[float], float | None],
    rows: list[str],
    *,
    spans: bool = False,
) -> Outcome:
    """One event of a timeline: BASELINE seconds of `load`, then `act()` (kill a host, stop
    a service; with `spans`, act is the whole event, such as a planned switchover, and the
    event ends when it returns). `wait_ready(ended)` waits for the dependency and returns
    when it answered again, or None. The load runs on until it recovered (or SETTLE_MAX)
    and stops; the outcome's row goes into `rows` and the test output."""
    try:
        time.sleep(BASELINE)
        started = time.time()
        act()
        ended = time.time() if spans else started
        ready = wait_ready(ended)
        load.wait_recovered(ready or time.time())
    finally:
        records = load.stop()
    outcome = Outcome(fault, records, started, ended, ready)
    rows.append(outcome.row())
    print(f"\n{header()}\n{outcome.row()}")
    return outcome
