#!/usr/bin/env python3
"""Generate the stack's Grafana dashboards as JSON into ../files/dashboards/.

The JSON is committed; the role copies it as it is, nothing is fetched at deploy time.
Run this after changing a panel, and commit the result:

    python3 roles/grafana/scripts/generate_dashboards.py          # write the files
    python3 roles/grafana/scripts/generate_dashboards.py --check  # exit 1 if they differ

Queries use the data source with the fixed uid the role provisions, the app's metric
names (http_requests_total, http_request_duration_seconds, shop_cache_requests_total,
shop_db_pool_*, shop_login_failures_total) and the metric names of Debian 12's exporters.
Every dashboard has `env` and `host` variables; `$__rate_interval` is Grafana's rate window.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

DATASOURCE = {"type": "prometheus", "uid": "stack-prometheus"}
OUT = Path(__file__).resolve().parent.parent / "files" / "dashboards"
RATE = "[$__rate_interval]"
# Filesystems that are disks, the same selector as the prometheus role's alert rules.
DISKS = 'fstype!~"tmpfs|ramfs|devtmpfs|squashfs|nsfs|proc|sysfs|fuse.*"'


@dataclass
class Panel:
    title: str
    exprs: list[tuple[str, str]]  # (PromQL, legend)
    unit: str = "short"
    kind: str = "timeseries"
    description: str = ""
    width: int = 12
    extra: dict = field(default_factory=dict)


def sel(job: str, extra: str = "") -> str:
    """Label selector for one job, filtered by the dashboard's variables."""
    parts = [f'job="{job}"', 'env=~"$env"', 'host=~"$host"']
    if extra:
        parts.append(extra)
    return "{" + ", ".join(parts) + "}"


def variable(name: str, label: str, query: str) -> dict:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-variable"},
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "refresh": 2,
        "sort": 1,
        "hide": 0,
    }


def render_panel(panel: Panel, panel_id: int, x: int, y: int) -> dict:
    height = 4 if panel.kind == "stat" else 8
    targets = [
        {
            "datasource": DATASOURCE,
            "expr": expr,
            "legendFormat": legend,
            "refId": chr(ord("A") + index),
        }
        for index, (expr, legend) in enumerate(panel.exprs)
    ]
    body = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": height, "w": panel.width, "x": x, "y": y},
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
    }
    if panel.kind == "timeseries":
        body["options"] = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    else:
        body["options"] = {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"}
    body.update(panel.extra)
    return body


def dashboard(uid: str, title: str, job: str, description: str, panels: list[Panel]) -> dict:
    rendered, x, y, row_height = [], 0, 0, 0
    for panel_id, panel in enumerate(panels, start=1):
        if x + panel.width > 24:
            x, y, row_height = 0, y + row_height, 0
        item = render_panel(panel, panel_id, x, y)
        rendered.append(item)
        x += panel.width
        row_height = max(row_height, item["gridPos"]["h"])
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["stack", job],
        "timezone": "browser",
        "editable": False,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                variable("env", "Environment", f'label_values(up{{job="{job}"}}, env)'),
                variable("host", "Host", f'label_values(up{{job="{job}", env=~"$env"}}, host)'),
            ]
        },
        "panels": rendered,
    }


def up_panel(job: str, width: int = 24) -> Panel:
    return Panel(
        "Targets up",
        [(f"up{sel(job)}", "{{host}}")],
        kind="stat",
        width=width,
        description="1 when Prometheus scrapes the target; 0 fires TargetDown after its for: time.",
    )


