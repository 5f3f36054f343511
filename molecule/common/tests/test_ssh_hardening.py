"""SSH server hardening and the firewall's SSH rules, over the real SSH path.

roles/common installs and hardens sshd on every host. Logins are tried from the host
itself to 127.0.0.1 with the OpenSSH client, as a throwaway user of an allowed group with
a key of its own; the rate limit is probed from the scenario's other host; the lock-out
checks connect from the control node over SSH, the way `make up` reaches its hosts.

Control IDs: sshd-NN are DevSec ssh-baseline's; common-ssh-NN and common-fw-NN are this
role's own (roles/common/README.md maps each to its setting).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from stack_testinfra import assert_refused, converge

JOURNAL_UNITS = ["ssh"]
WEB, MON = "common-web", "common-mon"
PROJECT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).parents[3]))
DEFAULTS = yaml.safe_load((PROJECT / "roles/common/defaults/main.yml").read_text())
DROP_IN = "/etc/ssh/sshd_config.d/00-common-hardening.conf"
MEMBER, OUTSIDER = "sshprobe", "sshoutsider"
KEY = "/root/.ssh-probe/id_ed25519"


def wanted(hostvars, host) -> dict:
    """The role's defaults with the scenario's values on top."""
    try:
        return {**DEFAULTS, **hostvars(host.backend.get_hostname())}
    except Exception:  # outside Molecule (pytest --hosts=docker://...)
        return DEFAULTS


def ssh(host, user: str, *options: str, command: str = "id -un"):
    """One login to 127.0.0.1 with the probe key, nothing asked, nothing remembered."""
    argv = [
        "ssh", "-F", "/dev/null", "-i", KEY, "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "ConnectTimeout=5", *options, f"{user}@127.0.0.1", command,
    ]  # fmt: skip
    return host.run(shlex.join(argv))


@pytest.fixture(scope="module")
def probe(host, hostvars):
    """A member of the first allowed group and a user outside them, with one key."""
    group = wanted(hostvars, host)["common_ssh_allow_groups"][0]
    host.check_output(
        f"install -d -m 700 /root/.ssh-probe && "
        f"{{ test -e {KEY} || ssh-keygen -q -t ed25519 -N '' -f {KEY}; }}"
    )
    for user, groups in ((MEMBER, f"-G {group}"), (OUTSIDER, "")):
        host.check_output(
            f"id {user} >/dev/null 2>&1 || useradd -m -s /bin/sh {groups} {user}; "
            f"install -d -m 700 -o {user} -g {user} /home/{user}/.ssh && "
            f"install -m 600 -o {user} -g {user} {KEY}.pub /home/{user}/.ssh/authorized_keys"
        )
    yield group
    for user in (MEMBER, OUTSIDER):
        host.run(f"userdel -r {user}")
    host.run("rm -rf /root/.ssh-probe")


def test_sshd_22_key_of_allowed_group_member_logs_in(host, probe):
    out = ssh(host, MEMBER)
    assert out.rc == 0, out.stderr
    assert out.stdout.strip() == MEMBER


def test_common_ssh_01_allow_groups_refuse_everyone_else(host, probe):
    # Same key, same host: only the group differs.
    out = ssh(host, OUTSIDER)
    assert out.rc == 255 and "Permission denied" in out.stderr, (out.rc, out.stderr)


def test_sshd_27_29_no_password_or_keyboard_interactive_login(host, probe):
    # The client asks for passwords only; the server offers nothing but publickey.
    out = ssh(
        host, MEMBER, "-v", "-o", "PubkeyAuthentication=no",
        "-o", "PreferredAuthentications=password,keyboard-interactive",
    )  # fmt: skip
    assert out.rc == 255, out.stdout
    offered = [line for line in out.stderr.splitlines() if "that can continue" in line]
    assert offered and all(line.endswith(": publickey") for line in offered), offered
    assert "Permission denied (publickey)" in out.stderr


def test_sshd_06_root_login_refused_even_with_authorized_key(host, probe):
    keys = "/root/.ssh/authorized_keys"
    backup = host.run(f"test -e {keys} && cp -p {keys} {keys}.probe-backup").rc == 0
    try:
        host.check_output(f"install -d -m 700 /root/.ssh && cat {KEY}.pub >> {keys}")
        out = ssh(host, "root")
        assert out.rc == 255 and "Permission denied" in out.stderr, (out.rc, out.stderr)
    finally:
        host.run(f"mv {keys}.probe-backup {keys}" if backup else f"rm -f {keys}")


@pytest.mark.parametrize("cipher", ["aes128-cbc", "3des-cbc"])
def test_sshd_01_weak_cipher_refused(host, probe, cipher):
    out = ssh(host, MEMBER, "-c", cipher)
    assert out.rc == 255 and "no matching cipher found" in out.stderr, out.stderr


def test_sshd_03_weak_mac_refused_strong_one_accepted(host, probe):
    # A MAC is negotiated only with a cipher that has none of its own (not GCM, not ChaCha).
    weak = ssh(host, MEMBER, "-c", "aes256-ctr", "-m", "hmac-sha1")
    assert weak.rc == 255 and "no matching MAC found" in weak.stderr, weak.stderr
    strong = ssh(host, MEMBER, "-c", "aes256-ctr", "-m", "hmac-sha2-256-etm@openssh.com")
    assert strong.rc == 0, strong.stderr


def test_sshd_02_weak_key_exchange_refused(host, probe):
    out = ssh(host, MEMBER, "-o", "KexAlgorithms=diffie-hellman-group14-sha1")
    assert out.rc == 255 and "no matching key exchange method" in out.stderr, out.stderr


def test_sshd_14_host_keys_ed25519_and_rsa_of_3072_bits_or_more(host, hostvars):
    offered = host.check_output("ssh-keyscan -T 5 -t ed25519,rsa,ecdsa 127.0.0.1 2>/dev/null")
    assert sorted(line.split()[1] for line in offered.splitlines()) == ["ssh-ed25519", "ssh-rsa"]
    rsa = host.check_output("ssh-keyscan -T 5 -t rsa 127.0.0.1 2>/dev/null | ssh-keygen -l -f -")
    assert int(rsa.split()[0]) >= wanted(hostvars, host)["common_ssh_rsa_host_key_bits"] >= 3072
    configured = host.check_output("sshd -T | awk '$1 == \"hostkey\" {print $2}'").split()
    assert configured == ["/etc/ssh/ssh_host_ed25519_key", "/etc/ssh/ssh_host_rsa_key"]


def test_sshd_48_no_moduli_below_3072_bits(host):
    sizes = host.check_output("awk '$1 ~ /^[0-9]+$/ {print $5 + 1}' /etc/ssh/moduli").split()
    assert sizes, "no moduli left: diffie-hellman-group-exchange-sha256 would have no group"
    assert min(int(size) for size in sizes) >= 3072


def effective(host) -> dict[str, str]:
    """sshd's effective settings (sshd -T), first line per keyword."""
    settings: dict[str, str] = {}
    for line in host.check_output("sshd -T").splitlines():
        key, _, value = line.partition(" ")
        settings.setdefault(key, value)
    return settings


