import json

import pytest
from benchkit import report


def point(profile, endpoint, rps, **extra):
    p99, rate = extra.get("p99", 10.0), extra.get("rate")
    errors, non2xx = extra.get("errors", 0), extra.get("non2xx", 0)
    rounds = [{"requests": int(rps * 10), "errors": errors, "non2xx": non2xx}]
    return {
        "profile": profile,
        "endpoint": endpoint,
        "connections": 32,
        "rate": rate,
        "rounds": rounds,
        "median": {
            "rps": rps,
            "p50_ms": 1.0,
            "p99_ms": p99,
            "p999_ms": None,
            "cpu_ms_per_req": 0.5,
            "errors": errors,
            "non2xx": non2xx,
        },
    }


POINTS = [
    point("tuned", "popular", 3000),
    point("naive", "popular", 100),
    point("hello", "popular", 4000),
    point("tuned", "user-orders@rate", 200, p99=20.0, rate=200),
    point("peer", "user-orders@rate", 200, p99=80.0, rate=200),
]


def rows_by_name(rows):
    return {r["comparison"]: r for r in rows}


def test_ratios_only_for_measured_pairs_with_verdicts():
    rows = rows_by_name(report.ratios(POINTS))
    assert rows["cached popular read vs naive"]["value"] == pytest.approx(30)
    assert rows["cached popular read vs naive"]["ok"] is True
    assert rows["cached popular read vs hello-world ceiling"]["value"] == pytest.approx(0.75)
    assert rows["p99 at a fixed rate, tuned / peer"]["value"] == pytest.approx(0.25)
    assert rows["p99 at a fixed rate, tuned / peer"]["ok"] is True
    assert "user with orders vs naive" not in rows
    errors = rows["errors (and non-2xx) of the tuned stack"]
    assert errors["value"] == 0 and errors["ok"]


def test_a_missed_target_is_not_met():
    rows = rows_by_name(
        report.ratios([point("tuned", "popular", 300), point("naive", "popular", 100)])
    )
    assert rows["cached popular read vs naive"]["ok"] is False


def test_errors_are_counted_and_rate_computed():
    pts = [
        point("tuned", "popular", 1000, errors=3, non2xx=2),
        point("peer", "mix", 1000, errors=4),
    ]
    # The target counts the tuned stack's; the run's error rate counts everyone's.
    assert rows_by_name(report.ratios(pts))["errors (and non-2xx) of the tuned stack"]["value"] == 5
    assert report.error_rate(pts) == pytest.approx(9 / 20000)


def result(points, failed=False):
    return {
        "date": "2026-11-30",
        "commit": "abc1234",
        "command": "bench/run.py",
        "mode": "full",
        "settings": {"rounds": 3, "duration_s": 10, "warmup_s": 2, "load_cpu": 1},
        "failed": failed,
        "error_rate": 0.0,
        "ratios": report.ratios(points),
        "points": points,
        "ceilings": [{"name": "redis-benchmark GET", "value": 90000.0, "unit": "req/s"}],
        "rate_limit": "exempt",
        "steal_pct": 0.5,
        "containers": ["stack-web1"],
        "profiles": ["tuned", "naive"],
        "chart": "2026-11-30-abc1234.png",
    }


def test_markdown_has_the_ratio_table_points_and_conditions():
    md = report.render_markdown(result(POINTS))
    assert "| comparison | measured | target | verdict |" in md
    assert "| cached popular read vs naive | 30.00x | >= 20 | met |" in md
    assert "| tuned | user-orders@rate | 200/s |" in md
    assert "steal time" in md and "nginx rate limits: exempt" in md
    assert "Status: passed" in md and "![throughput and p99](2026-11-30-abc1234.png)" in md


def test_a_failed_run_is_marked_and_not_charted():
    md = report.render_markdown(result(POINTS, failed=True))
    assert "Status: FAILED" in md and "![" not in md


def test_chart_is_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "chart.png"
    report.render_chart(json.loads(json.dumps(result(POINTS))), str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_missed_target_gets_the_bound_the_machine_allows():
    tuned = point("tuned", "popular", 1900)
    one = point("workers1", "popular", 1800)
    tuned["median"]["cpu_ms_per_req"], one["median"]["cpu_ms_per_req"] = 1.0, 0.9
    one["median"]["host_busy_pct"] = 90.0
    rows = report.ratios([tuned, one])
    (bound,) = report.bounds([tuned, one], rows)
    assert bound["comparison"] == "workers = cores vs 1 worker"
    # 0.9 / 1.0 ms per request, and 10% of the machine idle: at most 1.0x.
    assert bound["bound"] == pytest.approx(1.0)
    assert report.bounds([tuned, one], report.ratios([point("tuned", "popular", 3700), one])) == []
