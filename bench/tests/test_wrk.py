import pytest
from benchkit import wrk

OUTPUT = """Running 10s test @ https://172.30.57.11/api/products/popular?limit=10
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    12.31ms    4.02ms  81.20ms   88.10%
    Req/Sec     2.61k   210.33     3.01k    71.00%
  Latency Distribution
     50%   11.52ms
     75%   13.80ms
     90%   16.91ms
     99%    1.02s
  26012 requests in 10.01s, 24.43MB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 7
Requests/sec:   2598.70
Transfer/sec:      2.44MB
"""


def test_parse_reads_throughput_latency_and_errors():
    r = wrk.parse(OUTPUT)
    assert r["requests"] == 26012
    assert r["duration_s"] == pytest.approx(10.01)
    assert r["rps"] == pytest.approx(2598.70)
    assert r["p50_ms"] == pytest.approx(11.52)
    assert r["p99_ms"] == pytest.approx(1020.0)
    assert r["errors"] == 5
    assert r["socket_errors"] == {"connect": 0, "read": 2, "write": 0, "timeout": 3}
    assert r["non2xx"] == 7


def test_parse_without_errors_counts_zero():
    clean = "\n".join(
        line for line in OUTPUT.splitlines() if "errors" not in line and "Non-2xx" not in line
    )
    r = wrk.parse(clean)
    assert r["errors"] == 0 and r["non2xx"] == 0


def test_parse_microseconds():
    r = wrk.parse(OUTPUT.replace("11.52ms", "950.00us"))
    assert r["p50_ms"] == pytest.approx(0.95)


def test_parse_refuses_other_text():
    with pytest.raises(ValueError):
        wrk.parse("unable to connect to 172.30.57.11:443 Connection refused\n")


def test_command_pins_one_thread_to_one_core():
    cmd = wrk.command("https://h/x", 64, 10, None, 1)
    assert cmd[:4] == ["taskset", "-c", "1", "wrk"]
    assert "-t1" in cmd and "-c64" in cmd and "-d10s" in cmd and "--latency" in cmd
    assert cmd[-1] == "https://h/x"


@pytest.mark.parametrize("kind", ["user", "user-orders", "category", "order-write", "mix"])
def test_lua_scripts_define_a_request_function(kind):
    script = wrk.lua_script(kind, 100, 10, 1000, {"popular": 4, "user": 2})
    assert "request = function()" in script
    assert script.count("(") == script.count(")")


def test_mix_script_weights_the_wheel():
    script = wrk.lua_script("mix", 1, 1, 1, {"popular": 3, "user": 1})
    wheel = next(line for line in script.splitlines() if line.startswith("local wheel"))
    assert wheel.count("paths['popular']") == 3 and wheel.count("paths['user']") == 1


def test_order_write_posts_json():
    script = wrk.lua_script("order-write", 5, 1, 9, None)
    assert "wrk.method = 'POST'" in script and "'/api/orders'" in script
    assert "application/json" in script


def test_unknown_script_kind():
    with pytest.raises(ValueError):
        wrk.lua_script("static", 1, 1, 1)
