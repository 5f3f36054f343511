"""Behaviour of the prometheus and grafana roles on a monitoring host watching a host that
runs the real data-tier roles (postgresql, pgbouncer, redis) with their exporters, and the
node exporter on both.

Control IDs: prometheus-NN and grafana-NN. Everything is checked against the live
Prometheus; the Grafana server itself cannot run here (its APT repository is not
reachable from the test bed), so its start is the one check that is skipped, with the
reason; its configuration, provisioning and dashboards are checked for real. nginx and
the app have no host here: their jobs and dashboards are checked in molecule/default.
"""

from __future__ import annotations

import configparser
import json
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from stack_testinfra import (
    PROMETHEUS_PASSWORD_FILE,
    PROMETHEUS_USER,
    STACK_CA,
    assert_refused,
    converge,
    groups_of,
    hosts_in,
    prometheus_auth,
    prometheus_url,
)

MON = "monitoring-mon"
testinfra_hosts = hosts_in("monitoring")
JOURNAL_UNITS = ["prometheus"]
ENV = "molecule"
ROLES = Path(__file__).resolve().parents[3] / "roles"
DASHBOARDS = ROLES / "grafana" / "files" / "dashboards"
DATASOURCE_UID = "stack-prometheus"
# The jobs the prometheus role generates, with the inventory group each one scrapes.
JOBS = {
    "node": "all",
    "app": "app",
    "nginx": "web",
    "postgres": "db",
    "pgbouncer": "db",
    "redis": "cache",
    "prometheus": "monitoring",
}
SKIP_MESSAGE = "Grafana package install and server start SKIPPED"
# The roles applied besides prometheus and grafana: runs that test those two skip their
# tags (their preflights still run), so the data tier is not converged again each time.
OTHER_ROLES = "common,postgresql,pgbouncer,redis"
# Waiting for Prometheus to see a change is not a performance check: the deadline is
# only there so a broken setup fails instead of hanging.
PATIENCE = 300
WEB_CONFIG_FLAG = "--web.config.file=/etc/prometheus/web.yml"


def api(host, path: str, **params: str) -> dict:
    """GET a Prometheus API path from the monitoring host, over https with the stack CA and
    basic auth; returns the decoded answer."""
    cmd = (
        f"curl -sS -m 30 {prometheus_auth(host)} -G "
        + " ".join(["--data-urlencode %s"] * len(params))
        + " %s"
    )
    args = [f"{key}={value}" for key, value in params.items()]
    out = host.run(cmd, *args, prometheus_url(host) + path)
    assert out.rc == 0, out.stderr
    return json.loads(out.stdout)


def wait_for(check, what: str):
    """Poll check() until it returns something truthy; fail with `what` at the deadline."""
    deadline = time.monotonic() + PATIENCE
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(2)


def expected_targets() -> dict[str, set[str]]:
    """job -> inventory hosts it must scrape; jobs of empty groups are absent."""
    wanted = {job: set(hosts_in(group)) for job, group in JOBS.items()}
    return {job: hosts for job, hosts in wanted.items() if hosts}


def up_by_job(host) -> dict[str, dict[str, str]]:
    answer = api(host, "/api/v1/query", query=f'up{{env="{ENV}"}}')
    result: dict[str, dict[str, str]] = {}
    for series in answer["data"]["result"]:
        result.setdefault(series["metric"]["job"], {})[series["metric"]["host"]] = series["value"][
            1
        ]
    return result


def test_prometheus_01_every_scrape_target_is_up(host):
    expected = expected_targets()
    assert "app" not in expected and "nginx" not in expected, "this scenario has no app or web host"

    def all_up():
        seen = up_by_job(host)
        if {job: set(hosts) for job, hosts in seen.items()} != expected:
            return None
        return all(value == "1" for hosts in seen.values() for value in hosts.values()) and seen

    seen = wait_for(all_up, f"up == 1 for {expected}")
    for job, hosts in expected.items():
        answer = api(host, "/api/v1/query", query=f'up{{job="{job}", env="{ENV}"}} == 1')
        assert {s["metric"]["host"] for s in answer["data"]["result"]} == hosts, (job, seen)


