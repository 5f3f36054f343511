"""The edge as a TLS scanner sees it, on the web host (issue 16, "The edge").

Control IDs (edge-NN) name each check. Every probe runs on the web host against its own
loopback with openssl s_client or curl, the way a scanner would from outside.
"""

import datetime
import re

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
    not_before, not_after = served_dates(host)
    assert (not_after - not_before).days > SELF_SIGNED_MAX_DAYS
    run = converge("--skip-tags", OTHER_ROLES, "--tags", "nginx_tls")
    assert run.returncode == 0, run.output[-4000:]
    not_before, not_after = served_dates(host)
    assert (not_after - not_before).days <= SELF_SIGNED_MAX_DAYS, (not_before, not_after)
    assert host.run("systemctl show -p MainPID --value nginx").stdout.strip() == pid
