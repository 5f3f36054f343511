"""Real PostgreSQL and PgBouncer servers for the tests, started from Debian's binaries.

PostgreSQL refuses to run as root, and CI runs as root: there the servers run
as the `postgres` system user (created by Debian's postgresql package) through
runuser. As any other user they run as that user.
"""

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

SERVER_USER = "postgres"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen | None = None, tries: int = 300) -> None:
    for _ in range(tries):
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


def pg_bin_dir() -> Path:
    """PostgreSQL's server binaries are not on PATH on Debian: find them."""
    if configured := os.environ.get("SHOP_TEST_PG_BIN"):
        return Path(configured)
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name)
    )
    if candidates:
        return candidates[-1].parent
    if pg_ctl := shutil.which("pg_ctl"):
        return Path(pg_ctl).parent
    raise RuntimeError("PostgreSQL server binaries not found; apt-get install postgresql")


def pgbouncer_bin() -> str | None:
    return shutil.which("pgbouncer") or next(
        (str(p) for p in [Path("/usr/sbin/pgbouncer")] if p.exists()), None
    )


def as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", SERVER_USER, "--", *command]
    return command


def _server_owned_tempdir(prefix: str) -> Path:
    # Not pytest's tmp_path: its parent is private to root, and the server user
    # must be able to reach its files.
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        shutil.chown(path, SERVER_USER, SERVER_USER)
    return path


@dataclass
class PostgresServer:
    port: int
    base: Path
    user: str = "postgres"
    # What pg_ctl needs to stop and start the server again (fault tests).
    pg_ctl: list[str] = field(default_factory=list)
    options: str = ""

    def stop_server(self, mode: str = "fast") -> None:
        """Stops the server, as `systemctl stop` would (fast: sessions are terminated)."""
        subprocess.run(
            as_server_user([*self.pg_ctl, "-m", mode, "-w", "stop"]),
            check=True,
            capture_output=True,
        )

    def start_server(self) -> None:
        subprocess.run(
            as_server_user(
                [*self.pg_ctl, "-o", self.options, "-l", str(self.base / "log"), "-w", "start"]
            ),
            check=True,
            capture_output=True,
        )

    def url(self, database: str, *, port: int | None = None) -> str:
        return f"postgresql+asyncpg://{self.user}@127.0.0.1:{port or self.port}/{database}"

    def execute(self, *statements: str, database: str = "postgres") -> None:
        async def run() -> None:
            conn = await asyncpg.connect(
                host="127.0.0.1", port=self.port, user=self.user, database=database
            )
            try:
                for statement in statements:
                    await conn.execute(statement)
            finally:
                await conn.close()

        asyncio.run(run())


def start_postgres() -> tuple[PostgresServer, Callable[[], None]]:
    bin_dir = pg_bin_dir()
    base = _server_owned_tempdir("shop-pg-")
    data = base / "data"
    port = free_port()
    subprocess.run(
        as_server_user(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ]
        ),
        check=True,
        capture_output=True,
    )
    # Durability settings off: a test server that crashes is thrown away anyway.
    options = (
        f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(data)]
    server = PostgresServer(port=port, base=base, pg_ctl=pg_ctl, options=options)
    server.start_server()

    def stop() -> None:
        subprocess.run(
            as_server_user([*pg_ctl, "-m", "immediate", "stop"]),
            check=False,
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)

    return server, stop


def start_pgbouncer(
    postgres: PostgresServer, settings: str = "", port: int | None = None
) -> tuple[int, Callable[[], None]]:
    """PgBouncer in transaction mode, with fewer server connections than the app
    opens, so clients really share server connections between transactions.
    `settings`: more lines for its [pgbouncer] section; `port`: where it listens (a
    free one by default)."""
    binary = pgbouncer_bin()
    if binary is None:
        raise RuntimeError("pgbouncer not found; apt-get install pgbouncer")
    base = _server_owned_tempdir("shop-pgbouncer-")
    port = port or free_port()
    (base / "userlist.txt").write_text(f'"{postgres.user}" ""\n')
    (base / "pgbouncer.ini").write_text(
        f"""[databases]
* = host=127.0.0.1 port={postgres.port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {base}/userlist.txt
pool_mode = transaction
default_pool_size = 2
max_client_conn = 200
logfile = {base}/pgbouncer.log
{settings}"""
    )
    if os.geteuid() == 0:
        for name in ("userlist.txt", "pgbouncer.ini"):
            shutil.chown(base / name, SERVER_USER, SERVER_USER)
    # -u: PgBouncer drops root itself, and gets our signals directly.
    command = [binary, str(base / "pgbouncer.ini")]
    if os.geteuid() == 0:
        command[1:1] = ["-u", SERVER_USER]
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, process)

    def stop() -> None:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(base, ignore_errors=True)

    return port, stop


@dataclass
class RedisProcess:
    """A redis-server (or a Sentinel: redis-server --sentinel) on loopback."""

    port: int
    process: subprocess.Popen

    def kill(self) -> None:
        """SIGKILL: the host dies, nothing is flushed or handed over."""
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def start_redis_process(
    base: Path, name: str, config: str, *, sentinel: bool = False
) -> RedisProcess:
    """redis-server on base/name.conf: `config` plus the port, loopback, its directory and
    log, and no persistence. With `sentinel`, a Sentinel (redis-server --sentinel), which
    rewrites that file with its state."""
    port = free_port()
    path = base / f"{name}.conf"
    common = f"port {port}\nbind 127.0.0.1\ndir {base}\nlogfile {base}/{name}.log\n"
    storage = "" if sentinel else 'save ""\nappendonly no\n'
    path.write_text(common + storage + config)
    command = ["redis-server", str(path), *(["--sentinel"] if sentinel else [])]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process)
    except RuntimeError as exc:
        process.kill()
        log = base / f"{name}.log"
        tail = log.read_text().splitlines()[-5:] if log.exists() else []
        raise RuntimeError(f"{name}: {exc}; its log ends: {tail}") from exc
    return RedisProcess(port, process)