def test_prometheus_02_targets_carry_env_group_and_host(host):
    answer = api(host, "/api/v1/targets", state="active")
    targets = [t for t in answer["data"]["activeTargets"] if t["labels"].get("env") == ENV]
    assert {t["labels"]["job"] for t in targets} == set(expected_targets())
    for target in targets:
        labels, name = target["labels"], target["labels"]["host"]
        group = JOBS[labels["job"]]
        if group == "all":
            # Every inventory group of the host (here also the test bed's lean_common).
            assert set(labels["group"].split(",")) == groups_of(name)
        else:
            assert labels["group"] == group and name in hosts_in(group)
        assert labels["instance"] == f"{name}:{target['scrapeUrl'].split(':')[2].split('/')[0]}"
        assert target["health"] == "up", target


def test_prometheus_03_listens_on_the_private_address_with_retention(host):
    url = prometheus_url(host)
    assert not url.startswith(("https://0.0.0.0", "https://127.")), url
    assert host.run("curl -s -m 5 http://127.0.0.1:9090/-/ready").rc == 7  # refused
    flags = api(host, "/api/v1/status/flags")["data"]
    assert flags["storage.tsdb.retention.time"] == "2d"
    assert flags["storage.tsdb.retention.size"] == "512MiB"
    assert flags["storage.tsdb.path"] == "/var/lib/prometheus/metrics2"


def test_prometheus_04_rule_unit_tests_pass_and_catch_a_broken_rule(host):
    run = host.run("promtool test rules /etc/prometheus/tests/stack.rules.test.yml")
    assert run.rc == 0 and "SUCCESS" in run.stdout, run.stdout + run.stderr
    # The same tests against a copy of the rules where TargetDown can never fire.
    broken = host.run(
        "d=$(mktemp -d) && sed 's/expr: up == 0/expr: up == 2/' "
        "/etc/prometheus/rules/stack.rules.yml > $d/rules.yml && "
        "sed 's#/etc/prometheus/rules/stack.rules.yml#'$d/rules.yml'#' "
        "/etc/prometheus/tests/stack.rules.test.yml > $d/test.yml && "
        "promtool test rules $d/test.yml; rc=$?; rm -r $d; exit $rc"
    )
    assert broken.rc == 1, broken.stdout + broken.stderr
    assert "alertname: TargetDown" in broken.stdout + broken.stderr


def test_prometheus_05_alert_rules_loaded_with_for_and_runbooks(host, hostvars):
    groups = api(host, "/api/v1/rules", type="alert")["data"]["groups"]
    rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert set(rules) == {
        "TargetDown",
        "HighHttp5xxRatio",
        "HighHttpLatencyP99",
        "PostgresDown",
        "RedisDown",
        "PostgresConnectionsNearMax",
        "PgBouncerClientsWaiting",
        "RedisMemoryNearMax",
        "RedisEvictingKeys",
        "DiskAlmostFull",
        "DiskFillingUp",
        "ShopLoginFailureBurst",
    }
    for name, rule in rules.items():
        assert rule["health"] == "ok", (name, rule.get("lastError"))
        assert rule["duration"] > 0, name
        assert len(rule["annotations"]["description"]) > 150, name
        assert rule["annotations"]["summary"], name
    assert rules["TargetDown"]["duration"] == 30  # the scenario's short for:


def alert_state(host, job: str) -> str | None:
    alerts = api(host, "/api/v1/alerts")["data"]["alerts"]
    for alert in alerts:
        labels = alert["labels"]
        if labels["alertname"] == "TargetDown" and labels["job"] == job and labels["env"] == ENV:
            return alert["state"]
    return None


@pytest.mark.journal("prometheus")
def test_prometheus_06_target_down_goes_pending_then_firing(host, scenario_host):
    node = scenario_host(next(iter(hosts_in("cache"))))
    assert alert_state(host, "redis") is None
    states: list[str] = []
    assert node.run("systemctl stop prometheus-redis-exporter").rc == 0
    try:

        def firing():
            state = alert_state(host, "redis")
            if state and (not states or states[-1] != state):
                states.append(state)
            return state == "firing"

        wait_for(firing, "TargetDown for the stopped redis exporter to fire")
        assert states == ["pending", "firing"], states
        alert = next(
            a
            for a in api(host, "/api/v1/alerts")["data"]["alerts"]
            if a["labels"]["job"] == "redis"
        )
        assert alert["labels"]["severity"] == "critical"
        assert "redis target" in alert["annotations"]["summary"]
    finally:
        node.run("systemctl start prometheus-redis-exporter")
    wait_for(lambda: alert_state(host, "redis") is None, "TargetDown to clear")
    wait_for(lambda: set(up_by_job(host).get("redis", {}).values()) == {"1"}, "redis up again")