def app() -> dict:
    requests = f"http_requests_total{sel('app')}"
    buckets = f"http_request_duration_seconds_bucket{sel('app')}"
    cache = f"shop_cache_requests_total{sel('app')}"
    errors = sel("app", 'status=~"5.."')
    hits = sel("app", 'result="hit"')
    quantiles = [
        (
            f"histogram_quantile({q}, sum by (route, le) (rate({buckets}{RATE})))",
            f"p{n} {{{{route}}}}",
        )
        for q, n in [("0.5", 50), ("0.95", 95), ("0.99", 99)]
    ]
    return dashboard(
        "stack-app",
        "App",
        "app",
        "The FastAPI service: traffic, errors, latency by route, cache and database pool.",
        [
            up_panel("app"),
            Panel(
                "Request rate by route",
                [(f"sum by (route) (rate({requests}{RATE}))", "{{route}}")],
                "reqps",
            ),
            Panel(
                "Responses by status",
                [(f"sum by (status) (rate({requests}{RATE}))", "{{status}}")],
                "reqps",
            ),
            Panel(
                "5xx ratio",
                [
                    (
                        f"sum(rate(http_requests_total{errors}{RATE}))"
                        f" / sum(rate({requests}{RATE}))",
                        "5xx share",
                    )
                ],
                "percentunit",
                description="Share of 5xx responses; HighHttp5xxRatio fires above its threshold.",
            ),
            Panel("Latency p50 / p95 / p99 by route", quantiles, "s", width=12),
            Panel(
                "Cache hit ratio",
                [
                    (
                        f"sum(rate(shop_cache_requests_total{hits}{RATE}))"
                        f" / sum(rate({cache}{RATE}))",
                        "hit ratio",
                    )
                ],
                "percentunit",
                description="Cache hits among lookups; Redis errors count as misses in the app.",
            ),
            Panel(
                "Cache lookups by result",
                [(f"sum by (result) (rate({cache}{RATE}))", "{{result}}")],
                "ops",
            ),
            Panel(
                "DB pool: connections checked out and pool size",
                [
                    (
                        f"sum by (host) (shop_db_pool_checked_out{sel('app')})",
                        "checked out {{host}}",
                    ),
                    (f"sum by (host) (shop_db_pool_size{sel('app')})", "pool size {{host}}"),
                ],
                description="Checked out close to the pool size: requests queue for a connection.",
            ),
            Panel(
                "Failed logins",
                [
                    (
                        f"sum by (host) (rate(shop_login_failures_total{sel('app')}{RATE}))",
                        "{{host}}",
                    )
                ],
                "reqps",
                description=(
                    "401 answers of POST /api/auth/token per second; ShopLoginFailureBurst"
                    " fires when their sum stays above its threshold."
                ),
            ),
        ],
    )


def postgresql() -> dict:
    pg = sel("postgres")
    db = f"pg_stat_database_xact_commit{pg}"
    return dashboard(
        "stack-postgresql",
        "PostgreSQL",
        "postgres",
        "PostgreSQL (prometheus-postgres-exporter): connections, transactions, cache, locks.",
        [
            Panel(
                "Exporter sees PostgreSQL",
                [(f"pg_up{pg}", "{{host}}")],
                kind="stat",
                width=12,
            ),
            Panel(
                "Connections used of max_connections",
                [
                    (
                        f"sum by (host) (pg_stat_activity_count{pg})"
                        f" / max by (host) (pg_settings_max_connections{pg})",
                        "{{host}}",
                    )
                ],
                "percentunit",
                kind="stat",
                width=12,
                description="PostgresConnectionsNearMax fires above its threshold.",
            ),
            Panel(
                "Connections by state",
                [(f"sum by (state) (pg_stat_activity_count{pg})", "{{state}}")],
            ),
            Panel(
                "Transactions per second",
                [
                    (f"sum by (datname) (rate({db}{RATE}))", "commit {{datname}}"),
                    (
                        f"sum by (datname) (rate(pg_stat_database_xact_rollback{pg}{RATE}))",
                        "rollback {{datname}}",
                    ),
                ],
                "ops",
            ),
            Panel(
                "Buffer cache hit ratio",
                [
                    (
                        f"sum by (datname) (rate(pg_stat_database_blks_hit{pg}{RATE}))"
                        f" / (sum by (datname) (rate(pg_stat_database_blks_hit{pg}{RATE}))"
                        f" + sum by (datname) (rate(pg_stat_database_blks_read{pg}{RATE})))",
                        "{{datname}}",
                    )
                ],
                "percentunit",
            ),
            Panel(
                "Rows per second",
                [
                    (f"sum(rate(pg_stat_database_tup_{kind}{pg}{RATE}))", kind)
                    for kind in ("fetched", "returned", "inserted", "updated", "deleted")
                ],
                "rowsps",
            ),
            Panel("Locks by mode", [(f"sum by (mode) (pg_locks_count{pg})", "{{mode}}")]),
            Panel(
                "Deadlocks and conflicts",
                [
                    (
                        f"sum(increase(pg_stat_database_deadlocks{pg}{RATE}))",
                        "deadlocks",
                    ),
                    (
                        f"sum(increase(pg_stat_database_conflicts{pg}{RATE}))",
                        "conflicts",
                    ),
                ],
            ),
            Panel(
                "Database size",
                [(f"pg_database_size_bytes{pg}", "{{datname}}")],
                "bytes",
                width=24,
            ),
        ],
    )


