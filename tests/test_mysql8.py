"""Ready for MySQL 8, not only MariaDB (README, "MySQL 8"): what MariaDB can take too runs against the
private MariaDB (the line id column added after a look in information_schema, by two workers at once;
the flavour detected; ingest's session variables); what only MySQL takes is checked on the statements
and decisions prefork makes for it (a MySQL version string, error packets MySQL sends)."""

from __future__ import annotations

import re
import struct
import uuid

import gevent
import gevent.event
import pymysql
import pytest

from prefork.db.connection import Connection, open_connection
from prefork.db.dsn import parse_dsn
from prefork.db.errors import CLIENT_INTERACTION_TIMEOUT, SECURE_TRANSPORT_REQUIRED, is_disconnect
from prefork.db.server import MARIADB, MYSQL, flavour, flavour_of_version
from tests.server import ROOT
from workers import schema
from workers.ingest.outcome import kill_sql, server_of
from workers.ingest.write import STALLED_CLIENT_S, session_setup, session_variables

MYSQL_VERSIONS = ("8.0.36", "8.4.0-log", "8.0.36-0ubuntu0.22.04.1", "8.0.35-google")
MARIADB_VERSIONS = ("10.11.6-MariaDB-0+deb12u1", "5.5.5-10.11.6-MariaDB-0+deb12u1", "11.4.2-MariaDB-log")


# --- caching_sha2_password over plain TCP: PyMySQL's RSA path ---------------------------------------------


def test_pymysql_rsa_password_path_has_cryptography():
    """MySQL 8's default login over plain TCP sends the password RSA-encrypted with the server's public key:
    PyMySQL's ``sha2_rsa_encrypt`` needs ``cryptography`` (the package's ``PyMySQL[rsa]``), and the server
    (here: this test, with the private key) gets the password back."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
    from pymysql import _auth

    assert _auth._have_cryptography, "cryptography is not importable: setup.cfg requires PyMySQL[rsa]"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    salt = b"0123456789abcdefghij"  # the 20-byte nonce of the server's greeting
    sealed = _auth.sha2_rsa_encrypt(b"secret", salt, public_pem)
    oaep = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    plain = key.decrypt(sealed, oaep)
    assert bytes(b ^ salt[i % len(salt)] for i, b in enumerate(plain)) == b"secret\0"


def test_setup_cfg_requires_pymysql_rsa():
    assert re.search(r"^\s+PyMySQL\[rsa\]", (ROOT / "setup.cfg").read_text(), re.M)


# --- errors MySQL sends ------------------------------------------------------------------------------------


def _server_error(code: int, message: str) -> pymysql.err.MySQLError:
    """The driver's exception for an error packet as a MySQL 8 server sends it."""
    packet = b"\xff" + struct.pack("<H", code) + b"#HY000" + message.encode()
    try:
        pymysql.err.raise_mysql_exception(packet)
    except pymysql.err.MySQLError as exc:
        return exc
    raise AssertionError("no exception raised")


def test_mysql_inactivity_disconnect_4031_is_a_disconnect():
    exc = _server_error(
        CLIENT_INTERACTION_TIMEOUT,
        "The client was disconnected by the server because of inactivity. See wait_timeout and "
        "interactive_timeout for configuring this behavior.",
    )
    assert isinstance(exc, pymysql.err.OperationalError)
    assert is_disconnect(exc)


def test_mysql_require_secure_transport_3159_says_to_give_an_ssl_mode(monkeypatch):
    refused = _server_error(
        SECURE_TRANSPORT_REQUIRED,
        "Connections using insecure transport are prohibited while --require_secure_transport=ON.",
    )

    def refuse(self):
        raise refused

    monkeypatch.setattr(pymysql.connections.Connection, "_request_authentication", refuse)
    conn = Connection(**parse_dsn("mysql://app@127.0.0.1/app").connect_kwargs(), defer_connect=True)
    assert not conn.ssl  # a plaintext login
    conn.server_capabilities = pymysql.constants.CLIENT.SSL
    with pytest.raises(pymysql.err.OperationalError) as caught:
        conn._request_authentication()
    assert caught.value.args[0] == SECURE_TRANSPORT_REQUIRED
    assert "require_secure_transport=ON" in caught.value.args[1] and "ssl_mode" in caught.value.args[1]


# --- the server's flavour and what is chosen for it ---------------------------------------------------------


@pytest.mark.parametrize("version", MYSQL_VERSIONS)
def test_a_mysql_version_is_mysql(version):
    assert flavour_of_version(version) == MYSQL


