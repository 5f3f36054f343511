"""The stack CA and each host's certificate (issue 16, common_pki_enabled).

The CA lives on the control node (the scenario's inventory directory, .secrets/ca/); every
host holds the CA's certificate and its own key and a certificate the CA signed, naming
the host the way peers reach it. Control IDs: common-pki-NN.
"""

import json
import stat
from pathlib import Path

import pytest
from stack_testinfra import assert_refused, converge, inventory_dir

WEB = "common-web"
PKI = "/etc/ssl/stack"

# Reads a certificate with python3-cryptography (Debian 12's 38, which the role installs)
# and prints what the tests compare: names, lifetime, issuer, constraints, certified key.
DESCRIBE = r"""
import json, sys
from cryptography import x509
from cryptography.hazmat.primitives import serialization
cert = x509.load_pem_x509_certificate(open(sys.argv[1], "rb").read())
def ext(kind):
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
san = ext(x509.SubjectAlternativeName)
basic = ext(x509.BasicConstraints)
usage = ext(x509.ExtendedKeyUsage)
print(json.dumps({
    "subject": cert.subject.rfc4514_string(),
    "issuer": cert.issuer.rfc4514_string(),
    "dns": san.get_values_for_type(x509.DNSName) if san else [],
    "ip": [str(a) for a in san.get_values_for_type(x509.IPAddress)] if san else [],
    "days": (cert.not_valid_after - cert.not_valid_before).total_seconds() / 86400,
    "ca": bool(basic and basic.ca),
    "server_auth": bool(usage and x509.ExtendedKeyUsageOID.SERVER_AUTH in usage),
    "public_key": cert.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode(),
}))
"""
KEY_PUBLIC = r"""
import sys
from cryptography.hazmat.primitives import serialization
key = serialization.load_pem_private_key(open(sys.argv[1], "rb").read(), None)
print(key.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode())
"""


def describe(host, path: str) -> dict:
    out = host.run("python3 -c %s %s", DESCRIBE, path)
    assert out.rc == 0, out.stderr
    return json.loads(out.stdout)


def test_common_pki_01_host_certificate_signed_by_the_stack_ca(host):
    out = host.run(f"openssl verify -CAfile {PKI}/ca.crt {PKI}/host.crt")
    assert out.rc == 0 and out.stdout.strip().endswith(": OK"), out.stdout + out.stderr
    ca = describe(host, f"{PKI}/ca.crt")
    cert = describe(host, f"{PKI}/host.crt")
    assert ca["ca"] and not cert["ca"]
    assert cert["issuer"] == ca["subject"]
    assert cert["server_auth"]
    # The CA on the host is the control node's CA.
    control = (Path(inventory_dir()) / ".secrets/ca/ca.crt").read_text()
    assert host.file(f"{PKI}/ca.crt").content_string == control


def test_common_pki_02_certificate_names_the_host_as_peers_reach_it(host):
    name = host.backend.get_hostname()
    address = host.interface("eth0").addresses[0]
    cert = describe(host, f"{PKI}/host.crt")
    assert cert["subject"] == f"CN={name}"
    assert {name, "localhost"} <= set(cert["dns"]), cert["dns"]
    assert {address, "127.0.0.1"} <= set(cert["ip"]), cert["ip"]


def test_common_pki_03_lifetime_at_most_366_days(host):
    assert describe(host, f"{PKI}/host.crt")["days"] <= 366


def test_common_pki_04_key_made_here_and_closed_to_others(host):
    key = host.file(f"{PKI}/host.key")
    assert (key.user, key.group, key.mode) == ("root", "ssl-cert", 0o640)
    assert host.run(f"runuser -u nobody -- cat {PKI}/host.key").rc != 0
    # The certificate certifies this very key.
    public = host.run("python3 -c %s %s", KEY_PUBLIC, f"{PKI}/host.key").stdout
    assert public == describe(host, f"{PKI}/host.crt")["public_key"] + "\n"
    for public_file in ("ca.crt", "host.crt"):
        assert host.file(f"{PKI}/{public_file}").mode == 0o644


def test_common_pki_05_ca_key_stays_on_the_control_node_closed_to_others(host):
    ca_dir = Path(inventory_dir()) / ".secrets/ca"
    assert stat.S_IMODE(ca_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((ca_dir / "ca.key").stat().st_mode) == 0o600
    assert not host.file(f"{PKI}/ca.key").exists
    assert host.run("grep -rl 'PRIVATE KEY' /etc/ssl/stack").stdout.split() == [f"{PKI}/host.key"]


def test_common_pki_06_renewed_when_it_expires_within_renew_days(scenario_host):
    """A certificate valid 365 days is renewed, with the same key, by a run that wants 365
    days left. (The idempotence step proved that a run with the defaults re-issues nothing.)"""
    web = scenario_host(WEB)
    before = web.file(f"{PKI}/host.crt").sha256sum
    key_before = web.file(f"{PKI}/host.key").sha256sum
    extra = {"common_pki_cert_valid_days": 366, "common_pki_renew_days": 365}
    run = converge("-e", json.dumps(extra))
    assert run.returncode == 0, run.output[-3000:]
    assert web.file(f"{PKI}/host.crt").sha256sum != before
    assert web.file(f"{PKI}/host.key").sha256sum == key_before, "renewal changed the key"
    assert describe(web, f"{PKI}/host.crt")["days"] > 365
    assert web.run(f"openssl verify -CAfile {PKI}/ca.crt {PKI}/host.crt").rc == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"common_pki_cert_valid_days": 825}, "common_pki_cert_valid_days 1-366"),
        ({"common_pki_renew_days": 400}, "common_pki_renew_days at least 1 and below it"),
        ({"common_pki_subject_alt_names_extra": ["bad name"]}, "refused: bad name"),
    ],
)
def test_common_pki_07_bad_variables_fail_before_any_change(extra, message):
    assert_refused("-e", json.dumps(extra), message=message)
