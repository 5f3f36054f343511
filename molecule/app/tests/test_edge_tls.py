"""The edge as a TLS scanner sees it, on the web host (issue 16, "The edge").

Control IDs (edge-NN) name each check. Every probe runs on the web host against its own
loopback with openssl s_client or curl, the way a scanner would from outside.
"""

import datetime
import json
import re
import time

import pytest
from stack_testinfra import converge, hosts_in

testinfra_hosts = hosts_in("web")

JOURNAL_UNITS = ["nginx"]
OTHER_ROLES = "common,postgresql,pgbouncer,redis,app"
HTTPS = "https://127.0.0.1"
# The scenario's web host: its inventory name is the site's first name.
(WEB,) = hosts_in("web")
SELF_SIGNED_MAX_DAYS = 365


def s_client(host, *options: str, servername: str | None = WEB):
    """One handshake (TLS 1.3 unless options say otherwise); the output and return code."""
    sni = f"-servername {servername}" if servername else "-noservername"
    return host.run(
        f"timeout 20 openssl s_client -connect 127.0.0.1:443 {sni} {' '.join(options)} "
        "</dev/null 2>&1"
    )


def served_dates(host) -> tuple[datetime.datetime, datetime.datetime]:
    out = host.run(
        "timeout 20 openssl s_client -connect 127.0.0.1:443 -servername %s </dev/null "
        "2>/dev/null | openssl x509 -noout -dates",
        WEB,
    )
    assert out.rc == 0, out.stderr
    dates = dict(line.split("=", 1) for line in out.stdout.splitlines())
    parse = "%b %d %H:%M:%S %Y %Z"
    return (
        datetime.datetime.strptime(" ".join(dates["notBefore"].split()), parse),
        datetime.datetime.strptime(" ".join(dates["notAfter"].split()), parse),
    )


def wait_for(check, timeout: float = 20.0):
    """Poll check() until it is true or the timeout passes; its last value. `systemctl
    reload nginx` returns before nginx's new workers take over."""
    deadline = time.monotonic() + timeout
    value = check()
    while not value and time.monotonic() < deadline:
        time.sleep(1)
        value = check()
    return value


def lifetime_days(host) -> int:
    not_before, not_after = served_dates(host)
    return (not_after - not_before).days


@pytest.mark.parametrize(
    ("group", "accepted"),
    [
        ("X448", False),
        ("secp521r1", False),
        ("X25519", True),
        ("prime256v1", True),
        ("secp384r1", True),
    ],
)
def test_edge_01_curves_follow_mozilla_intermediate(host, group, accepted):
    # TLS 1.3: the client offers that one group only, so the handshake works only if the
    # server takes it.
    out = s_client(host, "-tls1_3", f"-groups {group}")
    if accepted:
        assert out.rc == 0, out.stdout[-1500:]
        assert group in temp_key(out.stdout)
    else:
        assert out.rc != 0, out.stdout[-1500:]
        assert "handshake failure" in out.stdout, out.stdout[-1500:]
    # TLS 1.2: an ECDSA P-256 certificate needs prime256v1 among the client's groups, so
    # the client offers the group first and prime256v1 after it (the server follows the
    # client's order: ssl_prefer_server_ciphers off); a refused group is never chosen.
    offered = group if group == "prime256v1" else f"{group}:prime256v1"
    out = s_client(host, "-tls1_2", f"-groups {offered}")
    assert out.rc == 0, out.stdout[-1500:]
    assert (group in temp_key(out.stdout)) == accepted, temp_key(out.stdout)


def temp_key(output: str) -> str:
    """The key exchange's group as s_client prints it (X25519, 253 bits / ECDH, secp384r1)."""
    key = re.search(r"Server Temp Key: ([^\n]+)", output)
    assert key, output[-1500:]
    return key.group(1)


def test_edge_02_self_signed_certificate_lives_at_most_365_days(host):
    not_before, not_after = served_dates(host)
    assert (not_after - not_before).days <= SELF_SIGNED_MAX_DAYS, (not_before, not_after)


