#!/usr/bin/env python3
"""The benchmark runner: applies profiles through the real playbooks, loads the stack
through nginx on the web host, and writes bench/results/<date>-<commit>.{json,md,png}.

Run it from the repository root with the project's venv (ansible, PyYAML, matplotlib):
    bench/run.py            # full run, about 20 minutes on 2 cores
    bench/run.py --smoke    # under 3 minutes: 2 profiles, short points, no thresholds
See bench/README.md for what each profile changes and how the numbers are taken.
"""

import argparse
import asyncio
import json
import os
import random
import shlex
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchkit import openloop, report, stats, system, tokens, wrk

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PROFILES_DIR = BENCH / "profiles"

# Endpoint -> (path or wrk script kind, connections). Connection counts: 64 where the
# issue asks for it (async vs blocking), fewer where a naive build answers in seconds.
ENDPOINTS = {
    "popular": ("/api/products/popular?limit=10", 32),
    # FastAPI's own floor: a route that touches nothing (no database, no cache).
    "live": ("/health/live", 32),
    "user": ("script:user", 64),
    "user-orders": ("script:user-orders", 32),
    "category": ("script:category", 32),
    "order-write": ("script:order-write", 16),
    "static": ("static", 64),
    "mix": ("script:mix", 64),
    "mix@128": ("script:mix", 128),
    "return": ("/bench/return", 64),
    "static-1k": ("/bench/static-1k", 64),
}
# The weighted read mix (out of 10).
MIX = {"popular": 4, "user": 2, "user-orders": 2, "category": 2}
# Points whose requests carry a demo user's token (benchkit/tokens.py), and those of them
# that place orders (as writers; the others read a reader's own orders).
TOKEN_POINTS = {"user-orders", "order-write", "mix", "mix@128", "user-orders@rate"}
WRITER_POINTS = {"order-write"}
# How many demo users are logged in: readers (fewer in smoke), and writers. Logins are
# slow on purpose (argon2id, a few at once per app worker): 2 at a time.
TOKEN_READERS = 64
TOKEN_READERS_SMOKE = 16
TOKEN_WRITERS = 16
LOGIN_CONCURRENCY = 2
# A sample is logged in again when it would expire within a point plus this margin.
TOKEN_MARGIN_S = 60.0

# Profile -> what it needs besides its variable file, and the points measured under it.
# "user-orders@rate" is the fixed-rate latency point (open loop, --rate requests/s): a
# database read that the peer, without a cache, can also serve at that rate (the mix's
# uncached popular read is beyond it). Order matters: neighbours share playbooks, so the
# run applies as few as it can.
FULL = {
    # The slow ones first (SLOW: their bounds are raised, in PgBouncer too), so that
    # PostgreSQL and PgBouncer are configured twice in a run, not three times: once for
    # them, once for the rest. static-app shares naive's and the peer's nginx (static files
    # via the app) and brings PgBouncer's shipped bounds back.
    "nocache": ["popular"],
    "blocking": ["user"],
    "noindex": ["category"],
    # Only the points its targets compare: a naive point costs as much as any other.
    "naive": ["popular", "user-orders"],
    "peer": ["mix", "user-orders@rate"],
    "static-app": ["static"],
    # Internal TLS off (Redis, and PostgreSQL and PgBouncer where the roles offer it): what
    # encrypting the hops behind nginx costs, on a cached read, a database read and the mix.
    "plaintext": ["popular", "user-orders", "mix"],
    "tuned": [
        "popular",
        "live",
        "user",
        "user-orders",
        "category",
        "order-write",
        "static",
        "mix",
        "mix@128",
        "user-orders@rate",
        "return",
        "static-1k",
    ],
    "hello": ["popular"],
    "workers1": ["popular"],
    "nopool": ["user"],
    "nopgbouncer": ["user"],
    "fullmodels": ["user-orders"],
    # Last: it differs from the shipped stack in app.yml only, the cheapest way back.
    "accesslog": ["popular"],
}
# Smoke: the first profile applies app.yml and web.yml (the state is unknown at the start);
# the second switches only the indexes, the cheapest profile to apply and to undo.
SMOKE = {
    "tuned": ["popular", "category", "user-orders@rate", "return"],
    "noindex": ["category"],
}
INDEXES_DROPPED = {"naive", "noindex"}
# Profiles that also get the category query measured at the database (pgbench).
DB_CATEGORY_POINT = {"tuned", "noindex"}
PEER = {"peer"}
# Profiles whose app connects without PgBouncer: PostgreSQL needs _base.yml's headroom.
DIRECT_DB = {"naive", "nopool", "nopgbouncer", "peer"}
# Profiles that change the data tier's own settings (db.yml, cache.yml): with none of them
# in the plan, the shipped settings stay and those playbooks are not applied.
DB_CHANGED = DIRECT_DB | {"plaintext"}
CACHE_CHANGED = {"plaintext"}
# Profiles built to be slow: their requests take seconds, so they also get _slow.yml's
# raised request bounds (the shipped ones would shed their requests with 503s).
SLOW = {"nocache", "blocking", "noindex", "naive", "peer"}
# Which playbook a variable belongs to, by name prefix. The app's request deadline is
# also read by nginx (its proxy timeouts follow it).
PLAYBOOK_OF_PREFIX = [
    ("postgresql_", "db"),
    ("pgbouncer_", "db"),
    ("redis_", "cache"),
    ("app_", "app"),
    ("app_request_timeout_seconds", "web"),
    ("nginx_", "web"),
]
PLAYBOOKS = {
    "db": "playbooks/db.yml",
    "cache": "playbooks/cache.yml",
    "app": "playbooks/app.yml",
    "web": "playbooks/web.yml",
}