# (control ID, sshd -T keyword, value or the role variable that holds it)
SETTINGS = [
    ("sshd-01", "ciphers", "common_ssh_ciphers"),
    ("sshd-02", "kexalgorithms", "common_ssh_kex_algorithms"),
    ("sshd-03", "macs", "common_ssh_macs"),
    ("sshd-06", "permitrootlogin", "no"),
    ("sshd-07", "port", "22"),
    ("sshd-08", "addressfamily", "any"),
    ("sshd-11", "strictmodes", "yes"),
    ("sshd-12", "syslogfacility", "AUTH"),
    ("sshd-13", "loglevel", "VERBOSE"),
    ("sshd-17", "permituserenvironment", "no"),
    ("sshd-18", "logingracetime", "common_ssh_login_grace_time"),
    ("sshd-19", "maxauthtries", "common_ssh_max_auth_tries"),
    ("sshd-20", "maxsessions", "10"),
    ("sshd-21", "maxstartups", "10:30:100"),
    ("sshd-22", "pubkeyauthentication", "yes"),
    ("sshd-22", "authenticationmethods", "publickey"),
    ("sshd-23", "ignorerhosts", "yes"),
    ("sshd-24", "ignoreuserknownhosts", "yes"),
    ("sshd-25", "hostbasedauthentication", "no"),
    ("sshd-27", "passwordauthentication", "no"),
    ("sshd-28", "permitemptypasswords", "no"),
    ("sshd-29", "kbdinteractiveauthentication", "no"),
    ("sshd-30", "kerberosauthentication", "no"),
    ("sshd-31", "kerberosorlocalpasswd", "no"),
    ("sshd-33", "gssapiauthentication", "no"),
    ("sshd-35", "tcpkeepalive", "no"),
    ("sshd-36", "clientaliveinterval", "common_ssh_client_alive_interval"),
    ("sshd-37", "clientalivecountmax", "common_ssh_client_alive_count_max"),
    ("sshd-38", "permittunnel", "no"),
    ("sshd-39", "allowtcpforwarding", "no"),
    ("sshd-39", "allowstreamlocalforwarding", "no"),
    ("sshd-40", "allowagentforwarding", "no"),
    ("sshd-41", "gatewayports", "no"),
    ("sshd-42", "x11forwarding", "no"),
    ("sshd-43", "x11uselocalhost", "yes"),
    ("sshd-44", "printmotd", "no"),
    ("sshd-46", "banner", "none"),
]


