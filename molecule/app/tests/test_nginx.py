"""Behaviour of the nginx role on a web host in front of a real app host.

Control IDs (nginx-NN) name each check, the way hardening baselines do. Requests go to
the web host's own loopback; the app runs on the other host, with its data tier.
"""

import json
import os
import time
from pathlib import Path

import pytest
from stack_testinfra import Refusals, converge, hosts_in, run_playbook

testinfra_hosts = hosts_in("web")

# Roles of the scenario other than nginx: their preflight still runs when they are skipped.
OTHER_ROLES = "common,postgresql,pgbouncer,redis,app"
DRAIN_PLAYBOOK = str(Path(os.environ["MOLECULE_PROJECT_DIRECTORY"], "molecule/app/drain.yml"))
UPSTREAM_SERVERS = "/etc/nginx/shop_app_servers.conf"

JOURNAL_UNITS = ["nginx", "prometheus-nginx-exporter"]
HTTPS = "https://127.0.0.1"
FINGERPRINTED = "/static/app.c96b20ee.js"
SECURITY_HEADERS = {
    "strict-transport-security": "max-age=63072000; includeSubDomains",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "strict-origin-when-cross-origin",
}


def fetch(host, url: str, *options: str) -> tuple[int, dict[str, list[str]], str]:
    """Status, headers (lower-case names, every value) and body of one request."""
    args = " ".join(options)
    out = host.run(f"curl -sk -m 20 -D /dev/stderr {args} {url}")
    assert out.rc == 0, out.stderr
    blocks = [b for b in out.stderr.replace("\r", "").split("\n\n") if b.startswith("HTTP/")]
    lines = blocks[-1].splitlines()
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return int(lines[0].split()[1]), headers, out.stdout


def assert_security_headers(headers):
    for name, value in SECURITY_HEADERS.items():
        assert headers.get(name) == [value], (name, headers.get(name))
    assert "content-security-policy" in headers


def test_nginx_01_api_reaches_the_app(host):
    code, headers, body = fetch(host, f"{HTTPS}/health/ready", "-H 'X-Request-ID: probe-123'")
    assert code == 200, body
    assert json.loads(body)["database"] == "ok"
    assert headers["x-request-id"] == ["probe-123"]
    code, headers, body = fetch(host, f"{HTTPS}/api/products/popular")
    assert code == 200, body
    assert isinstance(json.loads(body), list)
    assert_security_headers(headers)
    # The app's own metrics stay off the public server.
    assert fetch(host, f"{HTTPS}/metrics")[0] == 404


def test_nginx_02_fingerprinted_asset_is_immutable_with_security_headers(host):
    code, headers, body = fetch(host, f"{HTTPS}{FINGERPRINTED}")
    assert code == 200 and body
    assert headers["cache-control"] == ["public, max-age=31536000, immutable"]
    assert headers["vary"] == ["Accept-Encoding"]
    assert headers["server"] == ["nginx"]  # server_tokens off: no version
    assert_security_headers(headers)


def test_nginx_03_other_static_files_revalidate_with_etag(host):
    code, headers, _ = fetch(host, f"{HTTPS}/static/manifest.json")
    assert code == 200
    assert headers["cache-control"] == ["public, max-age=300, s-maxage=3600, must-revalidate"]
    etag = headers["etag"][0]
    code, headers, body = fetch(
        host, f"{HTTPS}/static/manifest.json", f"-H 'If-None-Match: {etag}'"
    )
    assert code == 304 and body == ""
    assert_security_headers(headers)


def test_nginx_04_precompressed_gzip(host):
    code, headers, _ = fetch(
        host, f"{HTTPS}{FINGERPRINTED}", "-H 'Accept-Encoding: gzip'", "-o /tmp/asset.gz"
    )
    assert code == 200
    assert headers["content-encoding"] == ["gzip"]
    # Served from the .gz made at deploy (gzip_static), byte for byte.
    assert host.run(f"cmp /tmp/asset.gz /var/www/shop/static/{FINGERPRINTED[8:]}.gz").rc == 0
    original = host.file(f"/var/www/shop/static/{FINGERPRINTED[8:]}").content_string
    assert host.run("gzip -dc /tmp/asset.gz").stdout == original


def test_nginx_05_http_redirects_to_https(host):
    code, headers, _ = fetch(host, "http://127.0.0.1/api/products?x=1")
    assert code == 301
    assert headers["location"] == ["https://127.0.0.1/api/products?x=1"]


