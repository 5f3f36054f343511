"""TLS to PgBouncer and PostgreSQL (issue 16): verify-full when SHOP_DB_TLS_CA_FILE is set.

The end-to-end tests run a PgBouncer that requires TLS (client_tls_sslmode = require)
with a certificate for 127.0.0.1 only, signed by a throwaway CA, as roles/pgbouncer
configures it with the stack CA.
"""

import asyncio
import os
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text

from shop import migrations
from shop.core.config import Settings
from shop.core.db import (
    _asyncpg_socket,
    bounded_connect_args,
    create_blocking_engine,
    create_engine,
    tls_connect_args,
    tls_context,
)
from shop.seed import asyncpg_dsn, seed
from tests.conftest import make_settings
from tests.servers import SERVER_USER, PostgresServer, _server_owned_tempdir, start_pgbouncer


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def _make_ca(directory: Path, name: str) -> Path:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", directory / f"{name}.key", "-out", directory / f"{name}.crt",
        "-subj", f"/CN={name}", "-days", "2",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return directory / f"{name}.crt"


@dataclass
class TlsBouncer:
    port: int
    ca: Path
    other_ca: Path

    def url(self, database: str, host: str = "127.0.0.1") -> str:
        return f"postgresql+asyncpg://postgres@{host}:{self.port}/{database}"


@pytest.fixture(scope="session")
def tls_bouncer(postgres: PostgresServer, migrated_template: str) -> Iterator[TlsBouncer]:
    """PgBouncer requiring TLS, its certificate naming IP 127.0.0.1 only."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    pki = _server_owned_tempdir("shop-pki-")
    ca = _make_ca(pki, "ca")
    other_ca = _make_ca(pki, "other-ca")
    (pki / "ext").write_text(
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature\n"
    )
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", pki / "host.key", "-out", pki / "host.csr", "-subj", "/CN=db",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", pki / "host.csr", "-CA", ca, "-CAkey", pki / "ca.key",
        "-CAcreateserial", "-out", pki / "host.crt", "-days", "2", "-extfile", pki / "ext",
    )  # fmt: skip
    if os.geteuid() == 0:
        for path in pki.iterdir():
            shutil.chown(path, SERVER_USER, SERVER_USER)
    port, stop = start_pgbouncer(
        postgres,
        settings=f"""client_tls_sslmode = require
