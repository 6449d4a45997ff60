"""TLS from the pool to the database, against a private MariaDB of this module's own started with TLS.

One server for the whole module (the session's shared one stays plaintext and untouched), listening on
three loopback addresses with one certificate: 127.0.0.1 and 127.0.0.61 are among its names, 127.0.0.62
is not, so a host name check can pass and fail against the same server. ``require_secure_transport`` is
turned on and off with SET GLOBAL, not by a restart.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from devtools.mariadb import MariaDBServer, ServerBinaryMissing, ServerTls
from prefork.pool import Pool, PoolConnectError, connect_once
from tests.certs import Pki, make_pki
from tests.helpers import query
from tests.server import ServerProcess, connect, read_lines
from tests.test_cli import one_error_line, run_cli

pytestmark = pytest.mark.timeout(60)

NAMED, UNNAMED = "127.0.0.61", "127.0.0.62"  # in the server's certificate, and not


@pytest.fixture(scope="module")
def db_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("db-pki"), server_names=(f"IP:{NAMED}",))


@pytest.fixture(scope="module")
def tls_db(tmp_path_factory: pytest.TempPathFactory, db_pki: Pki) -> Iterator[MariaDBServer]:
    """The module's MariaDB with TLS (the test CA checks client certificates too), on three addresses."""
    server = MariaDBServer(
        tmp_path_factory.mktemp("mariadb-tls"),
        tls=ServerTls(db_pki.ca, db_pki.server, db_pki.server_key),
        bind=f"127.0.0.1,{NAMED},{UNNAMED}",
    )
    try:
        server.start()
    except ServerBinaryMissing as exc:
        pytest.fail(f"{exc} (the tests need a private MariaDB server)", pytrace=False)
    yield server
    server.kill()


def tls_dsn(db: MariaDBServer, hosts: tuple[str, ...] = ("127.0.0.1",), **options: str | Path) -> str:
    """The DSN of the server's test database at ``hosts`` with the given ``ssl_*`` options."""
    where = ",".join(f"{host}:{db.port}" for host in hosts)
    query_text = "&".join(f"{name}={quote(str(value), safe='/')}" for name, value in options.items())
    return f"mysql://root@{where}/test" + (f"?{query_text}" if query_text else "")


def tls_status(conn) -> dict[str, str]:
    """The connection's own Ssl_version and Ssl_cipher, as the server sees them (empty: plaintext)."""
    cur = conn.cursor()
    cur.execute("SHOW SESSION STATUS WHERE Variable_name IN ('Ssl_version', 'Ssl_cipher')")
    return {name: value for name, value in cur.fetchall()}


@contextlib.contextmanager
def secure_transport_required(db: MariaDBServer) -> Iterator[None]:
    db.set_global("require_secure_transport", "ON")
    try:
        yield
    finally:
        db.set_global("require_secure_transport", "OFF")


def test_the_pool_speaks_tls_with_one_context_for_its_hosts(tls_db, db_pki):
    dsn = tls_dsn(tls_db, ("127.0.0.1", NAMED), ssl_ca=db_pki.ca)  # no ssl_mode: a CA means verify_identity
    pool = Pool.from_dsn(dsn, max_size=2, timeout=10)
    try:
        with pool.connection() as a, pool.connection() as b:
            for conn in (a, b):
                status = tls_status(conn)
                assert status["Ssl_version"].startswith("TLSv1.") and status["Ssl_cipher"], status
            assert a.ctx is b.ctx and a.ctx.check_hostname  # the files read once per pool, not per connect
    finally:
        pool.close()
    conn = connect_once(tls_dsn(tls_db, ssl_mode="REQUIRED"))  # TLS without checking the certificate
    try:
        assert tls_status(conn)["Ssl_cipher"] and not conn.ctx.check_hostname
    finally:
        conn.close()


def test_a_client_certificate_logs_in_a_user_who_must_show_one(tls_db, db_pki):
    tls_db.execute("CREATE USER IF NOT EXISTS 'certuser'@'%' REQUIRE SUBJECT '/CN=client1'")
    tls_db.execute("GRANT ALL ON test.* TO 'certuser'@'%'")
    dsn = tls_dsn(tls_db, ssl_ca=db_pki.ca, ssl_cert=db_pki.client, ssl_key=db_pki.client_key)
    conn = connect_once(dsn.replace("root@", "certuser@"))
    try:
        cur = conn.cursor()
        cur.execute("SELECT CURRENT_USER()")
        assert cur.fetchone()[0] == "certuser@%"
    finally:
        conn.close()
    with pytest.raises(PoolConnectError, match="Access denied for user 'certuser'"):
        connect_once(tls_dsn(tls_db, ssl_ca=db_pki.ca).replace("root@", "certuser@"))  # no certificate shown