@pytest.mark.parametrize("version", MARIADB_VERSIONS)
def test_a_mariadb_version_is_mariadb(version):
    assert flavour_of_version(version) == MARIADB


class FakeCursor:
    def __init__(self, conn: FakeConnection) -> None:
        self.conn = conn

    def execute(self, sql, args=None):
        self.conn.statements.append(sql)

    def fetchone(self):
        return (self.conn.version,)

    def close(self):
        pass


class FakeConnection:
    """Records the statements prefork sends; answers SELECT VERSION() with ``version``."""

    def __init__(self, version: str, greeting: bool) -> None:
        self.version = version
        if greeting:
            self.server_version = version
        self.statements: list[str] = []

    def cursor(self):
        return FakeCursor(self)


def test_flavour_from_select_version_without_a_greeting():
    conn = FakeConnection("8.0.36", greeting=False)
    assert flavour(conn) == MYSQL
    assert conn.statements == ["SELECT VERSION()"]


def test_ingest_sets_no_mariadb_only_variable_on_mysql():
    conn = FakeConnection("8.0.36", greeting=True)
    session_setup(conn)
    assert conn.statements == [f"SET SESSION net_read_timeout = {STALLED_CLIENT_S}"]
    assert ("idle_write_transaction_timeout", STALLED_CLIENT_S) in session_variables(MARIADB)


def test_statements_for_mysql_are_plain():
    assert kill_sql(42) == "KILL CONNECTION 42"
    assert schema.add_line_id_sql("t`x") == (
        "ALTER TABLE `t``x` ADD COLUMN line_id VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL, "
        "ADD UNIQUE KEY line_id (line_id)"
    )
    assert schema.add_line_id_sql("t", key=False) == (
        "ALTER TABLE `t` ADD COLUMN line_id VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL"
    )
    assert schema.add_line_id_sql("t", column=False) == "ALTER TABLE `t` ADD UNIQUE KEY line_id (line_id)"
    assert schema.add_client_cert_sql("t") == (
        "ALTER TABLE `t` ADD COLUMN client_cert VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL"
    )
    with pytest.raises(ValueError):
        schema.add_line_id_sql("t", column=False, key=False)


def test_no_mariadb_only_alter_in_the_code_or_etc():
    """``ALTER ... IF [NOT] EXISTS`` is MariaDB's alone: none in what the package runs or ships."""
    mariadb_only = re.compile(r"ALTER TABLE[^;\n]*\bIF (NOT )?EXISTS", re.I)
    files = [*ROOT.glob("prefork/**/*.py"), *ROOT.glob("workers/**/*.py"), *ROOT.glob("etc/*.sql")]
    assert files
    found = [str(path) for path in files if mariadb_only.search(path.read_text())]
    assert found == []


# --- against the private MariaDB -----------------------------------------------------------------------------


def _connect(dsn: str) -> Connection:
    """A connection as a pool makes it (prefork's class, autocommit off)."""
    return open_connection(**parse_dsn(dsn).connect_kwargs())


def _line_id_shape(conn, table: str) -> tuple[int, int]:
    """How many line_id columns, and how many index entries named line_id (unique, on line_id), it has."""
    cur = conn.cursor()
    cur.execute(
        "SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s "
        "AND COLUMN_NAME = 'line_id'",
        (table,),
    )
    columns = cur.fetchone()[0]
    cur.execute(
        "SELECT COUNT(*) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s "
        "AND INDEX_NAME = 'line_id' AND COLUMN_NAME = 'line_id' AND NON_UNIQUE = 0",
        (table,),
    )
    keys = cur.fetchone()[0]
    cur.execute(
        "SELECT COUNT(*) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s",
        (table,),
    )
    all_index_columns = cur.fetchone()[0]
    cur.close()
    assert all_index_columns == 1 + keys  # the primary key and line_id's, nothing else
    return columns, keys


@pytest.fixture
def bare_table(dsn):
    """A new ingest table without the line id column; dropped afterwards."""
    table = f"mysql8_{uuid.uuid4().hex[:10]}"
    conn = _connect(dsn)
    conn.cursor().execute(schema.create_table_sql(table))
    yield conn, table
    conn.cursor().execute(f"DROP TABLE IF EXISTS `{table}`")
    conn.close()