def test_prometheus_07_pgbouncer_requests_come_from_the_renamed_stat(host):
    # Debian 12's exporter reads SHOW STATS' total_requests, which PgBouncer 1.18 calls
    # total_query_count; the pgbouncer role's launcher maps it back to this metric.
    query = f'pgbouncer_requests_total{{job="pgbouncer", env="{ENV}"}}'
    series = wait_for(
        lambda: api(host, "/api/v1/query", query=query)["data"]["result"],
        "pgbouncer_requests_total in Prometheus",
    )
    assert {s["metric"]["host"] for s in series} == set(hosts_in("db"))


BUILDINFO = "/api/v1/status/buildinfo"


def status_code(host, url: str, *options: str) -> str:
    """The HTTP status curl got for url ('000' when there was no HTTP answer)."""
    cmd = "curl -s -m 10 -o /dev/null -w '%%{http_code}' " + " ".join(options) + " %s"
    return host.run(cmd, url).stdout.strip()


def test_prometheus_tls_01_plain_http_gets_no_answer(host):
    address = prometheus_url(host).removeprefix("https://")
    # Go's TLS server answers a cleartext request with a 400 and nothing else.
    code = status_code(host, f"http://{address}{BUILDINFO}")
    assert code in {"400", "000"}, code
    out = host.run("curl -s -m 10 %s", f"http://{address}{BUILDINFO}")
    assert '"status"' not in out.stdout, out.stdout


def test_prometheus_tls_02_no_or_wrong_credentials_get_401(host):
    url = prometheus_url(host) + BUILDINFO
    assert status_code(host, url, f"--cacert {STACK_CA}") == "401"
    # A wrong password (not a secret: it is wrong) is refused the same way.
    assert status_code(host, url, f"--cacert {STACK_CA}", "-u prometheus:not-the-password") == "401"
    assert status_code(host, url, f"--cacert {STACK_CA}", "-u nobody:not-the-password") == "401"


def test_prometheus_tls_03_credentials_and_the_ca_get_200(host):
    url = prometheus_url(host) + BUILDINFO
    assert status_code(host, url, prometheus_auth(host)) == "200"
    answer = api(host, BUILDINFO)
    assert answer["status"] == "success" and answer["data"]["version"].startswith("2."), answer
    # The certificate is the stack CA's: without that CA curl does not trust it (60), and it
    # names the address clients use (no -k anywhere above).
    out = host.run("curl -sS -m 10 -o /dev/null %s", url)
    assert out.rc == 60, (out.rc, out.stderr)


@pytest.mark.parametrize(("version", "accepted"), [("-tls1_1", False), ("-tls1_2", True)])
def test_prometheus_tls_04_tls_1_1_refused_1_2_accepted(host, version, accepted):
    address = prometheus_url(host).removeprefix("https://")
    # SECLEVEL=0 lets the client offer TLS 1.1, so a refusal is the server's.
    out = host.run(
        f"openssl s_client -connect {address} {version} -cipher 'DEFAULT:@SECLEVEL=0' "
        f"-CAfile {STACK_CA} </dev/null 2>&1"
    )
    if accepted:
        assert out.rc == 0, out.stdout[-1500:]
        assert "New, TLSv1.2, Cipher is" in out.stdout, out.stdout[-1500:]
        assert "Verify return code: 0 (ok)" in out.stdout, out.stdout[-1500:]
    else:
        assert out.rc != 0, out.stdout[-1500:]
        assert "New, TLSv1.1" not in out.stdout, out.stdout[-1500:]


def test_prometheus_tls_05_web_config_file(host):
    web = host.file("/etc/prometheus/web.yml")
    assert (web.user, web.group, web.mode) == ("root", "prometheus", 0o640)
    assert host.run("runuser -u nobody -- cat /etc/prometheus/web.yml").rc != 0
    assert host.run("promtool check web-config /etc/prometheus/web.yml").rc == 0
    config = yaml.safe_load(web.content_string)
    tls = config["tls_server_config"]
    assert (tls["cert_file"], tls["key_file"], tls["min_version"]) == (
        "/etc/ssl/stack/host.crt",
        "/etc/ssl/stack/host.key",
        "TLS12",
    )
    (user,) = config["basic_auth_users"]
    assert user == PROMETHEUS_USER
    # A bcrypt hash, never the password itself.
    assert re.fullmatch(r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}", config["basic_auth_users"][user])
    assert host.file(PROMETHEUS_PASSWORD_FILE).content_string not in web.content_string
    password = host.file(PROMETHEUS_PASSWORD_FILE)
    assert (password.user, password.group, password.mode) == ("root", "prometheus", 0o640)
    # Passed on the command line, and the prometheus user reads the host key.
    assert WEB_CONFIG_FLAG in host.file("/etc/default/prometheus").content_string
    assert "ssl-cert" in host.user("prometheus").groups
    assert WEB_CONFIG_FLAG in host.run("ps -o args= -C prometheus").stdout