@pytest.mark.parametrize(
    ("control", "keyword", "value"), SETTINGS, ids=[f"{c}-{k}" for c, k, _ in SETTINGS]
)
def test_sshd_setting_is_effective(host, hostvars, control, keyword, value):
    if value.startswith("common_"):
        value = wanted(hostvars, host)[value]
        value = ",".join(value) if isinstance(value, list) else str(value)
    assert effective(host).get(keyword) == value, f"{control}: {keyword}"


def test_sshd_47_greeting_names_no_os_version(host):
    # sshd -T does not print DebianBanner: read the greeting itself.
    greeting = host.check_output(
        "python3 -c \"import socket; print(socket.create_connection(('127.0.0.1', 22), 5)"
        '.recv(256).decode().strip())"'
    )
    assert greeting.startswith("SSH-2.0-OpenSSH_") and "Debian" not in greeting, greeting


def test_common_ssh_02_hardening_wins_over_later_drop_ins(host):
    # cloud-init, for one, writes 50-cloud-init.conf with PasswordAuthentication yes.
    later = "/etc/ssh/sshd_config.d/50-probe.conf"
    try:
        host.check_output(f"printf 'PasswordAuthentication yes\\nPermitRootLogin yes\\n' > {later}")
        settings = effective(host)
        assert (settings["passwordauthentication"], settings["permitrootlogin"]) == ("no", "no")
    finally:
        host.run(f"rm -f {later}")


def test_sshd_04_05_configuration_owned_and_readable_by_root_only(host):
    assert (host.file("/etc/ssh").user, host.file("/etc/ssh").mode) == ("root", 0o755)
    for path in ("/etc/ssh/sshd_config", DROP_IN):
        config = host.file(path)
        assert (config.user, config.group, config.mode) == ("root", "root", 0o600), path


# The tests below act on the whole scenario (converge runs, the other host) and run once.


def test_common_ssh_03_bad_config_fails_sshd_t_before_any_reload(scenario_host):
    web = scenario_host(WEB)
    before = web.file(DROP_IN).sha256sum
    # Not a weak algorithm (preflight lets it through), but one sshd does not know.
    run = converge("-e", json.dumps({"common_ssh_ciphers": ["aes512-gcm@openssh.com"]}))
    assert run.returncode != 0, run.output[-3000:]
    assert "Bad SSH2 cipher spec 'aes512-gcm@openssh.com'" in run.output, run.output[-3000:]
    assert not run.any_changed, run.changed
    assert web.file(DROP_IN).sha256sum == before
    assert web.service("ssh").is_running


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"stack_env": "production"},
            "common_firewall_ssh_sources opens to every address (0.0.0.0/0, ::/0), "
            "and stack_env is production",
        ),
        (
            {
                "stack_env": "staging",
                "common_firewall_ssh_sources": ["192.0.2.0/24"],
                "common_firewall_operator_sources": ["::/0"],
            },
            "common_firewall_operator_sources opens to every address (::/0)",
        ),
        ({"common_firewall_ssh_sources": ["10.0.0.0/33"]}, "not CIDRs: ['10.0.0.0/33']"),
        ({"common_firewall_ssh_rate": "lots"}, "common_firewall_ssh_rate must be N/second"),
    ],
    ids=["ssh-sources-any", "operator-sources-any", "not-a-cidr", "bad-rate"],
)
def test_common_fw_01_sources_explicit_outside_the_local_environment(extra, message):
    assert_refused("-e", json.dumps(extra), message=message)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"common_ssh_ciphers": ["aes256-gcm@openssh.com", "aes128-cbc"]}, "weak: aes128-cbc"),
        ({"common_ssh_macs": ["hmac-sha1"]}, "weak: hmac-sha1"),
        ({"common_ssh_allow_groups": []}, "common_ssh_allow_groups must name at least one group"),
        ({"common_ssh_rsa_host_key_bits": 2048}, "common_ssh_rsa_host_key_bits 3072-16384"),
    ],
    ids=["cbc-cipher", "sha1-mac", "no-group", "short-rsa"],
)
def test_common_ssh_04_weak_settings_refused(extra, message):
    assert_refused("-e", json.dumps(extra), message=message)