def test_edge_03_unknown_server_name_refused_at_handshake(host):
    out = s_client(host, servername="unknown.example")
    assert out.rc != 0
    assert "unrecognized name" in out.stdout, out.stdout[-1500:]
    assert "no peer certificate available" in out.stdout, out.stdout[-1500:]
    # The site's own names get the site (make up's users come as localhost), and so do
    # clients that name no host at all (an address in the URL: no SNI).
    for name in (WEB, "localhost", None):
        out = s_client(host, servername=name)
        assert out.rc == 0, (name, out.stdout[-1500:])
        assert "Verify return code" in out.stdout
    for url in (f"https://{WEB}", "https://localhost", HTTPS):
        resolve = f"--resolve {WEB}:443:127.0.0.1" if WEB in url else ""
        code = host.run(
            f"curl -sk -m 20 {resolve} -o /dev/null -w '%{{http_code}}' {url}/static/manifest.json"
        )
        assert code.stdout == "200", (url, code.stdout, code.stderr)


def test_edge_04_unknown_host_gets_no_answer(host):
    # Port 80: the catch-all closes the connection without a word (444): curl's 52.
    out = host.run("curl -s -m 20 -H 'Host: unknown.example' http://127.0.0.1/")
    assert out.rc == 52, (out.rc, out.stdout)
    # After a handshake for one of the site's names, a request for another host: 421.
    out = host.run(
        f"curl -sk -m 20 --resolve {WEB}:443:127.0.0.1 -H 'Host: unknown.example' "
        f"-o /dev/null -w '%{{http_code}}' https://{WEB}/"
    )
    assert out.stdout == "421", out.stdout
    # The site's own names on port 80 still redirect.
    out = host.run(
        "curl -s -m 20 -H 'Host: localhost' -o /dev/null -w '%{redirect_url}' http://127.0.0.1/x"
    )
    assert out.stdout == "https://localhost/x"


def test_edge_05_client_header_and_body_timeouts(host, hostvars):
    config = host.check_output("nginx -T 2>/dev/null")
    web = hostvars(WEB)
    assert f"client_header_timeout {web.get('nginx_client_header_timeout', 10)}s;" in config
    assert f"client_body_timeout {web.get('nginx_client_body_timeout', 10)}s;" in config


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/static/manifest.json"), ("DELETE", "/static/manifest.json"), ("PUT", "/")],
)
def test_edge_06_405_carries_allow(host, method, path):
    out = host.run(f"curl -sk -m 20 -X {method} -o /dev/null -D - {HTTPS}{path}")
    lines = out.stdout.replace("\r", "").splitlines()
    assert lines[0].split()[1] == "405", lines
    allow = [line.split(":", 1)[1].strip() for line in lines if line.lower().startswith("allow:")]
    assert allow == ["GET, HEAD"], lines
    # A GET of the same file carries no Allow.
    out = host.run(f"curl -sk -m 20 -o /dev/null -D - {HTTPS}{path}")
    assert "allow:" not in out.stdout.lower(), out.stdout


def test_edge_07_no_ocsp_stapling_for_a_self_signed_certificate(host):
    config = host.check_output("nginx -T 2>/dev/null")
    assert "ssl_stapling" not in config
    assert "ssl_reject_handshake on;" in config
    assert "ssl_ecdh_curve X25519:prime256v1:secp384r1;" in config


# An 825-day certificate, as the role made before: the next run replaces it, with the
# same key and names, and reloads nginx (same master process).
LONG_LIVED = (
    "cd /etc/nginx/tls && "
    "openssl x509 -in {web}.crt -noout -ext subjectAltName | tail -n +2 | "
    "sed 's/IP Address/IP/g; s/ //g' > /tmp/edge-san && "
    "openssl req -new -x509 -key {web}.key -days 825 -subj /CN={web} "
    '-addext "subjectAltName=$(cat /tmp/edge-san)" -out {web}.crt && '
    "systemctl reload nginx"
)


