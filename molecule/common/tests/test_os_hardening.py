"""Kernel and OS hardening of the common role, one test per control.

IDs: DevSec linux-baseline's (sysctl-NN, os-NN, package-NN) and the role's own (osh-NN),
as in roles/common/README.md's control table. Containers share the host's kernel: a
kernel value is checked live only where the role applies it (everywhere on real hosts; in
a container, the network namespace's own net.ipv4/net.ipv6 keys, and only where /proc/sys
is writable). The file that holds it is checked everywhere.
"""

import json
import re

import pytest
from stack_testinfra import assert_refused, converge, hosts_in

JOURNAL_UNITS = ["auditd"]
SYSCTL_FILE = "/etc/sysctl.d/61-common-hardening.conf"
NETNS_KEY = re.compile(r"^net\.ipv[46]\.")
# Probe accounts for the ageing tests: one with a password, one without (key-only).
HUMAN, KEY_ONLY = "probe-human", "probe-keyonly"
BAD_WATCH = {"path": "etc/x", "permissions": "wa", "key": "k"}


def in_container(host) -> bool:
    return host.run("systemd-detect-virt --container").rc == 0


def applied_here(host, key: str) -> bool:
    if not in_container(host):
        return True
    writable = host.run("test -w /proc/sys/net/ipv4/conf/all/rp_filter").rc == 0
    return writable and bool(NETNS_KEY.match(key))


def assert_sysctl(host, wanted: dict[str, str]) -> None:
    lines = host.file(SYSCTL_FILE).content_string.splitlines()
    written = dict(
        (part.strip() for part in line.split("=", 1))
        for line in lines
        if "=" in line and not line.lstrip().startswith("#")
    )
    assert {key: written.get(key) for key in wanted} == wanted
    for key, value in wanted.items():
        proc = "/proc/sys/" + key.replace(".", "/")
        if applied_here(host, key) and host.file(proc).exists:
            live = " ".join(host.check_output("sysctl -n %s", key).split())
            assert live == value, f"{key} is {live} live, {value} in {SYSCTL_FILE}"


def login_defs(host) -> dict[str, str]:
    return dict(
        line.split(None, 1)
        for line in host.file("/etc/login.defs").content_string.splitlines()
        if line.strip() and not line.startswith("#") and len(line.split(None, 1)) == 2
    )


def shadow(host, user: str) -> dict[str, str]:
    fields = host.check_output("getent shadow %s", user).split(":")
    return dict(zip(("name", "hash", "changed", "min", "max", "warn"), fields, strict=False))


def test_sysctl_01_no_ipv4_forwarding(host):
    assert_sysctl(host, {"net.ipv4.ip_forward": "0", "net.ipv4.conf.all.forwarding": "0"})


def test_sysctl_02_reverse_path_filter(host):
    assert_sysctl(
        host, {"net.ipv4.conf.all.rp_filter": "1", "net.ipv4.conf.default.rp_filter": "1"}
    )


def test_sysctl_03_bogus_icmp_errors_ignored(host):
    assert_sysctl(host, {"net.ipv4.icmp_ignore_bogus_error_responses": "1"})


def test_sysctl_04_broadcast_echo_ignored(host):
    assert_sysctl(host, {"net.ipv4.icmp_echo_ignore_broadcasts": "1"})


def test_sysctl_05_icmp_ratelimit(host):
    assert_sysctl(host, {"net.ipv4.icmp_ratelimit": "100"})


def test_sysctl_06_icmp_ratemask(host):
    assert_sysctl(host, {"net.ipv4.icmp_ratemask": "88089"})


def test_sysctl_08_arp_ignore(host):
    assert_sysctl(host, {"net.ipv4.conf.all.arp_ignore": "1"})


def test_sysctl_09_arp_announce(host):
    assert_sysctl(host, {"net.ipv4.conf.all.arp_announce": "2"})


def test_sysctl_10_rfc1337(host):
    assert_sysctl(host, {"net.ipv4.tcp_rfc1337": "1"})


def test_sysctl_11_syn_cookies(host):
    assert_sysctl(host, {"net.ipv4.tcp_syncookies": "1"})


def test_sysctl_12_shared_media(host):
    assert_sysctl(
        host, {"net.ipv4.conf.all.shared_media": "1", "net.ipv4.conf.default.shared_media": "1"}
    )


def test_sysctl_13_no_source_routing(host):
    assert_sysctl(
        host,
        {
            f"net.{ip}.conf.{scope}.accept_source_route": "0"
            for ip in ("ipv4", "ipv6")
            for scope in ("all", "default")
        },
    )


def test_sysctl_14_no_ipv4_redirects_accepted(host):
    assert_sysctl(
        host,
        {"net.ipv4.conf.all.accept_redirects": "0", "net.ipv4.conf.default.accept_redirects": "0"},
    )


def test_sysctl_15_no_secure_redirects_accepted(host):
    assert_sysctl(
        host,
        {"net.ipv4.conf.all.secure_redirects": "0", "net.ipv4.conf.default.secure_redirects": "0"},
    )


