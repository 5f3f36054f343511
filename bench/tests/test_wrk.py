import http.server
import json
import shutil
import subprocess
import threading

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


READERS = ((4, "tok.four.sig"), (9, "tok.nine.sig"))
WRITERS = ((998, "tok.writer.sig"),)
DATA = wrk.Data(100, 10, 1000, READERS, WRITERS)


@pytest.mark.parametrize("kind", ["user", "user-orders", "category", "order-write", "mix"])
def test_lua_scripts_define_a_request_function(kind):
    script = wrk.lua_script(kind, DATA, {"popular": 4, "user": 2, "user-orders": 2})
    assert "request = " in script
    assert script.count("(") == script.count(")")
    assert script.count("{") == script.count("}")


def test_mix_script_weights_the_wheel():
    script = wrk.lua_script("mix", wrk.Data(1, 1, 1, READERS), {"popular": 3, "user-orders": 1})
    wheel = next(line for line in script.splitlines() if line.startswith("local wheel"))
    assert wheel.count("requests['popular']") == 3 and wheel.count("requests['user-orders']") == 1


def test_user_orders_read_as_the_user_whose_token_goes_with_them():
    script = wrk.lua_script("user-orders", wrk.Data(5, 1, 9, READERS))
    assert "{4, {['Authorization'] = 'Bearer tok.four.sig'}}" in script
    assert "'/api/users/' .. reader[1] .. '/orders', reader[2]" in script
    # Only the sampled users: a random id's orders would be another user's (404).
    assert "user() .. '/orders'" not in script


def test_order_write_posts_json_with_a_writers_token_and_names_no_user():
    script = wrk.lua_script("order-write", DATA)
    assert "wrk.format('POST', '/api/orders', pick(writers)[2], body)" in script
    assert "['Content-Type'] = 'application/json'" in script
    assert "Bearer tok.writer.sig" in script
    assert "user_id" not in script


@pytest.mark.parametrize(
    ("kind", "data", "mix"),
    [
        ("user-orders", wrk.Data(1, 1, 1, (), WRITERS), None),
        ("mix", wrk.Data(1, 1, 1), {"user-orders": 1}),
        ("order-write", wrk.Data(1, 1, 1, READERS), None),
    ],
)
def test_token_scripts_need_their_users(kind, data, mix):
    with pytest.raises(ValueError, match="needs"):
        wrk.lua_script(kind, data, mix)


def test_unknown_script_kind():
    with pytest.raises(ValueError):
        wrk.lua_script("static", wrk.Data(1, 1, 1))


class _Recorder(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode()
        self.seen.append(
            (
                self.command,
                self.path,
                self.headers.get("Authorization"),
                self.headers.get("Content-Type"),
                body,
            )
        )
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


@pytest.mark.skipif(not shutil.which("wrk"), reason="wrk is not installed")
@pytest.mark.parametrize("kind", ["user-orders", "order-write", "mix"])
def test_wrk_sends_each_request_with_its_users_token(kind, tmp_path):
    handler = type("Recorder", (_Recorder,), {"seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    script = tmp_path / f"{kind}.lua"
    script.write_text(wrk.lua_script(kind, DATA, {"popular": 1, "user-orders": 1, "category": 1}))
    try:
        run = subprocess.run(
            [
                "wrk",
                "-t1",
                "-c2",
                "-d1s",
                "-s",
                str(script),
                f"http://127.0.0.1:{server.server_port}/",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        server.shutdown()
    assert run.returncode == 0, run.stderr
    assert wrk.parse(run.stdout)["requests"] > 10
    tokens = dict(READERS)
    seen = handler.seen
    for method, path, authorization, content_type, body in seen:
        if path == "/api/orders":
            assert (method, authorization, content_type) == (
                "POST",
                "Bearer tok.writer.sig",
                "application/json",
            )
            order = json.loads(body)
            assert set(order) == {"items"} and 1 <= order["items"][0]["product_id"] <= 1000
        elif path.endswith("/orders"):
            user = int(path.split("/")[3])
            assert (method, authorization) == ("GET", f"Bearer {tokens[user]}")
        else:
            assert method == "GET" and authorization is None, (method, path, authorization)
    paths = {path for _, path, *_ in seen}
    if kind == "mix":
        assert (
            any(p.startswith("/api/products?") for p in paths)
            and "/api/products/popular?limit=10" in paths
        )
    if kind == "order-write":
        assert paths == {"/api/orders"}
    else:
        assert {f"/api/users/{u}/orders" for u in tokens} <= paths