def split_by_playbook(vars_: dict) -> dict[str, dict]:
    """A profile's variables, grouped by the playbooks that read them."""
    wanted: dict[str, dict] = {pb: {} for pb in PLAYBOOKS}
    for key, value in vars_.items():
        for prefix, pb in PLAYBOOK_OF_PREFIX:
            if key.startswith(prefix):
                wanted[pb][key] = value
    return wanted


# The stack CA's certificate on every host (roles/common, common_pki).
REDIS_TLS_CA = "/etc/ssl/stack/ca.crt"
REDIS_BENCH_USER = "bench-ceiling"
REDIS_BENCH_KEY = "bench:ceiling"
APP_SKIP_TAGS = "app_migrate,app_cleanup"
PGBENCH_SCRIPT = "/var/lib/postgresql/bench-pgbench.sql"
SMOKE_DATA = {
    "bench_users": 2000,
    "bench_products": 20000,
    "bench_orders": 5000,
    "bench_order_items": 20000,
}


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.t0 = time.monotonic()
        self.plan = SMOKE if args.smoke else FULL
        if args.profiles:
            wanted = args.profiles.split(",")
            unknown = set(wanted) - set(FULL)
            if unknown:
                sys.exit(f"unknown profile(s): {', '.join(sorted(unknown))}")
            self.plan = {p: FULL[p] for p in FULL if p in wanted}
        self.inventory = self._inventory()
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-"))
        self.logs = ROOT / ".cache" / "bench-logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        # What each playbook was last applied with (None: unknown, apply it).
        self.applied: dict[str, object] = {
            "db": None,
            "cache": None,
            "app": None,
            "web": None,
            "indexes": None,
            "peer": None,
        }
        self.steal_before = system.read_steal()
        self.failed_profiles: dict[str, str] = {}
        # The demo users' tokens (tokens.log_in_all) and when the first of them expires.
        self.login: dict | None = None
        self.script_data: wrk.Data | None = None

    # --- helpers -------------------------------------------------------------------------
    def log(self, message: str) -> None:
        elapsed = int(time.monotonic() - self.t0)
        print(f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {message}", flush=True)

    def _inventory(self) -> dict:
        out = subprocess.run(
            ["ansible-inventory", "-i", self.args.inventory, "--list"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return json.loads(out)

    def hosts(self, group: str) -> list[str]:
        return self.inventory.get(group, {}).get("hosts", [])

    def hostvar(self, host: str, name: str, default=None):
        return self.inventory["_meta"]["hostvars"].get(host, {}).get(name, default)

    def container(self, host: str) -> str:
        """make up names its containers <prefix>-<host>; Molecule names them <host>."""
        return f"{self.args.prefix}-{host}" if self.args.prefix else host

    def docker(
        self,
        host: str,
        *cmd: str,
        user: str | None = None,
        env_pass: dict | None = None,
        stdin: str | None = None,
        timeout: float = 600,
    ) -> subprocess.CompletedProcess:
        """docker exec; secrets in env_pass reach the command through `-e NAME` (no value on
        any command line): docker copies them from its own environment, set for it only."""
        argv = ["docker", "exec", "-i"]
        if user:
            argv += ["-u", user]
        env = dict(os.environ)
        for name, value in (env_pass or {}).items():
            argv += ["-e", name]
            env[name] = value
        argv += [self.container(host), *cmd]
        return subprocess.run(
            argv, input=stdin, capture_output=True, text=True, env=env, timeout=timeout, check=False
        )

    # --- profiles ------------------------------------------------------------------------
    def var_files(self, profile: str) -> list[str]:
        # Not in smoke: its points are short and light (noindex's category read stays far
        # below the shipped bounds on the smoke data), and _slow.yml would make noindex
        # re-apply db.yml, app.yml and web.yml twice (about 6 of the smoke's 8 minutes on CI)
        # where it should switch only the indexes.
        slow = profile in SLOW and not self.args.smoke
        return ["_base", *(["_slow"] if slow else []), profile]

    def profile_vars(self, profile: str) -> dict:
        merged = {}
        for name in self.var_files(profile):
            merged.update(yaml.safe_load((PROFILES_DIR / f"{name}.yml").read_text()) or {})
        merged["nginx_rate_limit_exempt"] = [f"{self.gateway}/32"]
        return merged

    def playbook(
        self, path: str, label: str, var_files: list[str], extra: dict, skip_tags: str = ""
    ) -> None:
        cmd = ["ansible-playbook", "-i", self.args.inventory, path]
        if skip_tags:
            cmd += ["--skip-tags", skip_tags]
        for f in var_files:
            cmd += ["-e", f"@{f}"]
        cmd += ["-e", json.dumps(extra)]
        logfile = self.logs / f"{label.replace(' ', '_').replace('/', '_')}.log"
        start = time.monotonic()
        with logfile.open("w") as out:
            rc = subprocess.run(
                cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=False
            ).returncode
        took = time.monotonic() - start
        if rc != 0:
            tail = "".join(logfile.read_text().splitlines(keepends=True)[-30:])
            raise RuntimeError(f"{label} failed (rc {rc}, {took:.0f} s); log {logfile}:\n{tail}")
        self.log(f"  applied {label} in {took:.0f} s")

    def gather_facts(self) -> None:
        """Every host's facts into the fact cache: a playbook for one group reads its
        peers' addresses and sizes from there (the repository's ansible.cfg caches them)."""
        start = time.monotonic()
        logfile = self.logs / "facts.log"
        with logfile.open("w") as out:
            rc = subprocess.run(
                ["ansible", "all", "-i", self.args.inventory, "-m", "ansible.builtin.setup"],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            ).returncode
        if rc != 0:
            raise RuntimeError(f"gathering facts failed (rc {rc}); log {logfile}")
        self.log(f"  gathered every host's facts in {time.monotonic() - start:.0f} s")

    def apply(self, profile: str) -> None:
        """Run only the playbooks whose variables differ from what is applied now."""
        vars_ = self.profile_vars(profile)
        files = [str(PROFILES_DIR / f"{name}.yml") for name in self.var_files(profile)]
        exempt = {"nginx_rate_limit_exempt": vars_["nginx_rate_limit_exempt"]}
        wanted = split_by_playbook(vars_)
        indexes = "absent" if profile in INDEXES_DROPPED else "present"
        peer = profile in PEER

        for tier, changed_by in (("db", DB_CHANGED), ("cache", CACHE_CHANGED)):
            if self.applied[tier] is None and not (set(self.plan) & changed_by):
                self.applied[tier] = wanted[tier]  # no profile here changes this tier
            if self.applied[tier] != wanted[tier]:
                self.playbook(PLAYBOOKS[tier], f"{profile} {tier}.yml", files, exempt)
                self.applied[tier] = wanted[tier]
        if self.applied.get("data") is None:
            data = {"bench_db": self.args.db_name, **(SMOKE_DATA if self.args.smoke else {})}
            self.playbook("bench/playbooks/data.yml", "data load", [], data)
            self.applied["data"] = True
        if self.applied["indexes"] != indexes:
            self.playbook(
                "bench/playbooks/indexes.yml",
                f"{profile} indexes {indexes}",
                [],
                {"bench_indexes_state": indexes, "bench_db": self.args.db_name},
            )
            self.applied["indexes"] = indexes
        if self.applied["peer"] is not False and not peer:
            if self.applied["peer"] is True:
                self.playbook(
                    "bench/playbooks/peer.yml",
                    f"{profile} peer absent",
                    files,
                    {**exempt, "bench_peer_state": "absent"},
                )
            self.applied["peer"] = False
        # The peer replaces the shop: the shop's own settings do not matter meanwhile.
        if not peer and self.applied["app"] != wanted["app"]:
            # Same release and schema: the migration and cleanup steps have nothing to do.
            self.playbook(PLAYBOOKS["app"], f"{profile} app.yml", files, exempt, APP_SKIP_TAGS)
            self.applied["app"] = wanted["app"]
        if self.applied["web"] != wanted["web"]:
            self.playbook(PLAYBOOKS["web"], f"{profile} web.yml", files, exempt)
            self.applied["web"] = wanted["web"]
        if peer and self.applied["peer"] is not True:
            self.playbook(
                "bench/playbooks/peer.yml",
                f"{profile} peer present",
                files,
                {**exempt, "bench_peer_state": "present"},
            )
            self.applied["peer"] = True

    # --- data the load needs ---------------------------------------------------------------
    def discover(self) -> None:
        self.gateway = system.network_gateway(self.args.network)
        self.web = system.container_address(self.container(self.hosts("web")[0]), self.args.network)
        self.base_url = f"https://{self.web}"
        self.db_host = self.hosts("db")[0]
        self.cache_host = self.hosts("cache")[0]
        names = [self.container(h) for h in self.inventory["_meta"]["hostvars"]]
        self.cpu = system.CpuMeter(names)
        # A run stopped while the peer ran leaves it running instead of the shop.
        app = self.hosts("app")[0]
        if (
            self.docker(app, "systemctl", "is-active", "--quiet", "shop-peer.service").returncode
            == 0
        ):
            self.applied["peer"] = True
        manifest = json.loads((ROOT / "app" / "static" / "manifest.json").read_text())
        self.static_path = f"/static/{manifest['app.css']}"

    def count_data(self) -> None:
        query = (
            "SELECT (SELECT max(id) FROM users), (SELECT max(id) FROM products), "
            "(SELECT count(DISTINCT category) FROM products WHERE category LIKE 'cat-%')"
        )
        out = self.docker(
            self.db_host, "psql", "-XAtq", "-d", self.args.db_name, "-c", query, user="postgres"
        )
        if out.returncode != 0:
            raise RuntimeError(f"cannot count the data: {out.stderr.strip()}")
        users, products, categories = (int(v or 0) for v in out.stdout.strip().split("|"))
        self.users, self.products, self.categories = users, products, max(categories, 1)
        # The seed's demo accounts, the only users that can log in: user<id>@example.com.
        demo = self.docker(
            self.db_host,
            "psql",
            "-XAtq",
            "-d",
            self.args.db_name,
            "-c",
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM users "
            "WHERE email = 'user' || id || '@example.com'",
            user="postgres",
        )
        if demo.returncode != 0:
            raise RuntimeError(f"cannot list the demo users: {demo.stderr.strip()}")
        demo_ids = [int(v) for v in demo.stdout.strip().split(",") if v]
        readers = TOKEN_READERS_SMOKE if self.args.smoke else TOKEN_READERS
        self.reader_ids, self.writer_ids = tokens.split_sample(demo_ids, readers, TOKEN_WRITERS)
        self.log(
            f"data: {users:,} users, {products:,} products, {categories} bench categories; "
            f"{len(demo_ids):,} demo users, {len(self.reader_ids)} read their orders, "
            f"{len(self.writer_ids)} place orders"
        )
        data = wrk.Data(users, self.categories, products)
        self.scripts = {}
        for kind in ("user", "category"):
            path = self.tmp / f"{kind}.lua"
            path.write_text(wrk.lua_script(kind, data))
            self.scripts[kind] = str(path)

    def prepare_tokens(self, profile: str, writers: bool, for_seconds: float) -> None:
        """Tokens for the points that send them, valid for for_seconds at least, written
        into their wrk scripts (in the runner's own temporary directory, 0700).

        The sample logs in again only when its tokens would expire first. The peer reads
        no header: it gets the same users with a placeholder instead of a token.
        """
        if profile in PEER:
            data = wrk.Data(
                self.users,
                self.categories,
                self.products,
                tuple((u, tokens.PLACEHOLDER) for u in self.reader_ids),
                tuple((u, tokens.PLACEHOLDER) for u in self.writer_ids),
            )
        else:
            now = time.monotonic()
            if (
                self.login is None
                or self.login["expires_at"] - now < for_seconds + TOKEN_MARGIN_S
                or (writers and not self.login["writers"])
            ):
                users = self.reader_ids + (self.writer_ids if writers else [])
                pairs, lifetime = tokens.log_in_all(self.base_url, users, LOGIN_CONCURRENCY)
                self.login = {
                    "readers": tuple(pairs[: len(self.reader_ids)]),
                    "writers": tuple(pairs[len(self.reader_ids) :]),
                    "expires_at": now + lifetime,
                }
                self.log(
                    f"  logged {len(users)} demo users in ({time.monotonic() - now:.1f} s; "
                    f"tokens for {lifetime} s)"
                )
            data = wrk.Data(
                self.users,
                self.categories,
                self.products,
                self.login["readers"],
                self.login["writers"],
            )
        if data != self.script_data:
            for kind in ("user-orders", "order-write", "mix"):
                if kind == "order-write" and not data.writers:
                    continue
                path = self.tmp / f"{kind}.lua"
                path.write_text(wrk.lua_script(kind, data, MIX))
                self.scripts[kind] = str(path)
            self.script_data = data

    # --- measuring -------------------------------------------------------------------------
    def wrk_point(self, endpoint: str, duration: float) -> dict:
        target, connections = ENDPOINTS[endpoint]
        script = None
        if target.startswith("script:"):
            script, path = self.scripts[target.split(":", 1)[1]], "/"
        elif target == "static":
            path = self.static_path
        else:
            path = target
        if self.args.smoke:
            connections = min(connections, 16)
        cmd = wrk.command(self.base_url + path, connections, duration, script, self.args.load_cpu)
        cpu0, steal0 = self.cpu.read(), system.read_steal()
        out = subprocess.run(
            cmd, capture_output=True, text=True, timeout=duration + 90, check=False
        )
        cpu1, steal1 = self.cpu.read(), system.read_steal()
        if out.returncode != 0:
            raise RuntimeError(f"wrk failed: {shlex.join(cmd)}\n{out.stderr}")
        result = wrk.parse(out.stdout)
        result["connections"] = connections
        if result["requests"] == 0:
            # Nothing finished: wrk counts neither the stuck requests nor their timeouts
            # (--timeout outlasts the point). Each connection held one: count them.
            result["errors"] += connections
        return self._with_cpu(result, cpu0, cpu1, steal0, steal1)

    def _with_cpu(self, result: dict, cpu0: dict, cpu1: dict, steal0, steal1) -> dict:
        used = {name: cpu1[name] - cpu0[name] for name in cpu0}
        result["cpu_ms"] = {name: us / 1000 for name, us in used.items()}
        result["cpu_ms_per_req"] = (
            sum(used.values()) / 1000 / result["requests"] if result["requests"] else None
        )
        result["steal_pct"] = system.steal_pct(steal0, steal1)
        result["host_busy_pct"] = system.busy_pct(steal0, steal1)
        return result

    def user_orders_request(self, rng: random.Random) -> tuple[str, dict[str, str]]:
        """A reader's own orders, with that reader's token."""
        assert self.script_data is not None, "prepare_tokens() first"
        user, token = rng.choice(self.script_data.readers)
        return f"/api/users/{user}/orders", {"Authorization": f"Bearer {token}"}

    def rate_point(self, duration: float) -> dict:
        rng = random.Random(13)  # noqa: S311 - picks request paths, nothing secret
        cpu0, steal0 = self.cpu.read(), system.read_steal()
        # The generator shares this process: pin it to the load core while it runs.
        affinity = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {self.args.load_cpu})
        try:
            raw = asyncio.run(
                openloop.run(
                    self.base_url,
                    lambda: self.user_orders_request(rng),
                    openloop.Schedule(self.args.rate, duration),
                )
            )
        finally:
            os.sched_setaffinity(0, affinity)
        cpu1, steal1 = self.cpu.read(), system.read_steal()
        lat = raw.pop("latencies_ms")
        result = {
            "requests": raw["requests"],
            "errors": raw["errors"],
            "non2xx": raw["non2xx"],
            "rps": len(lat) / duration,
            "rate": raw["rate"],
            "p50_ms": stats.percentile(lat, 50) if lat else None,
            "p99_ms": stats.percentile(lat, 99) if lat else None,
            "p999_ms": stats.percentile(lat, 99.9) if lat else None,
            "connections": raw["connections"],
        }
        return self._with_cpu(result, cpu0, cpu1, steal0, steal1)

    def prime(self) -> None:
        """One request for the popular list before any load: its cache miss (a second of
        aggregation at 1M rows) is paid once, not by every connection of the first point
        at the same time."""
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        url = f"{self.base_url}/api/products/popular?limit=10"
        try:
            with urllib.request.urlopen(url, timeout=120, context=context) as response:  # noqa: S310
                response.read()
        except OSError as exc:
            self.log(f"  priming the popular list failed: {exc}")

    def measure_profile(self, profile: str, points: list[str]) -> list[dict]:
        d, warm = self.args.duration, self.args.warmup
        self.prime()
        results = {ep: [] for ep in points}
        writers = bool(WRITER_POINTS & set(points))
        for round_ in range(self.args.rounds):
            for ep in points:
                if ep in TOKEN_POINTS:
                    # A rate point may run its grace period past its duration.
                    self.prepare_tokens(profile, writers, warm + d + 10)
                if round_ == 0 and warm > 0:
                    if ep == "user-orders@rate":
                        self.rate_point(warm)
                    else:
                        self.wrk_point(ep, warm)
                r = self.rate_point(d) if ep == "user-orders@rate" else self.wrk_point(ep, d)
                results[ep].append(r)
                self.log(
                    f"  {profile:11s} {ep:11s} round {round_ + 1}: {r['rps']:9.1f} req/s, "
                    f"p99 {r['p99_ms'] or 0:8.1f} ms, errors {r['errors']}, non-2xx {r['non2xx']}"
                )
        return [self._point(profile, ep, rounds) for ep, rounds in results.items()]

    @staticmethod
    def _point(profile: str, endpoint: str, rounds: list[dict]) -> dict:
        median = {
            k: stats.median(r.get(k) for r in rounds)
            for k in (
                "rps",
                "p50_ms",
                "p99_ms",
                "p999_ms",
                "cpu_ms_per_req",
                "steal_pct",
                "host_busy_pct",
            )
        }
        median["errors"] = sum(r["errors"] for r in rounds)
        median["non2xx"] = sum(r["non2xx"] for r in rounds)
        first = rounds[0]
        return {
            "profile": profile,
            "endpoint": endpoint,
            "connections": first.get("connections"),
            "rate": first.get("rate"),
            "rounds": rounds,
            "median": median,
        }

    # --- database-level points and ceilings outside HTTP -----------------------------------------
    def pgbench(self, script: str, clients: int, port: int, duration: float) -> tuple:
        """pgbench as the app's database user, pinned to the load core: (tps or None, note).
        The password reaches it through PGPASSWORD (docker exec -e NAME, no value on a
        command line)."""
        password = self.hostvar(self.db_host, "vault_db_app_password", "")
        # In the postgres user's home, which only it can write.
        self.docker(
            self.db_host, "sh", "-c", f"cat > {PGBENCH_SCRIPT}", stdin=script, user="postgres"
        )
        run = self.docker(
            self.db_host,
            "taskset",
            "-c",
            str(self.args.load_cpu),
            "pgbench",
            "-n",
            "-j1",
            f"-c{clients}",
            f"-T{int(duration)}",
            "-f",
            PGBENCH_SCRIPT,
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            "shop_app",
            self.args.db_name,
            user="postgres",
            env_pass={"PGPASSWORD": password},
            timeout=duration + 60,
        )
        value = parse_pgbench(run.stdout)
        note = "" if value else f"(failed: {(run.stderr or run.stdout).strip()[-200:]})"
        return value, note

    def category_db_point(self, profile: str) -> dict:
        """The category page's query at the database, through PgBouncer as the app sends it:
        where the index acts, without the app's per-request cost around it. One round."""
        script = (
            f"\\set c random(0, {self.categories - 1})\n"
            "SELECT id, name, category, price_cents FROM products "
            "WHERE category = 'cat-' || lpad(:c::text, 3, '0') AND id > 0 "
            "ORDER BY id LIMIT 21;\n"
        )
        cpu0, steal0 = self.cpu.read(), system.read_steal()
        tps, note = self.pgbench(script, 4, 6432, self.args.duration)
        cpu1, steal1 = self.cpu.read(), system.read_steal()
        if tps is None:
            raise RuntimeError(f"pgbench of the category query failed {note}")
        requests = int(tps * self.args.duration)
        result = {"requests": requests, "errors": 0, "non2xx": 0, "rps": tps, "connections": 4}
        result = self._with_cpu(result, cpu0, cpu1, steal0, steal1)
        self.log(f"  {profile:11s} category@db (pgbench, 4 clients): {tps:9.1f} tps")
        point = self._point(profile, "category@db", [result])
        point["tool"] = "pgbench"
        return point

    def ceilings(self) -> list[dict]:
        d = max(2.0, self.args.duration)
        script = (
            f"\\set id random(1, {self.products})\n"
            "SELECT id, name, category, price_cents FROM products WHERE id = :id;\n"
        )
        out = []
        for name, port in (
            ("pgbench -S-like, direct", 5432),
            ("pgbench -S-like, via PgBouncer", 6432),
        ):
            value, note = self.pgbench(script, 16, port, d)
            out.append(
                {
                    "name": name,
                    "value": value,
                    "unit": "tps, 16 clients, primary-key read",
                    "note": note,
                }
            )
            self.log(f"  ceiling {name}: {value or 0:,.0f} tps {note}")
        out.append(self.redis_ceiling(d))
        return out

    def redis_tls(self) -> list[str]:
        """redis-cli's and redis-benchmark's TLS options: Redis serves only TLS when the
        redis role's redis_tls_enabled is on (the default), verified by the stack CA. A
        profile that switched it (plaintext) wins over the inventory."""
        applied = self.applied["cache"] if isinstance(self.applied["cache"], dict) else {}
        default = self.hostvar(self.cache_host, "redis_tls_enabled", True)
        if not applied.get("redis_tls_enabled", default):
            return []
        return ["--tls", "--cacert", REDIS_TLS_CA]

    def redis_cli(self, *command: str) -> subprocess.CompletedProcess:
        """redis-cli as the admin user; it reads the password from REDISCLI_AUTH."""
        return self.docker(
            self.cache_host,
            "redis-cli",
            "--no-auth-warning",
            *self.redis_tls(),
            "-h",
            "127.0.0.1",
            "--user",
            self.hostvar(self.cache_host, "redis_admin_user", "admin"),
            *command,
            env_pass={
                "REDISCLI_AUTH": self.hostvar(self.cache_host, "vault_redis_admin_password", "")
            },
        )

    def redis_ceiling(self, d: float) -> dict:
        """redis-benchmark reads no password from the environment (Redis 7.0: only
        redis-cli reads REDISCLI_AUTH), and one on its command line would show in ps. So
        it logs in as a passwordless user that may only GET the one key bench:ceiling,
        created (in memory, never saved to the ACL file) for the seconds it runs."""
        name = "redis-benchmark GET"
        setup = self.redis_cli(
            "ACL",
            "SETUSER",
            REDIS_BENCH_USER,
            "reset",
            "on",
            "nopass",
            f"~{REDIS_BENCH_KEY}",
            "+get",
        )
        self.redis_cli("SET", REDIS_BENCH_KEY, "xyz")
        try:
            run = self.docker(
                self.cache_host,
                "taskset",
                "-c",
                str(self.args.load_cpu),
                "redis-benchmark",
                *self.redis_tls(),
                "-h",
                "127.0.0.1",
                "--user",
                REDIS_BENCH_USER,
                # Not a secret: the user has nopass, but redis-benchmark sends AUTH
                # with a user name only when it has a password too.
                "-a",
                "nopass",
                "-n",
                str(int(40000 * d)),
                "-c",
                "50",
                "--csv",
                "GET",
                REDIS_BENCH_KEY,
                timeout=d * 10 + 60,
            )
        finally:
            self.redis_cli("ACL", "DELUSER", REDIS_BENCH_USER)
            self.redis_cli("DEL", REDIS_BENCH_KEY)
        value = parse_redis_benchmark(run.stdout)
        why = (setup.stdout + setup.stderr + run.stderr + run.stdout).strip()[-200:]
        note = "" if value else f"(failed: {why})"
        self.log(f"  ceiling {name}: {value or 0:,.0f} req/s {note}")
        return {"name": name, "value": value, "unit": "req/s, 50 clients", "note": note}

    # --- the run -----------------------------------------------------------------------------
    def estimate(self) -> float:
        d, r, w = self.args.duration, self.args.rounds, self.args.warmup
        points = sum(len(p) for p in self.plan.values())
        applies = len(self.plan) + 1
        return points * (d * r + w + 1) + applies * 40 + (3 * d + 20 if "tuned" in self.plan else 0)

    def run(self) -> dict:
        self.discover()
        self.log(
            f"plan: {', '.join(self.plan)}; about {self.estimate() / 60:.0f} min "
            f"(applying a profile ~40 s); load via {self.base_url}, "
            f"nginx limit_req exempts {self.gateway}/32"
        )
        points, ceilings = [], []
        if not self.args.no_apply:
            self.gather_facts()
        try:
            for profile, eps in self.plan.items():
                self.log(f"profile {profile}")
                if not self.args.no_apply:
                    try:
                        self.apply(profile)
                    except RuntimeError as exc:
                        # Its points are missing and the run fails, but the others still
                        # get measured. What the failed run changed is unknown now.
                        self.log(f"  profile {profile} NOT applied: {exc}")
                        self.failed_profiles[profile] = str(exc).splitlines()[0]
                        self.applied = dict.fromkeys(self.applied) | {"data": True}
                        continue
                if not hasattr(self, "users"):
                    self.count_data()
                try:
                    points += self.measure_profile(profile, eps)
                    if profile in DB_CATEGORY_POINT:
                        points.append(self.category_db_point(profile))
                    if profile == "tuned":
                        ceilings = self.ceilings()
                except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
                    self.log(f"  profile {profile} NOT measured: {exc}")
                    self.failed_profiles[profile] = f"measuring failed: {str(exc).splitlines()[0]}"
        finally:
            # The scripts hold tokens: nothing of them outlives the run.
            shutil.rmtree(self.tmp, ignore_errors=True)
            if not self.args.no_apply and not self.args.keep_state:
                self.log("back to the tuned profile")
                try:
                    self.apply("tuned")
                except RuntimeError as exc:  # report it, but keep the first failure's
                    self.log(f"could not return to tuned: {exc}")
        # The report lists the shipped stack first, whatever order the run took.
        points.sort(key=lambda point: point["profile"] != "tuned")
        return self.result(points, ceilings)

    def result(self, points: list[dict], ceilings: list[dict]) -> dict:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        rate = report.error_rate(points)
        return {
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "commit": commit or "unknown",
            "command": shlex.join(["bench/run.py", *sys.argv[1:]]),
            "mode": "smoke" if self.args.smoke else "full",
            "settings": {
                "duration_s": self.args.duration,
                "rounds": self.args.rounds,
                "warmup_s": self.args.warmup,
                "rate": self.args.rate,
                "load_cpu": self.args.load_cpu,
                "inventory": self.args.inventory,
                "prefix": self.args.prefix,
                "cpus": os.cpu_count(),
            },
            "profiles": list(self.plan),
            "containers": sorted(self.cpu.files),
            "rate_limit": (
                f"nginx_rate_limit_exempt: [{self.gateway}/32] in every profile: "
                "the Docker host's address on the stack network gets an empty "
                "limit_req key, so nginx does not count its requests"
            ),
            "steal_pct": system.steal_pct(self.steal_before, system.read_steal()),
            "points": points,
            "ceilings": ceilings,
            "ratios": report.ratios(points),
            "error_rate": rate,
            "failed_profiles": self.failed_profiles,
            "failed": rate > report.ERROR_BUDGET or bool(self.failed_profiles),
        }


def parse_pgbench(text: str) -> float | None:
    for line in text.splitlines():
        if line.startswith("tps = "):
            return float(line.split()[2])
    return None


def parse_redis_benchmark(text: str) -> float | None:
    for line in text.splitlines():
        fields = [f.strip('"') for f in line.split(",")]
        if fields and fields[0].startswith("GET") and len(fields) > 1:
            return float(fields[1])
    return None


def write_outputs(result: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{result['date']}-{result['commit']}"
    if not result["failed"]:
        report.render_chart(result, f"{stem}.png")
        result["chart"] = f"{stem.name}.png"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    stem.with_suffix(".md").write_text(report.render_markdown(result))
    return stem


def check_outputs(stem: Path) -> None:
    """The smoke test's proof that the report parses: JSON loads, the table is there."""
    data = json.loads(stem.with_suffix(".json").read_text())
    assert data["points"], "no points in the report"
    assert all(p["median"]["rps"] is not None for p in data["points"]), "a point without a result"
    md = stem.with_suffix(".md").read_text()
    assert "| comparison | measured | target | verdict |" in md, "no ratio table"
    if not data["failed"]:
        assert stem.with_suffix(".png").stat().st_size > 0, "empty chart"


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--smoke", action="store_true", help="tuned and noindex, short points, under 3 minutes"
    )
    p.add_argument("--inventory", default="inventories/local", help="inventory of the stack")
    p.add_argument(
        "--prefix",
        default="stack",
        help="container names: <prefix>-<host> (stack), or <host> when empty (Molecule)",
    )
    p.add_argument("--network", default="stack-local", help="Docker network of the stack")
    p.add_argument("--db-name", default="shop")
    p.add_argument("--profiles", help="comma-separated subset of the full plan")
    p.add_argument("--duration", type=float, help="seconds per point (10; smoke 2)")
    p.add_argument("--warmup", type=float, help="discarded warm-up per point (1)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (3; smoke 1)")
    p.add_argument(
        "--rate", type=float, help="fixed request rate of the latency point (100/s; smoke 50)"
    )
    p.add_argument("--load-cpu", type=int, default=1, help="the one core the load generator uses")
    p.add_argument("--no-apply", action="store_true", help="measure the stack as it is")
    p.add_argument("--keep-state", action="store_true", help="do not return to tuned at the end")
    p.add_argument("--out", help="output directory (bench/results; smoke .cache/bench-smoke)")
    args = p.parse_args()
    # ansible-playbook and friends from the venv this runs in, as `make` puts them first.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    smoke = args.smoke
    args.duration = args.duration or (2.0 if smoke else 10.0)
    args.warmup = args.warmup if args.warmup is not None else 1.0
    args.rounds = args.rounds or (1 if smoke else 3)
    args.rate = args.rate or (50.0 if smoke else 100.0)
    out_dir = (
        Path(args.out) if args.out else ROOT / (".cache/bench-smoke" if smoke else "bench/results")
    )

    runner = Runner(args)
    result = runner.run()
    stem = write_outputs(result, out_dir)
    check_outputs(stem)
    runner.log(f"wrote {stem}.json, .md{'' if result['failed'] else ', .png'}")
    print(stem.with_suffix(".md").read_text().split("## Points")[0])
    if result["failed"]:
        runner.log(f"FAILED: error rate {result['error_rate'] * 100:.3f}% > 0.1%")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