@pytest.mark.parametrize(
    ("version", "accepted"), [("-tls1_1", False), ("-tls1_2", True), ("-tls1_3", True)]
)
def test_nginx_06_tls_versions(host, version, accepted):
    # SECLEVEL=0 lets the client offer TLS 1.1, so a refusal is the server's.
    out = host.run(
        f"openssl s_client -connect 127.0.0.1:443 {version} -cipher 'DEFAULT:@SECLEVEL=0' "
        "-servername app-web </dev/null 2>&1"
    )
    if accepted:
        assert out.rc == 0, out.stdout[-1500:]
        # "New, TLSv1.x, Cipher is ...": the version the handshake settled on.
        wanted = version.removeprefix("-tls").replace("_", ".")
        assert f"New, TLSv{wanted}, Cipher is" in out.stdout, out.stdout[-1500:]
    else:
        assert out.rc != 0
        assert "protocol version" in out.stdout or "no protocols available" in out.stdout


def test_nginx_07_no_session_tickets(host):
    out = host.run("openssl s_client -connect 127.0.0.1:443 -tls1_2 </dev/null 2>&1")
    assert out.rc == 0
    assert "TLS session ticket:" not in out.stdout


def test_nginx_08_errors_carry_the_security_headers(host):
    code, headers, _ = fetch(host, f"{HTTPS}/no-such-page")
    assert code == 404
    assert_security_headers(headers)
    assert host.file("/etc/nginx/sites-enabled/default").exists is False


def test_nginx_09_limits(host):
    # The body limit first: a full rate bucket would answer 429 before the body is read.
    big = host.run(
        "head -c 2000000 /dev/zero | curl -sk -o /dev/null -w '%{http_code}' "
        f"--data-binary @- {HTTPS}/api/users"
    )
    assert big.stdout == "413"
    codes = burst(host, f"{HTTPS}/health/live")
    assert "200" in codes and "429" in codes, sorted(set(codes))


def private_address(host) -> str:
    facts = host.ansible("setup", "filter=ansible_default_ipv4", check=False)
    return facts["ansible_facts"]["ansible_default_ipv4"]["address"]


def burst(host, url: str) -> list[str]:
    """Status codes of 60 requests, 20 at a time: above the scenario's 10 r/s, burst 10."""
    command = "seq 60 | xargs -P 20 -I{} curl -sk -o /dev/null -w '%{http_code}\\n' "
    return host.run(command + url).stdout.split()


def test_nginx_10_stub_status_and_exporter(host):
    out = host.run("curl -s -m 5 http://127.0.0.1:8080/stub_status")
    assert "Active connections" in out.stdout
    address = private_address(host)
    assert host.run(f"curl -s -m 5 http://{address}:8080/stub_status").rc != 0
    metrics = host.run(f"curl -s -m 10 http://{address}:9113/metrics").stdout
    assert "nginx_up 1" in metrics


def test_nginx_11_bad_value_fails_while_the_old_config_serves(host):
    before = host.file("/etc/nginx/nginx.conf").content_string
    run = converge("--skip-tags", OTHER_ROLES, "-e", "nginx_client_max_body_size=10XB")
    assert run.returncode != 0
    assert '"client_max_body_size" directive invalid value' in run.output, run.output[-3000:]
    assert host.file("/etc/nginx/nginx.conf").content_string == before
    assert fetch(host, f"{HTTPS}/health/live")[0] == 200
    assert host.run("nginx -t").rc == 0


BAD_VARIABLES = [
    ("nginx_upstream_keepalive_timeout=90", "must stay below the app's"),
    ("nginx_worker_connections=16000", "at most half of"),
    (
        json.dumps(
            {"nginx_limit_req_zones": [{"name": "api", "key": "k", "size": "1m", "rate": "fast"}]}
        ),
        "rate like 20r/s",
    ),
    ("nginx_limit_conn_zone=nope", "must name zones"),
    ("nginx_stub_status_port=443", "nginx_stub_status_port (443) apart from both"),
    (
        json.dumps({"nginx_rate_limit_exempt": ["127.0.0.1/32", "10.0.0.5/24"]}),
        "nginx_rate_limit_exempt must be a list of CIDRs like 172.30.57.1/32",
    ),
    ("nginx_static_via_app=true", "set app_serve_static: true for every app host"),
    ("nginx_tls_self_signed_days=825", "between 1 and 365"),
    (json.dumps({"nginx_server_names": ["*.example.com"]}), "must be a list of host"),
    ("nginx_tls_acme_directory=http://acme.test/dir", "must be an https URL"),
]
BAD_VARIABLE_RUNS = Refusals(["-e", extra] for extra, _ in BAD_VARIABLES)