def test_edge_08_longer_lived_self_signed_certificate_is_replaced(host):
    pid = host.run("systemctl show -p MainPID --value nginx").stdout.strip()
    made = host.run(LONG_LIVED.format(web=WEB))
    assert made.rc == 0, made.stderr
    assert wait_for(lambda: lifetime_days(host) > SELF_SIGNED_MAX_DAYS)
    run = converge("--skip-tags", OTHER_ROLES)
    assert run.returncode == 0, run.output[-4000:]
    assert wait_for(lambda: lifetime_days(host) <= SELF_SIGNED_MAX_DAYS), served_dates(host)
    assert host.run("systemctl show -p MainPID --value nginx").stdout.strip() == pid


# ACME HTTP-01 against a real ACME server: Debian's Pebble, run on the web host itself
# (its validation fetches http://<web host>/.well-known/acme-challenge/... on port 80,
# which is this host). Pebble validates for real (PEBBLE_VA_ALWAYS_VALID is not set);
# PEBBLE_VA_NOSLEEP skips its random validation delays, PEBBLE_WFE_NONCEREJECT=0 its
# random bad-nonce answers. Its certificates name an OCSP responder (ocspResponderURL),
# so stapling must turn on. Not under /tmp: certbot.service has a private /tmp.
PEBBLE_DIR = "/etc/pebble-test"
PEBBLE_UNIT = "stack-pebble-test"
PEBBLE_SETUP = f"""
set -e
timeout 300 apt-get install -y -q --no-install-recommends pebble >/dev/null
mkdir -p {PEBBLE_DIR} && cd {PEBBLE_DIR}
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \\
  -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \\
  -keyout key.pem -out cert.pem 2>/dev/null
cat > pebble.json <<'JSON'
{{"pebble": {{"listenAddress": "127.0.0.1:14000", "managementListenAddress": "127.0.0.1:15000",
  "certificate": "{PEBBLE_DIR}/cert.pem", "privateKey": "{PEBBLE_DIR}/key.pem",
  "httpPort": 80, "tlsPort": 443, "ocspResponderURL": "http://127.0.0.1:4002",
  "externalAccountBindingRequired": false}}}}
JSON
# Pebble keeps its accounts in memory: certbot's account from an earlier Pebble is unknown
# to this one (accountDoesNotExist), so a run on a host that had one starts afresh.
rm -rf /etc/letsencrypt/accounts/localhost:14000
systemctl stop {PEBBLE_UNIT} 2>/dev/null || true
systemctl reset-failed {PEBBLE_UNIT} 2>/dev/null || true
systemd-run --unit {PEBBLE_UNIT} -E PEBBLE_VA_NOSLEEP=1 -E PEBBLE_WFE_NONCEREJECT=0 \\
  /usr/bin/pebble -config {PEBBLE_DIR}/pebble.json
for i in $(seq 60); do
  curl -sf -m 5 --cacert cert.pem https://localhost:14000/dir >/dev/null && exit 0
  sleep 1
done
echo "Pebble did not answer within 60 s" >&2
exit 1
"""
ACME_ON = {
    "nginx_tls_acme_enabled": True,
    "nginx_tls_acme_directory": "https://localhost:14000/dir",
    "nginx_tls_acme_ca_bundle": f"{PEBBLE_DIR}/cert.pem",
    # Pebble's certificates live 5 years: every run of the timer renews them.
    "nginx_tls_acme_renew_before_days": 3650,
}


def served_certificate(host, *fields: str) -> str:
    out = host.run(
        "timeout 20 openssl s_client -connect 127.0.0.1:443 -servername %s </dev/null "
        f"2>/dev/null | openssl x509 -noout {' '.join(fields)}",
        WEB,
    )
    assert out.rc == 0, out.stderr
    return out.stdout.strip()