def test_prometheus_tls_06_self_scrape_over_https_with_auth(host):
    config = yaml.safe_load(host.file("/etc/prometheus/prometheus.yml").content_string)
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "prometheus"]
    assert job["scheme"] == "https"
    assert job["tls_config"]["ca_file"] == STACK_CA
    auth = {"username": PROMETHEUS_USER, "password_file": PROMETHEUS_PASSWORD_FILE}
    assert job["basic_auth"] == auth
    # The exporters serve plain http: their jobs keep it.
    others = [j for j in config["scrape_configs"] if j["job_name"] != "prometheus"]
    assert others and all(j.get("scheme", "http") == "http" for j in others)

    def target():
        answer = api(host, "/api/v1/targets", state="active")
        found = [t for t in answer["data"]["activeTargets"] if t["labels"]["job"] == "prometheus"]
        return found if found and all(t["health"] == "up" for t in found) else None

    (found,) = wait_for(target, "the prometheus self-scrape to be up")
    assert found["scrapeUrl"].startswith("https://"), found["scrapeUrl"]


def substitute(expr: str) -> str:
    """What Grafana sends for the dashboards' variables with "All" selected."""
    return (
        expr.replace("$__rate_interval", "1m").replace('"$env"', '".*"').replace('"$host"', '".*"')
    )


def dashboard_job(board: dict) -> str:
    """The scrape job a dashboard is about (its first variable selects on it)."""
    return re.search(r'job="([^"]+)"', board["templating"]["list"][0]["definition"])[1]


def dashboard_queries() -> list[tuple[str, str, str]]:
    queries = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel["targets"]:
                queries.append((board["uid"], f"{path.name}: {panel['title']}", target["expr"]))
    return queries


def test_grafana_10_grafana_ini_from_variables(host, hostvars):
    ini = host.file("/etc/grafana/grafana.ini")
    assert (ini.user, ini.group, ini.mode) == ("root", "grafana", 0o640)
    # The admin password is in there: other users cannot read it.
    assert host.run("runuser -u nobody -- cat /etc/grafana/grafana.ini").rc != 0
    config = configparser.ConfigParser(interpolation=None)
    config.read_string(ini.content_string)
    mon = hostvars(MON)
    assert config["security"]["admin_password"] == f'"""{mon["vault_grafana_admin_password"]}"""'
    assert config["auth.anonymous"]["enabled"] == "false"
    assert config["analytics"]["reporting_enabled"] == "false"
    assert config["analytics"]["check_for_updates"] == "false"
    assert config["users"]["allow_sign_up"] == "false"
    assert config["server"]["root_url"] == mon["grafana_root_url"]
    assert config["server"]["serve_from_sub_path"] == "true"
    assert config["security"]["cookie_secure"] == "true"
    assert config["security"]["cookie_samesite"] == "lax"
    # Its own key from the vault, not Grafana's public built-in one.
    assert config["security"]["secret_key"] == f'"""{mon["vault_grafana_secret_key"]}"""'
    assert "SW2YcwTIb9zpOOhoPsMm" not in ini.content_string
    assert config["server"]["http_addr"] == prometheus_url(host).split("//")[1].split(":")[0]


def test_grafana_11_datasource_is_the_live_prometheus(host):
    path = "/etc/grafana/provisioning/datasources/stack.yaml"
    assert host.file(path).group == "grafana"
    provisioned = yaml.safe_load(host.file(path).content_string)
    (source,) = provisioned["datasources"]
    assert (source["uid"], source["type"], source["isDefault"]) == (
        DATASOURCE_UID,
        "prometheus",
        True,
    )
    # Over https, verified with the stack CA, with Prometheus' user and password.
    assert source["url"] == prometheus_url(host), source["url"]
    assert (source["basicAuth"], source["basicAuthUser"]) == (True, PROMETHEUS_USER)
    assert source["jsonData"]["tlsAuthWithCACert"] is True
    secure = source["secureJsonData"]
    assert secure["basicAuthPassword"] == host.file(PROMETHEUS_PASSWORD_FILE).content_string
    assert secure["tlsCACert"] == host.file(STACK_CA).content_string
    # The file holds that password: closed to others.
    assert host.file(path).mode == 0o640
    assert host.run("runuser -u nobody -- cat %s", path).rc != 0
    out = host.run(
        f"curl -sS -m 10 {prometheus_auth(host)} %s/api/v1/query?query=up", source["url"]
    )
    assert json.loads(out.stdout)["status"] == "success", out.stdout + out.stderr