def pgbouncer() -> dict:
    pgb = sel("pgbouncer")
    return dashboard(
        "stack-pgbouncer",
        "PgBouncer",
        "pgbouncer",
        "PgBouncer (prometheus-pgbouncer-exporter): clients, waiting clients, servers.",
        [
            up_panel("pgbouncer"),
            Panel(
                "Clients active and waiting by database",
                [
                    (
                        f"sum by (database) (pgbouncer_active_clients{pgb})",
                        "active {{database}}",
                    ),
                    (
                        f"sum by (database) (pgbouncer_waiting_clients{pgb})",
                        "waiting {{database}}",
                    ),
                ],
                description="Clients with a query but no server: PgBouncerClientsWaiting.",
            ),
            Panel(
                "Client and server connections",
                [
                    (f"sum(pgbouncer_used_clients{pgb})", "clients used"),
                    (f"sum(pgbouncer_used_servers{pgb})", "servers used"),
                    (f"sum(pgbouncer_free_servers{pgb})", "servers free"),
                ],
            ),
            Panel(
                "Pool size by database",
                [
                    (
                        f"sum by (database) (pgbouncer_pool_size{pgb})",
                        "pool {{database}}",
                    ),
                    (
                        f"sum by (database) (pgbouncer_reserve_pool{pgb})",
                        "reserve {{database}}",
                    ),
                ],
            ),
            Panel(
                "Traffic by database",
                [
                    (
                        f"sum by (database) (rate(pgbouncer_received_bytes_total{pgb}{RATE}))",
                        "received {{database}}",
                    ),
                    (
                        f"sum by (database) (rate(pgbouncer_sent_bytes_total{pgb}{RATE}))",
                        "sent {{database}}",
                    ),
                ],
                "Bps",
            ),
            Panel(
                "Time spent in queries (seconds per second)",
                [
                    (
                        f"sum by (database) (rate(pgbouncer_query_microseconds_total{pgb}{RATE}))"
                        " / 1e6",
                        "{{database}}",
                    )
                ],
                "s",
                width=24,
            ),
        ],
    )


def redis() -> dict:
    rd = sel("redis")
    return dashboard(
        "stack-redis",
        "Redis",
        "redis",
        "Redis from prometheus-redis-exporter: memory against maxmemory, hits, evictions, clients.",
        [
            Panel(
                "Exporter sees Redis",
                [(f"redis_up{rd}", "{{host}}")],
                kind="stat",
                width=12,
            ),
            Panel(
                "Memory used of maxmemory",
                [
                    (
                        f"redis_memory_used_bytes{rd} / (redis_memory_max_bytes{rd} > 0)",
                        "{{host}}",
                    )
                ],
                "percentunit",
                kind="stat",
                width=12,
                description="RedisMemoryNearMax fires above its threshold.",
            ),
            Panel(
                "Memory",
                [
                    (f"redis_memory_used_bytes{rd}", "used {{host}}"),
                    (f"redis_memory_max_bytes{rd}", "maxmemory {{host}}"),
                ],
                "bytes",
            ),
            Panel(
                "Keyspace hit ratio",
                [
                    (
                        f"sum(rate(redis_keyspace_hits_total{rd}{RATE}))"
                        f" / (sum(rate(redis_keyspace_hits_total{rd}{RATE}))"
                        f" + sum(rate(redis_keyspace_misses_total{rd}{RATE})))",
                        "hit ratio",
                    )
                ],
                "percentunit",
            ),
            Panel(
                "Commands per second",
                [
                    (
                        f"sum by (host) (rate(redis_commands_processed_total{rd}{RATE}))",
                        "{{host}}",
                    )
                ],
                "ops",
            ),
            Panel(
                "Evicted and expired keys per second",
                [
                    (f"sum(rate(redis_evicted_keys_total{rd}{RATE}))", "evicted"),
                    (f"sum(rate(redis_expired_keys_total{rd}{RATE}))", "expired"),
                ],
                "ops",
                description="Evictions mean maxmemory is reached: RedisEvictingKeys.",
            ),
            Panel(
                "Connected clients",
                [(f"sum by (host) (redis_connected_clients{rd})", "{{host}}")],
            ),
            Panel("Keys by database", [(f"sum by (db) (redis_db_keys{rd})", "{{db}}")]),
        ],
    )