def test_the_server_is_detected_as_mariadb_and_gets_its_variables(dsn):
    conn = _connect(dsn)
    try:
        assert flavour(conn) == MARIADB
        del conn.server_version  # the SELECT VERSION() path
        assert flavour(conn) == MARIADB
        session_setup(conn)
        cur = conn.cursor()
        cur.execute("SELECT @@session.idle_write_transaction_timeout, @@session.net_read_timeout")
        assert cur.fetchone() == (STALLED_CLIENT_S, STALLED_CLIENT_S)
    finally:
        conn.close()


def test_the_run_token_is_written_in_autocommit_mode_and_then_read(dsn):
    """A server without a token (as after a restart) gets one from the first connection, written as an
    autocommitted statement of its own (no COMMIT sent: a proxy counting COMMITs would take it for a batch's),
    and the connection is back in transaction mode afterwards."""
    conn = _connect(dsn)
    try:
        cur = conn.cursor()
        cur.execute(schema.create_server_run_table_sql())
        cur.execute(f"DELETE FROM `{schema.SERVER_RUN_TABLE}`")  # MEMORY: as a restarted server has it
        conn.commit()
        server = server_of(conn)
        assert conn.get_autocommit() is False
        cur.execute(f"SELECT token FROM `{schema.SERVER_RUN_TABLE}`")
        assert cur.fetchall() == ((server.run,),)
        again = _connect(dsn)
        try:
            assert server_of(again) == server  # read, not written again
        finally:
            again.close()
    finally:
        conn.close()


def test_a_table_without_line_id_gets_it_once(bare_table):
    conn, table = bare_table
    assert schema.missing_line_id(conn, table) == (True, True)
    schema.ensure_table(conn, table, line_ids=True)
    assert _line_id_shape(conn, table) == (1, 1)
    assert schema.has_line_id(conn, table)
    assert schema.add_line_id(conn, table) is False  # looked up, nothing to alter


def test_a_part_added_by_another_session_meanwhile_is_taken_as_done(bare_table, monkeypatch):
    """The lookup said both were missing, but another worker added the column (then the key) before this
    ALTER: 1060 (then 1061) is taken as that part done, and what is left is added."""
    conn, table = bare_table
    real = schema.missing_line_id
    conn.cursor().execute(schema.add_line_id_sql(table, key=False))  # "another worker": the column only
    stale = iter([(True, True)])
    monkeypatch.setattr(schema, "missing_line_id", lambda c, t: next(stale, None) or real(c, t))
    assert schema.add_line_id(conn, table) is True  # 1060, then the key alone
    assert _line_id_shape(conn, table) == (1, 1)
    stale = iter([(False, True)])
    assert schema.add_line_id(conn, table) is False  # 1061: the key is there
    assert _line_id_shape(conn, table) == (1, 1)


def test_two_workers_racing_end_with_one_column_and_one_key(dsn, bare_table, monkeypatch):
    """Both look in information_schema before either alters (held at a barrier), so both ALTER: one adds
    the column and key, the other's fails with 1060 and its second look finds nothing missing."""
    _, table = bare_table
    real = schema.missing_line_id
    looked = gevent.event.Event()
    first_looks: list[tuple[bool, bool]] = []

    def look_then_wait(conn, name):
        missing = real(conn, name)
        if len(first_looks) < 2:
            first_looks.append(missing)
            if len(first_looks) == 2:
                looked.set()
            assert looked.wait(timeout=10)
        return missing

    monkeypatch.setattr(schema, "missing_line_id", look_then_wait)
    workers = [_connect(dsn) for _ in range(2)]
    try:
        racers = [gevent.spawn(schema.add_line_id, conn, table) for conn in workers]
        gevent.joinall(racers, timeout=30, raise_error=True)
        assert first_looks == [(True, True), (True, True)]
        assert sorted(racer.value for racer in racers) == [False, True]
        assert _line_id_shape(workers[0], table) == (1, 1)
    finally:
        for conn in workers:
            conn.close()


def test_the_client_cert_column_is_added_once_and_a_concurrent_add_is_done(bare_table, monkeypatch):
    conn, table = bare_table
    assert schema.add_client_cert(conn, table) is True
    assert schema.add_client_cert(conn, table) is False  # looked up: nothing to alter
    assert schema.missing_columns(conn, table, (schema.CLIENT_CERT_COLUMN,)) == []
    # The lookup saw it missing, but another session added it before this ALTER: 1060 means done.
    monkeypatch.setattr(schema, "missing_columns", lambda c, t, columns: list(columns))
    assert schema.add_client_cert(conn, table) is False
    assert "IF NOT EXISTS" not in schema.add_client_cert_sql(table)
