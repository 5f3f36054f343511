import argparse
import random
import re
import time

import pytest
import run
from benchkit import tokens, wrk


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


def test_token_points_are_planned_endpoints():
    planned = {ep for plan in (run.FULL, run.SMOKE) for eps in plan.values() for ep in eps}
    assert run.WRITER_POINTS <= run.TOKEN_POINTS
    assert {"user-orders", "order-write", "user-orders@rate"} <= run.TOKEN_POINTS <= planned


@pytest.fixture
def runner(tmp_path, monkeypatch):
    """A Runner past count_data(), without a stack: logins are counted, not sent."""
    r = object.__new__(run.Runner)
    r.args = argparse.Namespace(smoke=False)
    r.tmp, r.base_url, r.scripts = tmp_path, "https://web", {}
    r.users, r.categories, r.products = 100000, 100, 1000000
    r.reader_ids, r.writer_ids = tokens.split_sample(list(range(1, 1001)), 64, 16)
    r.login, r.script_data = None, None
    r.logins = []
    r.log = lambda message: None

    def log_in_all(base_url, users, concurrency):
        r.logins.append(list(users))
        assert concurrency == run.LOGIN_CONCURRENCY
        return [(u, f"tok.{u}.{len(r.logins)}") for u in users], 900

    monkeypatch.setattr(tokens, "log_in_all", log_in_all)
    return r


def test_tokens_are_fetched_once_and_written_into_the_scripts(runner, tmp_path):
    runner.prepare_tokens("tuned", writers=True, for_seconds=20)
    runner.prepare_tokens("tuned", writers=True, for_seconds=20)
    assert runner.logins == [runner.reader_ids + runner.writer_ids]
    assert [u for u, _ in runner.script_data.readers] == runner.reader_ids
    assert [u for u, _ in runner.script_data.writers] == runner.writer_ids
    orders = (tmp_path / "user-orders.lua").read_text()
    first = runner.reader_ids[0]
    assert f"{{{first}, {{['Authorization'] = 'Bearer tok.{first}.1'}}}}" in orders
    assert "Bearer tok.985.1" in (tmp_path / "order-write.lua").read_text()
    assert set(runner.scripts) == {"user-orders", "order-write", "mix"}
    path, headers = runner.user_orders_request(random.Random(1))  # noqa: S311 - picks a user
    user = int(path.split("/")[3])
    assert user in runner.reader_ids and headers == {"Authorization": f"Bearer tok.{user}.1"}


def test_readers_only_until_a_profile_writes(runner, tmp_path):
    runner.prepare_tokens("fullmodels", writers=False, for_seconds=20)
    assert runner.logins == [runner.reader_ids]
    assert not (tmp_path / "order-write.lua").exists()
    runner.prepare_tokens("tuned", writers=True, for_seconds=20)
    assert runner.logins[-1] == runner.reader_ids + runner.writer_ids


def test_tokens_are_renewed_before_they_would_expire_during_a_point(runner):
    runner.prepare_tokens("tuned", writers=False, for_seconds=20)
    runner.login["expires_at"] = time.monotonic() + 20 + run.TOKEN_MARGIN_S - 1
    runner.prepare_tokens("tuned", writers=False, for_seconds=20)
    assert len(runner.logins) == 2
    sent = re.findall(r"Bearer tok\.\d+\.(\d+)'", (runner.tmp / "user-orders.lua").read_text())
    assert set(sent) == {"2"}


def test_the_peer_gets_the_same_users_and_no_login(runner, tmp_path):
    runner.prepare_tokens("peer", writers=False, for_seconds=20)
    assert runner.logins == []
    assert [u for u, _ in runner.script_data.readers] == runner.reader_ids
    assert {t for _, t in runner.script_data.readers} == {tokens.PLACEHOLDER}
    # Back on the shop, real tokens replace the placeholders in the scripts.
    runner.prepare_tokens("tuned", writers=False, for_seconds=20)
    assert tokens.PLACEHOLDER not in (tmp_path / "mix.lua").read_text()
    assert isinstance(runner.script_data, wrk.Data)


def test_plaintext_switches_the_data_tier_and_the_app_and_tuned_switches_them_back(runner):
    """Each profile applies only the playbooks whose variables differ, data tier first."""
    runner.plan = {"tuned": ["popular"], "plaintext": ["popular"]}
    runner.gateway = "172.30.0.1"
    runner.inventory, runner.cache_host = {"_meta": {"hostvars": {}}}, "cache1"
    runner.applied = {k: None for k in ("db", "cache", "app", "web", "indexes", "peer")}
    runner.applied.update(data=True, indexes="present", peer=False)
    applied = []
    runner.playbook = lambda path, label, files, extra, skip_tags="": applied.append(label)
    runner.apply("tuned")  # state unknown: every playbook that a profile of the plan changes
    assert applied == ["tuned db.yml", "tuned cache.yml", "tuned app.yml", "tuned web.yml"]
    assert runner.redis_tls() == ["--tls", "--cacert", run.REDIS_TLS_CA]
    applied.clear()
    runner.apply("plaintext")
    # PostgreSQL and PgBouncer (db.yml), Redis (cache.yml), then the app that follows them.
    assert applied[:3] == ["plaintext db.yml", "plaintext cache.yml", "plaintext app.yml"]
    assert runner.redis_tls() == []
    applied.clear()
    runner.apply("tuned")
    assert applied[:3] == ["tuned db.yml", "tuned cache.yml", "tuned app.yml"]


def test_plaintext_profile_reaches_the_db_cache_and_app_playbooks():
    """Every variable of the plaintext profile lands in the playbook of the role that reads it."""
    profile = run.yaml.safe_load((run.PROFILES_DIR / "plaintext.yml").read_text())
    wanted = run.split_by_playbook(profile)
    assert wanted["db"] == {
        "postgresql_tls_enabled": False,
        "pgbouncer_tls_enabled": False,
        "pgbouncer_server_tls_enabled": False,
    }
    assert wanted["cache"] == {"redis_tls_enabled": False}
    assert wanted["app"] == {
        "app_redis_tls_enabled": False,
        "app_db_tls_enabled": False,
        "app_db_migration_tls_enabled": False,
    }
    assert wanted["web"] == {}
