import run


def test_parse_pgbench():
    text = "processed: 1\ntps = 12345.678901 (without initial connection time)\n"
    assert run.parse_pgbench(text) == 12345.678901
    assert run.parse_pgbench("connection failed") is None


def test_parse_redis_benchmark_csv():
    text = '"test","rps","avg_latency_ms"\n"GET","98765.43","0.300"\n'
    assert run.parse_redis_benchmark(text) == 98765.43
    assert run.parse_redis_benchmark("NOAUTH") is None


def test_every_planned_endpoint_is_known_and_every_profile_has_a_file():
    for plan in (run.FULL, run.SMOKE):
        for profile, endpoints in plan.items():
            assert (run.PROFILES_DIR / f"{profile}.yml").is_file()
            for ep in endpoints:
                assert ep == "user-orders@rate" or ep in run.ENDPOINTS


def test_every_target_is_measured_by_the_full_plan():
    measured = {(p, ep) for p, eps in run.FULL.items() for ep in eps}
    measured |= {(p, "category@db") for p in run.DB_CATEGORY_POINT}
    for _, num, den, *_ in run.report.TARGETS:
        assert num in measured and den in measured