@pytest.mark.parametrize(("extra", "message"), BAD_VARIABLES)
def test_nginx_12_bad_variables_fail_before_any_change(extra, message):
    run = BAD_VARIABLE_RUNS.assert_refused("-e", extra, message=message.split()[0])
    # The YAML result format wraps long messages and doubles single quotes.
    assert message in " ".join(run.output.replace("''", "'").split()), run.output[-3000:]


def drain(*hosts: str):
    return run_playbook(DRAIN_PLAYBOOK, "-e", json.dumps({"nginx_upstream_drained": list(hosts)}))


def nginx_pid(host) -> str:
    return host.run("systemctl show -p MainPID --value nginx").stdout.strip()


def wait_for_status(host, url: str, wanted: int, timeout: float = 30.0) -> int:
    """Poll (under the scenario's rate limit) until url answers wanted; the last status."""
    deadline = time.monotonic() + timeout
    status = fetch(host, url)[0]
    while status != wanted and time.monotonic() < deadline:
        time.sleep(1)
        status = fetch(host, url)[0]
    return status


def test_nginx_13_drain_takes_the_app_host_out_and_puts_it_back(host):
    (app,) = hosts_in("app")
    written = host.file(UPSTREAM_SERVERS).content_string
    pid = nginx_pid(host)
    try:
        run = drain(app)
        assert run.returncode == 0, run.output[-4000:]
        assert run.any_changed, run.changed
        servers = [
            line
            for line in host.file(UPSTREAM_SERVERS).content_string.splitlines()
            if line.startswith("server ")
        ]
        assert len(servers) == 1 and servers[0].endswith(" down;"), servers
        assert host.run("nginx -t").rc == 0
        # The running nginx took it: its only app host is out, so nginx itself answers 502
        # for the app's paths and still serves static files.
        assert wait_for_status(host, f"{HTTPS}/health/live", 502) == 502
        assert fetch(host, f"{HTTPS}{FINGERPRINTED}")[0] == 200
    finally:
        back = drain()
    assert back.returncode == 0, back.output[-4000:]
    # Back to what a run of the role writes, so that run has nothing to do.
    assert host.file(UPSTREAM_SERVERS).content_string == written
    assert wait_for_status(host, f"{HTTPS}/health/live", 200) == 200
    # Reloaded both times, never stopped: the same master process.
    assert nginx_pid(host) == pid
    assert host.service("nginx").is_running


def test_nginx_14_drain_refuses_a_host_outside_the_app_group(host):
    before = host.file(UPSTREAM_SERVERS).content_string
    run = drain("app-web")
    assert run.returncode != 0
    assert "must be a list of hosts of the `app`" in run.output, run.output[-3000:]
    assert not run.any_changed, run.changed
    assert host.file(UPSTREAM_SERVERS).content_string == before


# The benchmark's switches (bench/ turns them on for its profiles), tested with one
# converge that turns all three on, the app serving the static files as
# nginx_static_via_app requires, and one that turns them off again. Loopback stands for
# the benchmark's client; the web host's private address is any other client.
BENCH_SWITCHES = {
    "nginx_rate_limit_exempt": ["127.0.0.1/32", "::1/128"],
    "nginx_bench_ceilings": True,
    "nginx_static_via_app": True,
    "app_serve_static": True,
}
# The app role runs too (app_serve_static); the data tier and common have nothing to do.
BENCH_SKIP = "common,postgresql,pgbouncer,redis"
BENCH_DIR = "/var/www/nginx-bench"
# In the test host, whose /tmp belongs to the test.
STATIC_1K_COPY = "/tmp/static-1k"  # noqa: S108


@pytest.fixture(scope="module")
def bench_switches():
    """Converge with BENCH_SWITCHES; the fixture is a function that turns them off again.

    Whatever the tests do, the module ends with the scenario's own values converged, so
    idempotence and the check-mode run still apply.
    """
    state = {"on": True}

    def off():
        state["on"] = False
        run = converge("--skip-tags", BENCH_SKIP)
        assert run.returncode == 0, run.output[-6000:]
        return run

    try:
        run = converge("--skip-tags", BENCH_SKIP, "-e", json.dumps(BENCH_SWITCHES))
        assert run.returncode == 0, run.output[-6000:]
        yield off
    finally:
        if state["on"]:
            off()