def nginx() -> dict:
    ngx = sel("nginx")
    return dashboard(
        "stack-nginx",
        "Nginx",
        "nginx",
        "nginx from prometheus-nginx-exporter (stub_status): requests and connections.",
        [
            Panel(
                "Exporter sees nginx",
                [(f"nginx_up{ngx}", "{{host}}")],
                kind="stat",
                width=24,
            ),
            Panel(
                "Requests per second",
                [
                    (
                        f"sum by (host) (rate(nginx_http_requests_total{ngx}{RATE}))",
                        "{{host}}",
                    )
                ],
                "reqps",
            ),
            Panel(
                "Connections by state",
                [
                    (f"sum(nginx_connections_{state}{ngx})", state)
                    for state in ("active", "reading", "writing", "waiting")
                ],
            ),
            Panel(
                "Connections accepted and handled per second",
                [
                    (f"sum(rate(nginx_connections_accepted{ngx}{RATE}))", "accepted"),
                    (f"sum(rate(nginx_connections_handled{ngx}{RATE}))", "handled"),
                ],
                "ops",
                description="Accepted but not handled means dropped (worker_connections reached).",
                width=24,
            ),
        ],
    )


def hosts() -> dict:
    node = sel("node")
    disks = sel("node", DISKS)
    idle = sel("node", 'mode="idle"')
    nics = sel("node", 'device!="lo"')
    return dashboard(
        "stack-hosts",
        "Hosts",
        "node",
        "Every host from prometheus-node-exporter: CPU, load, memory, disks, network.",
        [
            up_panel("node"),
            Panel(
                "CPU busy",
                [(f"1 - avg by (host) (rate(node_cpu_seconds_total{idle}{RATE}))", "{{host}}")],
                "percentunit",
            ),
            Panel("Load (1 minute)", [(f"node_load1{node}", "{{host}}")]),
            Panel(
                "Memory available",
                [
                    (
                        f"node_memory_MemAvailable_bytes{node} / node_memory_MemTotal_bytes{node}",
                        "{{host}}",
                    )
                ],
                "percentunit",
            ),
            Panel(
                "Disk space free",
                [
                    (
                        f"node_filesystem_avail_bytes{disks} / node_filesystem_size_bytes{disks}",
                        "{{host}} {{mountpoint}}",
                    )
                ],
                "percentunit",
                description="DiskAlmostFull and DiskFillingUp watch these filesystems.",
            ),
            Panel(
                "Disk throughput",
                [
                    (
                        f"sum by (host) (rate(node_disk_read_bytes_total{node}{RATE}))",
                        "read {{host}}",
                    ),
                    (
                        f"sum by (host) (rate(node_disk_written_bytes_total{node}{RATE}))",
                        "written {{host}}",
                    ),
                ],
                "Bps",
            ),
            Panel(
                "Network traffic",
                [
                    (
                        f"sum by (host) (rate(node_network_receive_bytes_total{nics}{RATE}))",
                        "in {{host}}",
                    ),
                    (
                        f"sum by (host) (rate(node_network_transmit_bytes_total{nics}{RATE}))",
                        "out {{host}}",
                    ),
                ],
                "Bps",
            ),
            Panel(
                "Open file descriptors", [(f"node_filefd_allocated{node}", "{{host}}")], width=24
            ),
        ],
    )


DASHBOARDS = {
    "app": app,
    "postgresql": postgresql,
    "pgbouncer": pgbouncer,
    "redis": redis,
    "nginx": nginx,
    "hosts": hosts,
}


def render(build) -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed JSON differs")
    args = parser.parse_args()
    stale = []
    for name, build in DASHBOARDS.items():
        path = OUT / f"{name}.json"
        text = render(build)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
    if stale:
        print(
            f"dashboards out of date, run {Path(__file__).name}: {', '.join(stale)}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