@pytest.fixture
def control_node_login(scenario_host, tmp_path):
    """Inventory overrides that make Ansible reach the web host over SSH as a member of the
    first allowed group, with a key made on the control node, like `make up` does."""
    web = scenario_host(WEB)
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    group = web.check_output("sshd -T | awk '$1 == \"allowgroups\" {print $2; exit}'")
    user = "sshcontrol"
    web.check_output(
        f"id {user} >/dev/null 2>&1 || useradd -m -s /bin/sh -G {group} {user}; "
        f"install -d -m 700 -o {user} -g {user} /home/{user}/.ssh && "
        f"printf '%s\\n' {shlex.quote(key.with_suffix('.pub').read_text().strip())} "
        f"> /home/{user}/.ssh/authorized_keys && chown {user}: /home/{user}/.ssh/authorized_keys"
    )
    address = web.check_output("hostname -I").split()[0]
    yield {
        "ansible_connection": "ssh",
        "ansible_host": address,
        "ansible_user": user,
        "ansible_ssh_private_key_file": str(key),
        "ansible_ssh_common_args": (
            "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes"
        ),
    }
    web.run(f"userdel -r {user}")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"common_ssh_allow_groups": ["wheel"]},
            "none of them in common_ssh_allow_groups (wheel)",
        ),
        (
            {"common_firewall_ssh_sources": ["192.0.2.0/24"]},
            "common_firewall_ssh_sources (192.0.2.0/24) does not hold",
        ),
    ],
    ids=["user-outside-allow-groups", "control-node-outside-ssh-sources"],
)
def test_common_ssh_05_lockout_refused_before_any_change(control_node_login, extra, message):
    run = assert_refused(
        "--limit", WEB, "-e", json.dumps({**control_node_login, **extra}), message=message
    )
    assert f"over SSH as {control_node_login['ansible_user']} from" in run.output


def test_common_fw_02_new_ssh_connections_rate_limited_per_source(scenario_host, hostvars):
    web, mon = scenario_host(WEB), scenario_host(MON)
    burst = {**DEFAULTS, **hostvars(WEB)}["common_firewall_ssh_burst"]
    attempts = 3 * burst
    # Forget earlier connections (other tests, an earlier run), and again afterwards so the
    # monitoring host is not left throttled.
    flush = "nft flush set inet common_firewall ssh_new_ipv4"
    web.check_output(flush)
    probe = f"""
import concurrent.futures, socket
def attempt(_):
    with socket.socket() as s:
        s.settimeout(3)
        try:
            s.connect(({WEB!r}, 22))
            return "answered"
        except ConnectionRefusedError:
            return "answered"
        except OSError:
            return "dropped"
with concurrent.futures.ThreadPoolExecutor({attempts}) as pool:
    results = list(pool.map(attempt, range({attempts})))
print(results.count("answered"), results.count("dropped"))
"""
    try:
        answered, dropped = map(int, mon.check_output(f"python3 -c {shlex.quote(probe)}").split())
    finally:
        web.run(flush)
    # The burst gets through at once; the rate refills one more every few seconds at most.
    assert 1 <= answered <= burst + 1, (answered, dropped)
    assert dropped == attempts - answered
