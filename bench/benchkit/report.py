"""Ratios against the issue's targets, and the Markdown and PNG reports."""

from benchkit.stats import ratio

ERROR_BUDGET = 0.001  # a run with more than 0.1% errors is failed and not charted

# (name, numerator point, denominator point, kind, target). A point is
# (profile, endpoint); kind "rps" compares throughputs, "p99" fixed-rate p99 latencies.
# ">=" targets: the ratio must reach the value; "<=": stay at or below it.
TARGETS = [
    ("cached popular read vs naive", ("tuned", "popular"), ("naive", "popular"), "rps", ">=", 20),
    (
        "user with orders vs naive",
        ("tuned", "user-orders"),
        ("naive", "user-orders"),
        "rps",
        ">=",
        5,
    ),
    (
        "category page at 1M rows vs no index",
        ("tuned", "category"),
        ("noindex", "category"),
        "rps",
        ">=",
        100,
    ),
    (
        "category query at the database (pgbench) vs no index",
        ("tuned", "category@db"),
        ("noindex", "category@db"),
        "rps",
        ">=",
        100,
    ),
    (
        "workers = cores vs 1 worker",
        ("tuned", "popular"),
        ("workers1", "popular"),
        "rps",
        ">=",
        1.8,
    ),
    (
        "async vs blocking I/O, user by id at 64 conns",
        ("tuned", "user"),
        ("blocking", "user"),
        "rps",
        ">=",
        3,
    ),
    (
        "static via nginx vs via the app",
        ("tuned", "static"),
        ("static-app", "static"),
        "rps",
        ">=",
        10,
    ),
    ("tuned vs template-like peer, read mix", ("tuned", "mix"), ("peer", "mix"), "rps", ">=", 3),
    (
        "p99 at a fixed rate, tuned / peer",
        ("tuned", "user-orders@rate"),
        ("peer", "user-orders@rate"),
        "p99",
        "<=",
        0.5,
    ),
    (
        "cached popular read vs hello-world ceiling",
        ("tuned", "popular"),
        ("hello", "popular"),
        "rps",
        ">=",
        0.7,
    ),
    # Measured effects without a target in the issue: one per remaining tip.
    (
        "FastAPI floor (/health/live, no I/O) vs hello-world ceiling",
        ("tuned", "live"),
        ("hello", "popular"),
        "rps",
        None,
        None,
    ),
    (
        "cached popular read vs FastAPI floor",
        ("tuned", "popular"),
        ("tuned", "live"),
        "rps",
        None,
        None,
    ),
    (
        "Redis cache on vs off, popular read",
        ("tuned", "popular"),
        ("nocache", "popular"),
        "rps",
        None,
        None,
    ),
    (
        "pool vs a connection per request, user by id",
        ("tuned", "user"),
        ("nopool", "user"),
        "rps",
        None,
        None,
    ),
    (
        "PgBouncer vs direct, user by id",
        ("tuned", "user"),
        ("nopgbouncer", "user"),
        "rps",
        None,
        None,
    ),
    (
        "lean vs full models, user with orders",
        ("tuned", "user-orders"),
        ("fullmodels", "user-orders"),
        "rps",
        None,
        None,
    ),
    # What encrypting the hops behind nginx costs (the stack CA's TLS): a ratio below 1
    # is the share of throughput TLS takes.
    (
        "internal TLS on vs off, cached popular read",
        ("tuned", "popular"),
        ("plaintext", "popular"),
        "rps",
        None,
        None,
    ),
    (
        "internal TLS on vs off, user with orders",
        ("tuned", "user-orders"),
        ("plaintext", "user-orders"),
        "rps",
        None,
        None,
    ),
    ("internal TLS on vs off, read mix", ("tuned", "mix"), ("plaintext", "mix"), "rps", None, None),
    (
        "access log off vs on, popular read",
        ("tuned", "popular"),
        ("accesslog", "popular"),
        "rps",
        None,
        None,
    ),
]


def point_key(point: dict) -> tuple[str, str]:
    return point["profile"], point["endpoint"]


def ratios(points: list[dict]) -> list[dict]:
    """Every target whose two points were measured, with its ratio and verdict."""
    index = {point_key(p): p["median"] for p in points}
    rows = []
    for name, num, den, kind, op, target in TARGETS:
        if num not in index or den not in index:
            continue
        field = "rps" if kind == "rps" else "p99_ms"
        value = ratio(index[num].get(field), index[den].get(field))
        ok = None
        if value is not None and op is not None:
            ok = value >= target if op == ">=" else value <= target
        rows.append(
            {
                "comparison": name,
                "numerator": "/".join(num),
                "denominator": "/".join(den),
                "kind": kind,
                "op": op,
                "target": target,
                "value": value,
                "ok": ok,
            }
        )
    rows.append(error_row(points))
    return rows