def test_sysctl_16_no_redirects_sent(host):
    assert_sysctl(
        host,
        {"net.ipv4.conf.all.send_redirects": "0", "net.ipv4.conf.default.send_redirects": "0"},
    )


def test_sysctl_17_martians_logged(host):
    assert_sysctl(
        host, {"net.ipv4.conf.all.log_martians": "1", "net.ipv4.conf.default.log_martians": "1"}
    )


def test_sysctl_19_no_ipv6_forwarding(host):
    assert_sysctl(host, {"net.ipv6.conf.all.forwarding": "0"})


def test_sysctl_20_no_ipv6_redirects_accepted(host):
    assert_sysctl(
        host,
        {"net.ipv6.conf.all.accept_redirects": "0", "net.ipv6.conf.default.accept_redirects": "0"},
    )


def test_sysctl_30_no_magic_sysrq(host):
    assert_sysctl(host, {"kernel.sysrq": "0"})


def test_sysctl_31a_no_setuid_core_dumps(host):
    assert_sysctl(host, {"fs.suid_dumpable": "0"})


def test_sysctl_32_full_aslr(host):
    assert_sysctl(host, {"kernel.randomize_va_space": "2"})


def test_sysctl_34_protected_links_fifos_and_files(host):
    assert_sysctl(
        host,
        {
            "fs.protected_fifos": "1",
            "fs.protected_hardlinks": "1",
            "fs.protected_regular": "2",
            "fs.protected_symlinks": "1",
        },
    )


def test_osh_01_kernel_pointers_hidden(host):
    assert_sysctl(host, {"kernel.kptr_restrict": "1"})


def test_osh_02_ptrace_only_descendants(host):
    assert_sysctl(host, {"kernel.yama.ptrace_scope": "1"})


def test_osh_03_no_unprivileged_bpf(host):
    assert_sysctl(host, {"kernel.unprivileged_bpf_disabled": "1"})


def test_sysctl_tuning_values_kept(host):
    # The hardening file comes after common's tuning file and sets none of its keys.
    tuning = host.file("/etc/sysctl.d/60-common.conf").content_string
    assert "net.core.somaxconn" in tuning
    assert "somaxconn" not in host.file(SYSCTL_FILE).content_string


def test_osh_04_no_core_dumps_from_logins_or_services(host):
    out = host.run("su - nobody -s /bin/sh -c 'ulimit -H -c; ulimit -S -c'")
    assert out.stdout.split() == ["0", "0"], out.stderr
    assert host.check_output("systemctl show -p DefaultLimitCORE --value") == "0"
    # A service started now: systemd's default limit reaches it.
    out = host.run("systemd-run --quiet --wait --pipe /bin/sh -c 'ulimit -H -c'")
    assert out.stdout.strip() == "0", out.stderr
    conf = host.check_output("systemd-analyze cat-config systemd/coredump.conf")
    settings = [line for line in conf.splitlines() if not line.startswith("#")]
    assert "Storage=none" in settings and "ProcessSizeMax=0" in settings


def test_os_05_login_defs(host):
    defs = login_defs(host)
    wanted = {
        "UMASK": "027",
        "PASS_MAX_DAYS": "60",
        "PASS_MIN_DAYS": "7",
        "PASS_WARN_AGE": "7",
        "LOGIN_RETRIES": "5",
        "LOGIN_TIMEOUT": "60",
        "UID_MIN": "1000",
        "GID_MIN": "1000",
    }
    assert {key: defs.get(key, "").strip() for key in wanted} == wanted
    assert "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in defs["ENV_SUPATH"]
    assert "/usr/local/bin:/usr/bin:/bin" in defs["ENV_PATH"]
    f = host.file("/etc/login.defs")
    assert (f.user, f.group, f.mode) == ("root", "root", 0o644)


def test_os_05_login_shells_get_umask_027_others_keep_022(host):
    login = host.run("su - nobody -s /bin/sh -c umask")
    assert login.stdout.strip() == "0027", login.stderr
    probe = "f=$(mktemp -u /tmp/probe.XXXXXX); touch $f; stat -c %a $f; rm $f"
    created = host.run(f"su - nobody -s /bin/sh -c '{probe}'")
    assert created.stdout.strip() == "640", created.stderr
    # Non-login shells (Ansible's tasks, services) keep Debian's 022: files the later
    # roles install stay readable by their services.
    assert host.check_output("sh -c umask") == "0022"


def test_os_05_system_accounts_get_no_ageing(host):
    host.run("userdel probe-system")
    try:
        assert host.run("useradd --system --no-create-home probe-system").rc == 0
        assert shadow(host, "probe-system")["max"] == ""
    finally:
        host.run("userdel probe-system")