@pytest.fixture(scope="module")
def acme_on(host):
    """Pebble up and the role converged with ACME on; the fixture is a function that turns
    ACME off again. Whatever the tests do, the module ends with ACME off (self-signed, the
    scenario's usual state, for idempotence and check mode) and Pebble stopped."""
    state = {"on": True}

    def off():
        state["on"] = False
        run = converge("--skip-tags", OTHER_ROLES)
        assert run.returncode == 0, run.output[-6000:]
        return run

    try:
        setup = host.run(PEBBLE_SETUP)
        assert setup.rc == 0, setup.stdout[-2000:] + setup.stderr[-2000:]
        run = converge("--skip-tags", OTHER_ROLES, "-e", json.dumps(ACME_ON))
        assert run.returncode == 0, run.output[-6000:]
        yield off
    finally:
        try:
            if state["on"]:
                off()
        finally:
            host.run("systemctl stop %s", PEBBLE_UNIT)


@pytest.mark.journal("nginx", "certbot", PEBBLE_UNIT)
def test_edge_10_acme_certificate_from_pebble(host, acme_on):
    assert wait_for(lambda: "Pebble Intermediate CA" in served_certificate(host, "-issuer"))
    # The chain verifies up to Pebble's root (its management API gives it).
    root = host.run(
        f"curl -sf -m 10 --cacert {PEBBLE_DIR}/cert.pem -o {PEBBLE_DIR}/root.pem "
        "https://localhost:15000/roots/0"
    )
    assert root.rc == 0, root.stderr
    out = s_client(host, f"-CAfile {PEBBLE_DIR}/root.pem", "-verify_return_error")
    assert out.rc == 0 and "Verify return code: 0 (ok)" in out.stdout, out.stdout[-1500:]
    # Pebble's certificates name an OCSP responder: stapling is on for this one.
    assert served_certificate(host, "-ocsp_uri") == "http://127.0.0.1:4002"
    config = host.check_output("nginx -T 2>/dev/null")
    assert "ssl_stapling on;" in config and "ssl_stapling_verify on;" in config
    # certbot.timer renews; the deploy hook tests the config before it reloads.
    assert host.service("certbot.timer").is_enabled
    assert host.service("certbot.timer").is_running
    hook = host.file("/etc/letsencrypt/renewal-hooks/deploy/50-nginx-reload").content_string
    assert "nginx -t -q\nsystemctl reload nginx" in hook


@pytest.mark.journal("nginx", "certbot", PEBBLE_UNIT)
def test_edge_11_timer_renews_and_reloads_nginx(host, acme_on):
    serial = served_certificate(host, "-serial")
    pid = host.run("systemctl show -p MainPID --value nginx").stdout.strip()
    since = host.run("date '+%Y-%m-%d %H:%M:%S'").stdout.strip()
    # What certbot.timer starts, once: `certbot -q renew`, with the role's drop-in.
    out = host.run("timeout 180 systemctl start certbot.service")
    assert out.rc == 0, out.stderr
    assert wait_for(lambda: served_certificate(host, "-serial") != serial)
    assert "Pebble Intermediate CA" in served_certificate(host, "-issuer")
    # Reloaded by the deploy hook, not restarted: the same master process.
    assert host.run("systemctl show -p MainPID --value nginx").stdout.strip() == pid
    journal = host.run("journalctl -u nginx --since %s --no-pager", since).stdout
    assert "Reloaded" in journal, journal


@pytest.mark.journal("nginx", "certbot")
def test_edge_12_acme_off_serves_the_self_signed_certificate_again(host, acme_on):
    acme_on()
    assert wait_for(lambda: "Pebble" not in served_certificate(host, "-issuer"))
    subject, issuer = served_certificate(host, "-subject", "-issuer").splitlines()
    assert subject.removeprefix("subject=") == issuer.removeprefix("issuer="), (subject, issuer)
    assert not host.file(f"/etc/letsencrypt/renewal/{WEB}.conf").exists
    assert "ssl_stapling" not in host.check_output("nginx -T 2>/dev/null")
    # The self-signed certificate's own limit still holds.
    not_before, not_after = served_dates(host)
    assert (not_after - not_before).days <= SELF_SIGNED_MAX_DAYS