def bounds(points: list[dict], rows: list[dict]) -> list[dict]:
    """For each throughput target missed: the most the machine allowed it.

    The denominator point kept the whole machine busy_pct busy (load generator included)
    at cpu_den server-CPU ms per request; the numerator costs cpu_num. Had the numerator
    turned every idle cycle into requests at its own cost per request, its ratio would
    be (cpu_den / cpu_num) * (100 / busy_pct): a ceiling above the reachable ratio (the
    load generator's share grows with the rate too), so a target above it cannot be met
    on this machine, whatever the stack does."""
    index = {point_key(p): p["median"] for p in points}
    out = []
    for row in rows:
        if row["kind"] != "rps" or row["ok"] is not False:
            continue
        num = index[tuple(row["numerator"].split("/"))]
        den = index[tuple(row["denominator"].split("/"))]
        cpu_num, cpu_den, busy = (
            num.get("cpu_ms_per_req"),
            den.get("cpu_ms_per_req"),
            den.get("host_busy_pct"),
        )
        if not (cpu_num and cpu_den and busy):
            continue
        out.append(
            {
                "comparison": row["comparison"],
                "cpu_num": cpu_num,
                "cpu_den": cpu_den,
                "busy_den": busy,
                "bound": cpu_den / cpu_num * 100 / busy,
                "target": row["target"],
            }
        )
    return out


def error_row(points: list[dict]) -> dict:
    """The tuned stack's errors and non-2xx (the target); the ablations' and the peer's
    count in the run's error rate, not here: they are built to fail where it does not."""
    errors = sum(
        r.get("errors", 0) + r.get("non2xx", 0)
        for p in points
        if p["profile"] == "tuned"
        for r in p.get("rounds", [])
    )
    return {
        "comparison": "errors (and non-2xx) of the tuned stack",
        "numerator": "",
        "denominator": "",
        "kind": "count",
        "op": "==",
        "target": 0,
        "value": errors,
        "ok": errors == 0,
    }


def error_rate(points: list[dict]) -> float:
    requests = sum(r.get("requests", 0) for p in points for r in p.get("rounds", []))
    bad = sum(r.get("errors", 0) + r.get("non2xx", 0) for p in points for r in p.get("rounds", []))
    return bad / requests if requests else 0.0


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return f"{value:,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _verdict(row: dict) -> str:
    return {True: "met", False: "NOT met", None: "measured"}[row["ok"]]