@pytest.fixture(scope="module")
def reconverged(scenario_host):
    """Probe accounts on every host, then one more converge (it changes only them)."""
    names = hosts_in("all")
    for name in names:
        probe = scenario_host(name)
        probe.run(f"userdel -r {HUMAN}; userdel -r {KEY_ONLY}")
        # An account from before the hardening: a password that never expired.
        assert probe.run(f"useradd -m -s /bin/bash {HUMAN}").rc == 0
        assert probe.run(f"usermod -p '$6$probe$not-a-real-hash' {HUMAN}").rc == 0
        assert probe.run(f"chage -M 99999 -m 0 -W 7 {HUMAN}").rc == 0
        # A key-only account created after it: login.defs gives it PASS_MAX_DAYS.
        assert probe.run(f"useradd -m -s /bin/bash {KEY_ONLY}").rc == 0
        assert shadow(probe, KEY_ONLY)["max"] == "60"
    run = converge()
    yield run
    for name in names:
        scenario_host(name).run(f"userdel -r {HUMAN}; userdel -r {KEY_ONLY}")


def test_os_05_human_passwords_age_key_only_accounts_never_expire(host, reconverged):
    assert reconverged.returncode == 0, reconverged.output[-3000:]
    human = shadow(host, HUMAN)
    assert (human["max"], human["min"], human["warn"]) == ("60", "7", "7")
    # A finite maximum on an account without a password would make PAM demand a
    # password change at its next SSH key login, which a key login cannot make.
    assert shadow(host, KEY_ONLY)["max"] == ""


def said(run) -> str:
    """The run's output with the callback's line wrapping undone."""
    return " ".join(run.output.split())


def test_sysctl_run_says_what_it_did_not_apply(host, reconverged):
    if in_container(host):
        out = said(reconverged)
        assert "are written to /etc/sysctl.d/61-common-hardening.conf but not applied" in out
        assert "kernel.kptr_restrict" in out


def test_os_10_unused_filesystems_not_loadable(host):
    conf = host.file("/etc/modprobe.d/60-common-filesystems.conf").content_string
    for fs in ("cramfs", "freevxfs", "jffs2", "hfs", "hfsplus", "squashfs", "udf"):
        assert f"install {fs} /bin/false" in conf
        assert f"blacklist {fs}" in conf
    if host.exists("modprobe"):
        shown = host.check_output("modprobe --showconfig")
        assert "install cramfs /bin/false" in shown
    # EFI systems boot from vfat, and the stack's own filesystems stay loadable.
    lines = [line.split() for line in conf.splitlines()]
    named = {words[1] for words in lines if words and words[0] in ("install", "blacklist")}
    assert not named & {"vfat", "ext4", "overlay", "tmpfs"}


def test_osh_05_needrestart_never_asks(host):
    assert host.package("needrestart").is_installed
    conf = host.file("/etc/needrestart/conf.d/60-common.conf").content_string
    assert "$nrconf{restart} = 'l';" in conf
    # Run as apt's hook would, without a terminal: it lists and returns, no prompt.
    out = host.run("timeout 120 needrestart < /dev/null")
    assert out.rc == 0, (out.rc, out.stdout[-500:], out.stderr[-500:])


def test_package_08_auditd_with_identity_sudo_and_sshd_watches(host):
    assert host.package("auditd").is_installed
    rules = host.file("/etc/audit/rules.d/60-common.rules").content_string
    for path, key in [
        ("/etc/passwd", "identity"),
        ("/etc/group", "identity"),
        ("/etc/shadow", "identity"),
        ("/etc/gshadow", "identity"),
        ("/etc/sudoers", "sudoers"),
        ("/etc/sudoers.d", "sudoers"),
        ("/etc/ssh/sshd_config", "sshd_config"),
        ("/etc/ssh/sshd_config.d", "sshd_config"),
    ]:
        assert f"-w {path} -p wa -k {key}" in rules
    auditd = host.service("auditd")
    if in_container(host):
        # No audit interface in a container: masked, so no failed unit either.
        assert host.run("systemctl is-enabled auditd").stdout.strip() == "masked"
        assert host.run("systemctl is-failed auditd").rc != 0
        return
    assert auditd.is_running
    listed = host.check_output("auditctl -l")
    assert "-w /etc/sudoers.d -p wa -k sudoers" in listed
    host.run("touch /etc/sudoers.d/README")
    assert host.run("ausearch -k sudoers -ts recent").rc == 0


def test_package_08_auditd_masked_run_says_so(host, reconverged):
    if in_container(host):
        assert "auditd is installed and its rules are written" in said(reconverged)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("common_hardening_umask=0999", "three octal digits"),
        ('{"common_hardening_pass_min_days": 90}', "min days <= max days"),
        ('{"common_hardening_blacklisted_filesystems": ["ext4"]}', "the stack needs"),
        (
            json.dumps({"common_hardening_audit_watches": [BAD_WATCH]}),
            "Refused common_hardening_audit_watches entries ['etc/x']",
        ),
        ('{"common_sysctl_extra": {"kernel.sysrq": 1}}', "common_sysctl_extra sets kernel.sysrq"),
    ],
)
def test_osh_bad_hardening_variables_fail_before_any_change(extra, message):
    assert_refused("-e", extra, message=message)