def test_ingest_over_tls_while_the_server_refuses_plaintext(tls_db, db_pki):
    """With require_secure_transport on: `prefork check` of a plaintext DSN names the host and the reason;
    a real master whose --dsn carries the TLS options stores every line it answers OK."""
    table = "tls_ingest"
    plain = tls_dsn(tls_db)
    secure = tls_dsn(tls_db, ssl_mode="verify_identity", ssl_ca=db_pki.ca)
    query(secure, f"DROP TABLE IF EXISTS `{table}`")
    with secure_transport_required(tls_db):
        line = one_error_line(run_cli("check", "--dsn", plain, "--table", table))
        assert f"127.0.0.1:{tls_db.port}" in line and "requires secure transport" in line, line
        result = run_cli("check", "--dsn", secure, "--table", table)
        assert result.returncode == 0 and "answers (TLSv1." in result.stdout, result.stdout + result.stderr
        assert "ssl_mode=verify_identity), table" in result.stdout, result.stdout
        with ServerProcess(["--dsn", secure, "--table", table, "--workers", "1"]) as srv:
            lines = [f"over tls {i}" for i in range(5)]
            with connect(srv.port) as sock:
                sock.sendall("".join(f"{text}\n" for text in lines).encode())
                sock.shutdown(socket.SHUT_WR)
                assert read_lines(sock, len(lines)) == [b"OK"] * len(lines)
        stored = [row[0] for row in query(secure, f"SELECT payload FROM `{table}` ORDER BY id")]
    assert stored == lines
    query(secure, f"DROP TABLE `{table}`")


def test_check_with_another_ca_names_the_host_and_why(tls_db, db_pki):
    line = one_error_line(run_cli("check", "--dsn", tls_dsn(tls_db, ssl_ca=db_pki.other_ca)))
    assert f"127.0.0.1:{tls_db.port}" in line and "certificate verify failed" in line, line


def test_verify_identity_checks_the_name_the_dsn_gives(tls_db, db_pki):
    with pytest.raises(PoolConnectError) as info:
        connect_once(tls_dsn(tls_db, (UNNAMED,), ssl_mode="verify_identity", ssl_ca=db_pki.ca))
    message = str(info.value)
    assert f"{UNNAMED}:{tls_db.port}" in message and f"not valid for '{UNNAMED}'" in message, message
    for host, mode in ((UNNAMED, "verify_ca"), (NAMED, "verify_identity")):
        conn = connect_once(tls_dsn(tls_db, (host,), ssl_mode=mode, ssl_ca=db_pki.ca))
        try:
            assert tls_status(conn)["Ssl_cipher"]
        finally:
            conn.close()


def test_each_host_of_a_multi_host_dsn_is_checked_against_its_own_name(tls_db, db_pki):
    """The same server under two addresses: the first is not in its certificate, the second is."""
    dsn = tls_dsn(tls_db, (UNNAMED, NAMED), ssl_ca=db_pki.ca)
    pool = Pool.from_dsn(dsn, max_size=1, timeout=10)
    try:
        with pool.connection() as conn:
            assert conn.host == NAMED and tls_status(conn)["Ssl_cipher"]
    finally:
        pool.close()
    with pytest.raises(PoolConnectError) as info:  # every host tried, each with its reason
        connect_once(tls_dsn(tls_db, (UNNAMED, NAMED), ssl_ca=db_pki.other_ca))
    message = str(info.value)
    for host in (UNNAMED, NAMED):
        assert f"{host}:{tls_db.port}: (2003" in message, message
    assert message.count("certificate verify failed") == 2, message


def test_prefork_config_shows_the_tls_options_never_the_password(db_pki):
    dsn = (
        f"mysql://app:s3cr3tpw@db.example:3306/shop?ssl_mode=verify_identity&ssl_ca={db_pki.ca}"
        f"&ssl_cert={db_pki.client}&ssl_key={db_pki.client_key}"
    )
    result = run_cli("config", "--dsn", dsn)
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("pool.dsn"))
    assert "mysql://app:***@db.example:3306/shop?ssl_mode=verify_identity" in line, line
    for path in (db_pki.ca, db_pki.client, db_pki.client_key):
        assert f"={path}" in line, line
    assert "s3cr3tpw" not in result.stdout + result.stderr