def render_markdown(result: dict) -> str:
    lines = [
        f"# Benchmark {result['date']} at {result['commit']}",
        "",
        f"Command: `{result['command']}`  ",
        f"Mode: {result['mode']}; {result['settings']['rounds']} interleaved rounds of "
        f"{result['settings']['duration_s']:g} s per point (medians), warm-up "
        f"{result['settings']['warmup_s']:g} s discarded; load generator pinned to core "
        f"{result['settings']['load_cpu']} (wrk -t1).",
        "",
        f"**Status: {'FAILED' if result['failed'] else 'passed'}** "
        f"(error rate {result['error_rate'] * 100:.3f}%, budget {ERROR_BUDGET * 100:.1f}%).",
        *[
            f"Profile {name} could not be applied: {why}"
            for name, why in result.get("failed_profiles", {}).items()
        ],
        "",
        "## Ratios against the targets",
        "",
        "| comparison | measured | target | verdict |",
        "|---|---|---|---|",
    ]
    for row in result["ratios"]:
        measured = _fmt(row["value"]) + (
            "x" if row["kind"] in ("rps", "p99") and row["value"] is not None else ""
        )
        target = "" if row["op"] is None else f"{row['op']} {row['target']}"
        lines.append(f"| {row['comparison']} | {measured} | {target} | {_verdict(row)} |")
    missed = bounds(result["points"], result["ratios"])
    if missed:
        lines += [
            "",
            "## What this machine allows the missed targets",
            "",
            "Each bound: had the tuned side turned every idle CPU cycle of the other side's "
            "point into requests at its own server CPU per request, its ratio would reach "
            "(CPU/req of the other side / CPU/req of the tuned side) x (100 / busy %), the "
            "busy % being the whole machine's (2 cores, load generator included) during "
            "the other side's point. A target above its bound cannot be met here.",
            "",
            "| comparison | CPU ms/req, tuned side | CPU ms/req, other side "
            "| machine busy, other side | bound | target |",
            "|---|---|---|---|---|---|",
        ]
        for b in missed:
            lines.append(
                f"| {b['comparison']} | {b['cpu_num']:.3f} | {b['cpu_den']:.3f} | "
                f"{b['busy_den']:.0f}% | {b['bound']:.2f}x | {b['target']} |"
            )
    lines += [
        "",
        "## Points (medians)",
        "",
        "| profile | endpoint | conns / rate | req/s | p50 ms | p99 ms | p99.9 ms "
        "| CPU ms/req | machine busy | errors | non-2xx |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in result["points"]:
        m = p["median"]
        load = f"{p['rate']:g}/s" if p.get("rate") else str(p.get("connections", ""))
        lines.append(
            f"| {p['profile']} | {p['endpoint']} | {load} | {_fmt(m.get('rps'), 0)} | "
            f"{_fmt(m.get('p50_ms'))} | {_fmt(m.get('p99_ms'))} | {_fmt(m.get('p999_ms'))} | "
            f"{_fmt(m.get('cpu_ms_per_req'), 3)} | {_fmt(m.get('host_busy_pct'), 0)}% | "
            f"{m.get('errors', 0)} | {m.get('non2xx', 0)} |"
        )
    lines += ["", "## Ceilings", ""]
    for c in result.get("ceilings", []):
        line = f"- {c['name']}: {_fmt(c.get('value'), 0)} {c.get('unit', '')} {c.get('note', '')}"
        lines.append(line.rstrip())
    lines += [
        "",
        "## Conditions",
        "",
        f"- nginx rate limits: {result['rate_limit']}",
        f"- steal time during the measurements: {result['steal_pct']:.2f}% of CPU time",
        f"- server CPU per request: the cgroup CPU time of every stack container "
        f"({', '.join(result['containers'])}) over the point, divided by its requests.",
        f"- profiles applied: {', '.join(result['profiles'])} (through the real playbooks; "
        "see bench/README.md).",
        "",
    ]
    if not result["failed"] and result.get("chart"):
        lines += [f"![throughput and p99]({result['chart']})", ""]
    return "\n".join(lines)


def render_chart(result: dict, path: str) -> None:
    """Throughput and p99 per profile and endpoint, with each target's ratio written on it."""
    import matplotlib  # noqa: PLC0415 - only the chart needs it, not the tests of the rest

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - after the backend is chosen

    points = [p for p in result["points"] if p["median"].get("rps") and not p.get("rate")]
    labels = [f"{p['profile']}\n{p['endpoint']}" for p in points]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(10, len(points) * 0.7), 9))
    xs = range(len(points))
    colors = ["tab:green" if p["profile"] == "tuned" else "tab:blue" for p in points]
    top.bar(xs, [p["median"]["rps"] for p in points], color=colors)
    # Each comparison's ratio above the bar it is measured against.
    where = {(p["profile"], p["endpoint"]): i for i, p in enumerate(points)}
    for row in result["ratios"]:
        den = tuple(row["denominator"].split("/"))
        if row["kind"] == "rps" and row["value"] is not None and den in where:
            i = where[den]
            top.annotate(
                f"{row['value']:.1f}x",
                (i, points[i]["median"]["rps"]),
                ha="center",
                va="bottom",
                fontsize=7,
                color="darkred" if row["ok"] is False else "black",
            )
    top.set_yscale("log")
    top.set_ylabel("requests/s (log)")
    top.set_title(
        f"Throughput and p99, {result['date']} at {result['commit']} "
        "(green: tuned; a number over a bar: tuned / that bar)"
    )
    bottom.bar(xs, [p["median"].get("p99_ms") or 0 for p in points], color="tab:orange")
    bottom.set_yscale("log")
    bottom.set_ylabel("p99 ms (log)")
    for axis in (top, bottom):
        axis.set_xticks(list(xs))
        axis.set_xticklabels(labels, rotation=90, fontsize=7)
    text = "\n".join(
        f"{r['comparison']}: {_fmt(r['value'])}"
        + (f" (target {r['op']} {r['target']})" if r["op"] else "")
        for r in result["ratios"]
        if r["kind"] in ("rps", "p99")
    )
    top.text(1.01, 1.0, text, transform=top.transAxes, fontsize=7, va="top", family="monospace")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