client_tls_key_file = {pki}/host.key
client_tls_cert_file = {pki}/host.crt
client_tls_ca_file = {ca}
client_tls_protocols = tlsv1.2,tlsv1.3
""",
    )
    try:
        yield TlsBouncer(port=port, ca=ca, other_ca=other_ca)
    finally:
        stop()
        shutil.rmtree(pki, ignore_errors=True)


def test_db_tls_off_by_default_no_ssl_argument() -> None:
    settings = Settings(_env_file=None)
    assert settings.db_tls_ca_file is None
    assert tls_context(settings) is None
    assert "ssl" not in bounded_connect_args(settings)
    assert migrations.alembic_config(settings).attributes["tls_connect_args"] == {}


def test_db_tls_ca_file_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_DB_TLS_CA_FILE", "/etc/ssl/stack/ca.crt")
    assert Settings(_env_file=None).db_tls_ca_file == Path("/etc/ssl/stack/ca.crt")
    # An inventory that switches TLS off may leave the variable empty.
    monkeypatch.setenv("SHOP_DB_TLS_CA_FILE", "")
    assert Settings(_env_file=None).db_tls_ca_file is None


def _assert_verify_full(context: object) -> None:
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_db_tls_context_verifies_certificate_and_name(tls_bouncer: TlsBouncer) -> None:
    settings = Settings(_env_file=None, db_tls_ca_file=tls_bouncer.ca)
    _assert_verify_full(tls_context(settings))
    # The app's engine and the migrations' engine both get it.
    _assert_verify_full(bounded_connect_args(settings)["ssl"])
    _assert_verify_full(tls_connect_args(settings)["ssl"])
    _assert_verify_full(migrations.alembic_config(settings).attributes["tls_connect_args"]["ssl"])


def _tls_settings(
    tls_bouncer: TlsBouncer, database: str, ca: Path, host: str = "127.0.0.1", **overrides: object
) -> Settings:
    return make_settings(
        tls_bouncer.url(database, host),
        "redis://127.0.0.1:1/0",
        pgbouncer=True,
        db_tls_ca_file=ca,
        **overrides,
    )


async def test_db_tls_app_engine_connects_with_verify_full(
    tls_bouncer: TlsBouncer, database: str
) -> None:
    engine = create_engine(_tls_settings(tls_bouncer, database, tls_bouncer.ca))
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
            raw = await conn.get_raw_connection()
            transport = raw.driver_connection._transport  # type: ignore[union-attr]
            ssl_object = transport.get_extra_info("ssl_object")
            assert ssl_object is not None, "the connection is not encrypted"
            assert ssl_object.version() in ("TLSv1.2", "TLSv1.3")
            # The socket under TLS still gets the keepalive and user timeout options.
            sock = _asyncpg_socket(raw)
            assert sock is not None
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    finally:
        await engine.dispose()


async def test_db_tls_statement_bound_cancels_on_the_server_through_tls(
    tls_bouncer: TlsBouncer, postgres: PostgresServer, database: str
) -> None:
    """asyncpg sends its cancel request over TLS too (PgBouncer would refuse a cleartext
    one): a statement past its bound stops waiting on the server."""
    settings = _tls_settings(
        tls_bouncer, database, tls_bouncer.ca, db_statement_timeout_seconds=0.5
    )
    engine = create_engine(settings)
    locker = await asyncpg.connect(
        host="127.0.0.1", port=postgres.port, user=postgres.user, database=database
    )
    try:
        async with locker.transaction():
            await locker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(Exception):  # noqa: B017, PT011 - TimeoutError, maybe wrapped
                async with engine.connect() as conn:
                    await conn.execute(text("SELECT count(*) FROM users"))
            waiting = -1
            for _ in range(40):
                waiting = await locker.fetchval(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = $1 AND wait_event_type = 'Lock'",
                    database,
                )
                if waiting == 0:
                    break
                await asyncio.sleep(0.05)
            assert waiting == 0, "the statement still waits on the server: its cancel was lost"
    finally:
        await locker.close()
        await engine.dispose()


@pytest.mark.parametrize(
    ("which_ca", "host", "error"),
    [
        # A certificate from another CA: the chain does not verify.
        ("other_ca", "127.0.0.1", "certificate verify failed"),
        # The right CA, but a name the certificate does not hold (it names 127.0.0.1 only).
        ("ca", "localhost", "certificate verify failed"),
    ],
)
async def test_db_tls_app_engine_refuses_an_unverified_server(
    tls_bouncer: TlsBouncer, database: str, which_ca: str, host: str, error: str
) -> None:
    ca = getattr(tls_bouncer, which_ca)
    engine = create_engine(_tls_settings(tls_bouncer, database, ca, host))
    try:
        with pytest.raises(Exception, match=error):
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
    finally:
        await engine.dispose()


async def test_db_tls_cleartext_client_refused_by_pgbouncer(
    tls_bouncer: TlsBouncer, database: str
) -> None:
    with pytest.raises(Exception, match="SSL required"):
        await asyncpg.connect(asyncpg_dsn(tls_bouncer.url(database)), ssl=False)


def test_db_tls_migrations_use_verify_full(tls_bouncer: TlsBouncer, database: str) -> None:
    url = tls_bouncer.url(database)
    # The right CA: alembic reads the current revision through the TLS PgBouncer.
    migrations.current(_tls_settings(tls_bouncer, database, tls_bouncer.ca), url=url)
    # Another CA: refused, so the migration engine verifies (asyncpg's default would not).
    with pytest.raises(Exception, match="certificate verify failed"):
        migrations.current(_tls_settings(tls_bouncer, database, tls_bouncer.other_ca), url=url)


async def test_db_tls_seed_uses_the_context(tls_bouncer: TlsBouncer, database: str) -> None:
    url = tls_bouncer.url(database)
    wrong = tls_context(_tls_settings(tls_bouncer, database, tls_bouncer.other_ca))
    with pytest.raises(Exception, match="certificate verify failed"):
        await seed(url, users=1, orders=0, products=1, pgbouncer=True, tls=wrong)
    right = tls_context(_tls_settings(tls_bouncer, database, tls_bouncer.ca))
    result = await seed(url, users=1, orders=0, products=1, pgbouncer=True, tls=right)
    assert not result.skipped


def test_db_tls_blocking_engine_uses_libpq_verify_full(
    tls_bouncer: TlsBouncer, database: str
) -> None:
    engine = create_blocking_engine(_tls_settings(tls_bouncer, database, tls_bouncer.ca))
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
            pgconn = conn.connection.dbapi_connection.pgconn  # type: ignore[union-attr]
            assert pgconn.ssl_in_use, "the connection is not encrypted"
    finally:
        engine.dispose()
    wrong = create_blocking_engine(_tls_settings(tls_bouncer, database, tls_bouncer.other_ca))
    try:
        with pytest.raises(Exception, match="certificate verify failed"), wrong.connect():
            pass
    finally:
        wrong.dispose()