def test_nginx_15_bench_ceilings_are_off_by_default(host):
    assert fetch(host, f"{HTTPS}/bench/return")[0] == 404
    assert fetch(host, f"{HTTPS}/bench/static-1k")[0] == 404
    assert not host.file(BENCH_DIR).exists


def test_nginx_16_exempt_client_is_never_limited(host, bench_switches):
    # The app took app_serve_static (a reload or restart): wait until it answers.
    assert wait_for_status(host, f"{HTTPS}/health/live", 200) == 200
    exempt = burst(host, f"{HTTPS}/health/live")
    assert len(exempt) == 60 and set(exempt) == {"200"}, sorted(set(exempt))
    # The same burst from any other address still meets the limit.
    other = burst(host, f"https://{private_address(host)}/health/live")
    assert "200" in other and "429" in other, sorted(set(other))


def test_nginx_17_bench_ceilings_answer_from_nginx(host, bench_switches):
    code, headers, body = fetch(host, f"{HTTPS}/bench/return")
    assert code == 200 and body.strip() == "ok", (code, body)
    assert headers["content-length"] == ["3"]
    # Exactly 1024 bytes on the wire, also to a client that accepts gzip (as load tools do).
    code, headers, _ = fetch(
        host, f"{HTTPS}/bench/static-1k", "-H 'Accept-Encoding: gzip'", f"-o {STATIC_1K_COPY}"
    )
    assert code == 200
    assert "content-encoding" not in headers
    assert host.file(STATIC_1K_COPY).size == 1024
    # Plain HTTP still only redirects.
    assert fetch(host, "http://127.0.0.1/bench/return")[0] == 301


def test_nginx_18_static_via_app_serves_the_same_bytes(host, bench_switches, scenario_host):
    (app,) = hosts_in("app")
    for name in (FINGERPRINTED[len("/static/") :], "manifest.json"):
        code, headers, _ = fetch(host, f"{HTTPS}/static/{name}", f"-o /tmp/via-app-{name}")
        assert code == 200, name
        assert host.run(f"cmp /tmp/via-app-{name} /var/www/shop/static/{name}").rc == 0, name
        # The app's answer (its own ETag), not nginx's from disk.
        direct = scenario_host(app).run(
            f"curl -s -m 20 -o /dev/null -D - http://127.0.0.1:8000/static/{name}"
        )
        etags = [
            line.partition(":")[2].strip()
            for line in direct.stdout.splitlines()
            if line.lower().startswith("etag:")
        ]
        assert headers["etag"] == etags, (headers.get("etag"), direct.stdout)
        assert headers.get("cache-control") != ["public, max-age=31536000, immutable"]


def test_nginx_19_switched_off_again(host, bench_switches):
    bench_switches()
    assert fetch(host, f"{HTTPS}/bench/return")[0] == 404
    assert not host.file(BENCH_DIR).exists
    # Static files from disk again (nginx's cache headers), and loopback is limited again.
    code, headers, _ = fetch(host, f"{HTTPS}{FINGERPRINTED}")
    assert code == 200
    assert headers["cache-control"] == ["public, max-age=31536000, immutable"]
    assert wait_for_status(host, f"{HTTPS}/health/live", 200) == 200
    codes = burst(host, f"{HTTPS}/health/live")
    assert "200" in codes and "429" in codes, sorted(set(codes))


def test_nginx_20_rate_limited_answer_is_json_with_retry_after(host):
    """nginx's own 429 has the form the app's OpenAPI document declares: a JSON Detail."""
    host.run("rm -rf /tmp/limited && mkdir /tmp/limited")
    host.run(
        "seq 60 | xargs -P 20 -I{} curl -sk -o /tmp/limited/{}.body -D /tmp/limited/{}.head "
        f"{HTTPS}/health/live"
    )
    limited = host.run("grep -l '^HTTP/[0-9.]* 429' /tmp/limited/*.head").stdout.split()
    assert limited, "no request of the burst was limited"
    head = host.file(limited[0]).content_string.lower()
    body = json.loads(host.file(limited[0].replace(".head", ".body")).content_string)
    assert body == {"detail": "Too many requests: retry later"}
    assert "content-type: application/json" in head
    assert "retry-after: 1\r\n" in head
    assert "strict-transport-security: max-age=" in head and "x-request-id: " in head