def test_grafana_12_dashboards_provisioned_from_the_repository(host):
    provider = yaml.safe_load(
        host.file("/etc/grafana/provisioning/dashboards/stack.yaml").content_string
    )
    (entry,) = provider["providers"]
    directory = entry["options"]["path"]
    assert entry["type"] == "file" and not entry["allowUiUpdates"]
    installed = sorted(host.file(directory).listdir())
    repo = sorted(p.name for p in DASHBOARDS.glob("*.json"))
    assert installed == repo
    assert set(repo) == {
        f"{n}.json" for n in ("app", "postgresql", "pgbouncer", "redis", "nginx", "hosts")
    }
    for name in repo:
        text = host.file(f"{directory}/{name}").content_string
        assert text == (DASHBOARDS / name).read_text(), name
        uids = set(re.findall(r'"uid": "([^"]+)"', json.dumps(json.loads(text)["panels"])))
        assert uids == {DATASOURCE_UID}, (name, uids)
    # The committed JSON is what the generator produces.
    check = subprocess.run(
        [sys.executable, str(ROLES / "grafana/scripts/generate_dashboards.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr


@pytest.fixture(scope="module")
def redis_key(host, scenario_host, hostvars):
    """A key in Redis, so that the keyspace panels have data (the roles store none)."""
    (cache,) = hosts_in("cache")
    # The redis role's admin user (redis_admin_user), the only one allowed to write here.
    # Its password reaches redis-cli in REDISCLI_AUTH from a root-only file written through
    # standard input, never on a command line; Redis serves only TLS (the stack CA).
    password = hostvars(cache)["vault_redis_admin_password"]
    subprocess.run(
        ["docker", "exec", "-i", cache, "sh", "-c", "umask 077 && cat > /root/redis-admin.env"],
        input=f"REDISCLI_AUTH={shlex.quote(password)}\n",
        text=True,
        check=True,
    )
    out = scenario_host(cache).run(
        "set -a && . /root/redis-admin.env && set +a && redis-cli --no-auth-warning "
        "--tls --cacert /etc/ssl/stack/ca.crt --user admin -h 127.0.0.1 SET stack:probe 1"
    )
    assert out.stdout.strip() == "OK", out.stdout + out.stderr
    query = 'redis_db_keys{job="redis"} > 0'
    wait_for(lambda: api(host, "/api/v1/query", query=query)["data"]["result"], "the key")


@pytest.mark.usefixtures("redis_key")
def test_grafana_13_every_dashboard_query_runs_on_prometheus(host):
    # Panels about a tier with no host in the inventory may be empty; here those are the
    # app and nginx (no app or web host in this scenario). Everything else runs and must
    # return data.
    expected = expected_targets()
    boards = [json.loads(path.read_text()) for path in DASHBOARDS.glob("*.json")]
    may_be_empty = {board["uid"] for board in boards if dashboard_job(board) not in expected}
    queries = dashboard_queries()
    assert len(queries) > 40
    failed, empty = [], []
    for uid, where, expr in queries:
        answer = api(host, "/api/v1/query", query=substitute(expr))
        if answer.get("status") != "success":
            failed.append((where, expr, answer.get("error")))
        elif not answer["data"]["result"] and uid not in may_be_empty:
            empty.append((where, expr))
    assert not failed, failed
    assert not empty, empty


def test_grafana_14_dashboard_variables_find_hosts(host):
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        job = dashboard_job(board)
        if not expected_targets().get(job):
            continue
        for variable in board["templating"]["list"]:
            label = re.search(r",\s*(\w+)\)$", variable["definition"])[1]
            answer = api(host, f"/api/v1/label/{label}/values", **{"match[]": f'up{{job="{job}"}}'})
            assert answer["status"] == "success" and answer["data"], (path.name, label)


def test_grafana_15_skipped_server_is_announced():
    run = converge("--check", "--skip-tags", OTHER_ROLES)
    assert run.returncode == 0, run.output[-3000:]
    assert SKIP_MESSAGE in run.output, run.output[-3000:]
    assert not run.any_changed, run.changed


def test_grafana_16_server_answers(host, hostvars):
    if not hostvars(MON)["grafana_install_enabled"]:
        pytest.skip(
            "Grafana server start skipped: Grafana's APT repository cannot be reached from "
            "this test bed (grafana_install_enabled: false); configuration, provisioning and "
            "every dashboard query are checked above"
        )
    address = prometheus_url(host).split("//")[1].split(":")[0]
    out = host.run("curl -sS -m 10 http://%s:3000/api/health", address)
    assert json.loads(out.stdout)["database"] == "ok", out.stdout


def test_grafana_17_unreachable_package_source_fails_clearly():
    run = converge(
        "--skip-tags",
        OTHER_ROLES,
        "-e",
        json.dumps(
            {
                "grafana_install_enabled": True,
                "grafana_apt_url": "http://192.0.2.1/grafana",
                "grafana_apt_key_url": "http://192.0.2.1/grafana/gpg.key",
                "grafana_apt_timeout": 3,
            }
        ),
    )
    assert run.returncode != 0
    assert "Grafana's APT repository cannot be reached" in run.output, run.output[-3000:]
    assert "grafana_install_enabled: false" in run.output
    assert not run.any_changed, run.changed


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("prometheus_listen_address=0.0.0.0", "must be one address of this host"),
        ("prometheus_port=many", "prometheus_port"),
        ("prometheus_alert_disk_fill_hours=1", "at most half of"),
        (
            json.dumps(
                {"prometheus_scrape_jobs_extra": [{"name": "x", "group": "dbs", "port": 1}]}
            ),
            "an inventory group",
        ),
        ("vault_grafana_admin_password=short", "at least 12"),
        ("vault_grafana_secret_key=short", "at least 32 characters"),
        ("vault_prometheus_web_password=short", "12 to 72 characters"),
        ("prometheus_web_user=a:b", "plain login name"),
    ],
)
def test_monitoring_18_bad_variables_fail_before_any_change(extra, message):
    assert_refused("-e", extra, message=message)


@pytest.mark.journal("prometheus")
def test_monitoring_19_redis_exporter_port_moves_exporter_firewall_and_scrape_job(
    host, scenario_host, hostvars
):
    """The cache group sets redis_exporter_port: all three places follow that one variable."""
    (cache,) = hosts_in("cache")
    port = hostvars(cache)["redis_exporter_port"]
    default = yaml.safe_load((ROLES / "stack/defaults/main.yml").read_text())["redis_exporter_port"]
    assert port != default, "the scenario must move the exporter off roles/stack's default"
    node = scenario_host(cache)

    # The exporter listens on the new port, on the cache host's private address.
    args = node.file("/etc/default/prometheus-redis-exporter").content_string
    address, listen_port = re.search(r"--web\.listen-address=([0-9.]+):(\d+)", args).groups()
    assert int(listen_port) == port
    assert node.socket(f"tcp://{address}:{port}").is_listening
    assert not node.socket(f"tcp://{address}:{default}").is_listening

    # The firewall opens it to the monitoring host ...
    out = host.run("curl -sS -m 10 http://%s:%s/metrics", address, str(port))
    assert out.rc == 0 and "redis_up 1" in out.stdout, out.stderr
    ruleset = node.run("nft list table inet common_firewall").stdout
    assert re.search(rf"tcp dport {port} accept comment \"redis-exporter: monitoring\"", ruleset)
    assert f"dport {default} " not in ruleset, ruleset
    # ... and to no one else: the control node is not in the monitoring group. It reaches
    # the scenario's network (Prometheus, open to operators, answers it), but not the port.
    prometheus = prometheus_url(host).removeprefix("https://").rsplit(":", 1)
    socket.create_connection((prometheus[0], int(prometheus[1])), timeout=10).close()
    with pytest.raises(OSError):
        socket.create_connection((address, port), timeout=5).close()

    # Prometheus scrapes the cache host there, and the target is up.
    def redis_target():
        answer = api(host, "/api/v1/targets", state="active")
        targets = [t for t in answer["data"]["activeTargets"] if t["labels"]["job"] == "redis"]
        return targets if targets and all(t["health"] == "up" for t in targets) else None

    (target,) = wait_for(redis_target, "the redis target to be up")
    assert target["labels"]["instance"] == f"{cache}:{port}"
    assert target["scrapeUrl"] == f"http://{address}:{port}/metrics"
