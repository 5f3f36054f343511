import asyncio
import http.server
import threading
import time

from benchkit import openloop, system


def test_parse_cpu_stat():
    assert system.parse_cpu_stat("usage_usec 19352982\nuser_usec 14663410\n") == 19352982


def test_proc_stat_steal_and_total():
    steal, total, idle = system.parse_proc_stat("cpu  100 0 50 800 10 0 5 35 0 0\ncpu0 1 2 3\n")
    assert steal == 35 and total == 1000 and idle == 810
    assert system.steal_pct((0, 0, 0), (35, 1000, 810)) == 3.5
    assert system.busy_pct((0, 0, 0), (35, 1000, 810)) == 19.0


def test_bridge_address_from_ip_json():
    text = '[{"ifname": "br-2070", "addr_info": [{"family": "inet", "local": "172.30.57.1"}]}]'
    assert system.bridge_address(text) == "172.30.57.1"


def test_cgroup_candidates_cover_v1_v2_and_hybrid():
    paths = [str(p) for p in system.cgroup_cpu_files("abc")]
    assert "/sys/fs/cgroup/system.slice/docker-abc.scope/cpu.stat" in paths
    assert "/sys/fs/cgroup/unified/docker/abc/cpu.stat" in paths
    assert "/sys/fs/cgroup/cpuacct/docker/abc/cpuacct.usage" in paths


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = b"ok" if self.path != "/missing" else b"no"
        self.send_response(200 if self.path != "/missing" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_open_loop_sends_the_scheduled_requests_and_counts_non2xx():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    paths = iter(["/", "/missing"] * 50)
    try:
        r = asyncio.run(
            openloop.run(
                f"http://127.0.0.1:{server.server_port}",
                lambda: next(paths),
                openloop.Schedule(rate=100, duration_s=0.5),
            )
        )
    finally:
        server.shutdown()
    assert r["requests"] == 50
    assert r["errors"] == 0
    assert len(r["latencies_ms"]) == 50
    assert r["non2xx"] == 25
    assert all(latency >= 0 for latency in r["latencies_ms"])


class _SlowHandler(_Handler):
    def do_GET(self):
        time.sleep(2)
        super().do_GET()


def test_open_loop_counts_what_never_finishes_as_timeouts():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        r = asyncio.run(
            openloop.run(
                f"http://127.0.0.1:{server.server_port}",
                lambda: "/",
                openloop.Schedule(rate=20, duration_s=0.2, grace_s=0.5),
            )
        )
    finally:
        server.shutdown()
    assert r["requests"] == 4
    assert r["timeouts"] == 4 and r["errors"] == 4
    assert r["latencies_ms"] == []


class _OneShotHandler(_Handler):
    """Keeps the connection open but closes it after each response, without saying so."""

    def do_GET(self):
        super().do_GET()
        self.close_connection = True


def test_open_loop_replaces_connections_the_server_closed():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OneShotHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        r = asyncio.run(
            openloop.run(
                f"http://127.0.0.1:{server.server_port}",
                lambda: "/",
                openloop.Schedule(rate=50, duration_s=0.4, max_connections=1),
            )
        )
    finally:
        server.shutdown()
    assert r["errors"] == 0
    assert len(r["latencies_ms"]) == 20


class _BearerHandler(_Handler):
    """Answers 200 only to the token that goes with the user in the path."""

    def do_GET(self):
        user = self.path.split("/")[3]
        if self.headers.get("Authorization") != f"Bearer tok-{user}":
            self.path = "/missing"
        super().do_GET()


def test_open_loop_sends_each_requests_own_headers():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BearerHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    users = iter([3, 8] * 20)

    def request():
        user = next(users)
        return f"/api/users/{user}/orders", {"Authorization": f"Bearer tok-{user}"}

    try:
        r = asyncio.run(
            openloop.run(
                f"http://127.0.0.1:{server.server_port}",
                request,
                openloop.Schedule(rate=100, duration_s=0.4, max_connections=2),
            )
        )
    finally:
        server.shutdown()
    assert r["errors"] == 0 and r["non2xx"] == 0
    assert len(r["latencies_ms"]) == 40
