"""The contract between prefork/db/connection.py and PyMySQL's private members.

prefork's Connection overrides or calls members PyMySQL does not promise to keep (its docstring lists
them). setup.cfg pins the PyMySQL releases these tests passed with; a release that renames a member,
changes its signature or stops calling it where the copy assumes fails here, naming what changed, rather
than as a slow leak of transactions or a LOAD DATA that hangs.
"""

from __future__ import annotations

import configparser
import importlib.metadata
import inspect
import os
import ssl
import tempfile

import pymysql
import pymysql.connections
import pytest
from packaging.requirements import Requirement
from packaging.version import Version
from pymysql.constants import CR

from prefork.db.connection import (
    LOCAL_DATA_PACKET,
    Connection,
    LocalDataResult,
    force_close,
    open_connection,
    transaction_closed,
)
from prefork.db.dsn import parse_dsn
from tests.helpers import query
from tests.server import ROOT, wait_for
from tests.silent_server import SilentServer

# The release as pip knows it: pymysql.__version__ is the mysqlclient (MySQLdb) version PyMySQL mimics.
VERSION = importlib.metadata.version("PyMySQL")
RELIES = "prefork/db/connection.py relies on it"


def _pinned_range() -> str:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    for line in setup["options"]["install_requires"].splitlines():
        if line.strip().lower().startswith("pymysql"):
            return line.strip()
    raise AssertionError("setup.cfg does not list PyMySQL in install_requires")


def test_the_installed_pymysql_is_in_the_tested_range():
    requirement = Requirement(_pinned_range())
    assert any(spec.operator == "<" for spec in requirement.specifier), (
        f"setup.cfg's {requirement} has no upper bound: PyMySQL releases past the tested ones may change the "
        "private members prefork/db/connection.py uses"
    )
    assert Version(VERSION) in requirement.specifier, (
        f"PyMySQL {VERSION} is outside the range tested, {requirement} (setup.cfg): run this file against it "
        "and widen the range if it passes"
    )


# (owner, member, how prefork calls it: positional arguments after self, keyword arguments)
CALLED = [
    (pymysql.connections.Connection, "connect", (None,), {}),
    (pymysql.connections.Connection, "_execute_command", (3, b"SELECT 1"), {}),
    (pymysql.connections.Connection, "_read_ok_packet", (), {}),
    (pymysql.connections.Connection, "_read_query_result", (), {"unbuffered": False}),
    (pymysql.connections.Connection, "_read_packet", (), {}),
    (pymysql.connections.Connection, "_force_close", (), {}),
    (pymysql.connections.Connection, "_request_authentication", (), {}),
    (pymysql.connections.Connection, "write_packet", (b"",), {}),
    (pymysql.connections.Connection, "_write_bytes", (b"",), {}),
    (pymysql.connections.MySQLResult, "__init__", (None,), {}),
    (pymysql.connections.MySQLResult, "read", (), {}),
    (pymysql.connections.MySQLResult, "init_unbuffered_query", (), {}),
    (pymysql.connections.MySQLResult, "_read_ok_packet", (None,), {}),
    (pymysql.connections.MySQLResult, "_read_load_local_packet", (None,), {}),
]


@pytest.mark.parametrize(
    ("owner", "member", "args", "kwargs"), CALLED, ids=[f"{o.__name__}.{m}" for o, m, *_ in CALLED]
)
def test_each_private_member_exists_with_the_signature_prefork_calls(owner, member, args, kwargs):
    function = getattr(owner, member, None)
    assert callable(function), f"PyMySQL {VERSION} has no {owner.__name__}.{member}; {RELIES}"
    signature = inspect.signature(function)
    try:
        signature.bind(None, *args, **kwargs)
    except TypeError as exc:
        raise AssertionError(
            f"PyMySQL {VERSION} changed {owner.__name__}.{member}{signature}: prefork calls it with "
            f"{len(args)} positional and {sorted(kwargs)} keyword arguments ({exc}); {RELIES}"
        ) from None


def test_the_instance_attributes_prefork_sets_are_there():
    conn = pymysql.connections.Connection(defer_connect=True, read_timeout=7, connect_timeout=3)
    assert getattr(conn, "_read_timeout", None) == 7, (
        f"PyMySQL {VERSION} no longer keeps read_timeout in Connection._read_timeout; {RELIES} (the greeting "
        "is read within connect_timeout by setting it)"
    )
    assert "_result" in vars(conn), f"PyMySQL {VERSION} no longer has Connection._result; {RELIES}"
    result = pymysql.connections.MySQLResult(conn)
    for name in ("connection", "server_status", "warning_count", "affected_rows"):
        assert hasattr(result, name), f"PyMySQL {VERSION}: MySQLResult has no {name}; {RELIES}"


def test_tls_is_asked_for_with_an_sslcontext_or_refused_with_ssl_disabled():
    """prefork.db.tls passes ``ssl=`` one SSLContext per pool, or ``ssl_disabled=True``; Connection reads
    ``ssl`` (and the greeting's ``server_capabilities``) to refuse a server without TLS before the login."""
    context = ssl.create_default_context()
    conn = pymysql.connections.Connection(defer_connect=True, ssl=context)
    assert conn.ssl and getattr(conn, "ctx", None) is context, (
        f"PyMySQL {VERSION} no longer takes ssl= an SSLContext as it is (Connection.ctx); {RELIES}"
    )
    assert not pymysql.connections.Connection(defer_connect=True, ssl_disabled=True).ssl, (
        f"PyMySQL {VERSION}: ssl_disabled=True no longer leaves Connection.ssl false; {RELIES}"
    )


def test_tls_required_refuses_a_server_without_tls_before_the_login(dsn):
    """The session's server has no certificate. PyMySQL 1.1 would log in in plaintext, 1.2 refuses without
    naming the host; prefork's Connection refuses before sending the login, naming it."""
    kwargs = parse_dsn(dsn + "?ssl_mode=required").connect_kwargs()
    with pytest.raises(pymysql.err.OperationalError) as info:
        Connection(**kwargs)
    code, message = info.value.args
    where = f"{kwargs['host']}:{kwargs['port']}"
    assert code == CR.CR_SSL_CONNECTION_ERROR and f"{where} does not offer TLS" in message, (
        f"PyMySQL {VERSION}: the greeting's Connection.server_capabilities is no longer read before "
        f"Connection._request_authentication, or Connection.ssl is gone ({info.value}); {RELIES}"
    )


@pytest.fixture
def table(dsn):
    name = f"contract_{os.getpid()}"
    query(dsn, f"DROP TABLE IF EXISTS `{name}`")
    query(dsn, f"CREATE TABLE `{name}` (k INT PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB")
    yield name
    query(dsn, f"DROP TABLE IF EXISTS `{name}`")


@pytest.fixture
def conn(dsn):
    """A connection of prefork's class (as a pool opens them); ask for it after ``table``, so that it is
    closed first and a failed test's open transaction does not hold the table's DROP."""
    conn = open_connection(**parse_dsn(dsn).connect_kwargs())
    yield conn
    if conn.open:
        conn.close()


def test_status_is_current_only_after_a_reply_that_carried_it(table, conn):
    cur = conn.cursor()
    cur.execute(f"INSERT INTO `{table}` VALUES (1, 'a')")
    assert conn.status_current and not transaction_closed(conn), (
        f"PyMySQL {VERSION}: an INSERT's OK packet no longer reaches Connection._read_query_result, or its "
        f"result no longer has the server status; {RELIES}"
    )
    with pytest.raises(pymysql.err.IntegrityError):
        cur.execute(f"INSERT INTO `{table}` VALUES (1, 'b')")
    assert not conn.status_current and not transaction_closed(conn), (
        f"PyMySQL {VERSION}: a command no longer starts in Connection._execute_command (an error reply left "
        f"an old status current); {RELIES}"
    )
    conn.commit()
    assert transaction_closed(conn), (
        f"PyMySQL {VERSION}: COMMIT's OK packet is no longer read by Connection._read_ok_packet; {RELIES}"
    )
    cur.execute(f"SELECT v FROM `{table}`")
    assert cur.fetchall() == (("a",),)
    assert not transaction_closed(conn), "a SELECT opened a transaction and the status says so"
    conn.rollback()
    assert transaction_closed(conn)


def test_load_data_local_sends_the_offered_data_and_counts_warnings(dsn, table, conn):
    sql = f"LOAD DATA LOCAL INFILE 'offered' INTO TABLE `{table}` FIELDS TERMINATED BY ','"
    try:
        rows, warnings = conn.load_local_data(sql, b"1,one\n2,two\nthree,3\n")
    except pymysql.err.MySQLError as exc:
        raise AssertionError(
            f"PyMySQL {VERSION}: LOAD DATA LOCAL failed ({exc}): the server's request for the file no longer "
            f"reaches LocalDataResult._read_load_local_packet (Connection._read_query_result); {RELIES}"
        ) from exc
    assert isinstance(conn._result, LocalDataResult)
    conn.commit()
    assert (rows, warnings) == (3, 1), (
        f"PyMySQL {VERSION}: LOAD DATA LOCAL no longer goes through MySQLResult._read_load_local_packet of the "
        f"connection's own result class, or its OK packet through MySQLResult._read_ok_packet; {RELIES}"
    )
    assert query(dsn, f"SELECT k, v FROM `{table}` ORDER BY k") == [(0, "3"), (1, "one"), (2, "two")]


def test_a_file_of_many_packets_goes_out_in_one_send_numbered_as_the_driver_would(dsn, table, conn, monkeypatch):
    assert isinstance(getattr(conn, "_next_seq_id", None), int), (
        f"PyMySQL {VERSION} no longer numbers packets in Connection._next_seq_id; {RELIES}"
    )
    sends = []
    write_bytes = conn._write_bytes
    monkeypatch.setattr(conn, "_write_bytes", lambda data: (sends.append(len(data)), write_bytes(data)))
    value = "x" * 20
    data = "".join(f"{k},{value}\n" for k in range(3 * LOCAL_DATA_PACKET // len(value))).encode()
    sql = f"LOAD DATA LOCAL INFILE 'offered' INTO TABLE `{table}` FIELDS TERMINATED BY ','"
    try:
        rows, warnings = conn.load_local_data(sql, data)
    except pymysql.err.MySQLError as exc:
        raise AssertionError(
            f"PyMySQL {VERSION}: a LOAD's packets numbered from Connection._next_seq_id and sent with "
            f"Connection._write_bytes were refused ({exc}); {RELIES}"
        ) from exc
    assert (rows, warnings) == (data.count(b"\n"), 0)
    assert len(sends) == 2 and sends[1] > len(data), "the query, then the whole file (4 packets and its end) at once"
    conn.commit()
    assert query(dsn, f"SELECT COUNT(*), MAX(k) FROM `{table}`") == [(rows, rows - 1)]


def test_a_statement_runs_before_a_load_in_its_round_trip_and_stops_it_when_it_fails(dsn, table, conn, monkeypatch):
    conn.set_multi_statements(True)
    commands = []
    execute = conn._execute_command
    monkeypatch.setattr(conn, "_execute_command", lambda cmd, sql: (commands.append(sql), execute(cmd, sql)))
    sql = f"LOAD DATA LOCAL INFILE 'offered' INTO TABLE `{table}` FIELDS TERMINATED BY ','"
    first = f"INSERT INTO `{table}` VALUES (1, 'first')"
    assert conn.load_local_data(sql, b"2,two\n3,three\n", first) == (2, 0)
    assert len(commands) == 1, "the INSERT and the LOAD go in one query"
    with pytest.raises(pymysql.err.IntegrityError):
        conn.load_local_data(sql, b"4,four\n", first)  # a duplicate key: the LOAD is not run
    cur = conn.cursor()
    cur.execute("SELECT 1")  # the connection is in sync
    assert cur.fetchall() == ((1,),)
    conn.commit()
    assert query(dsn, f"SELECT k, v FROM `{table}` ORDER BY k") == [(1, "first"), (2, "two"), (3, "three")]


def test_a_file_the_server_names_is_never_opened(dsn, table, conn):
    with tempfile.NamedTemporaryFile("w", suffix=".csv") as f:
        f.write("7,seven\n")
        f.flush()
        cur = conn.cursor()
        stored = cur.execute(f"LOAD DATA LOCAL INFILE '{f.name}' INTO TABLE `{table}` FIELDS TERMINATED BY ','")
    conn.commit()
    assert stored == 0 and query(dsn, f"SELECT COUNT(*) FROM `{table}`") == [(0,)], (
        f"PyMySQL {VERSION} sent a file the server named: LocalDataResult._read_load_local_packet was bypassed; "
        f"{RELIES}"
    )


@pytest.mark.timeout(30)
def test_the_greeting_is_read_within_connect_timeout_not_read_timeout():
    """The driver alone would wait read_timeout (60 s) for the greeting; this test's deadline is half that."""
    with SilentServer("127.0.0.34") as silent:
        with pytest.raises(pymysql.err.OperationalError):
            Connection(host=silent.host, port=silent.port, user="root", connect_timeout=1, read_timeout=60)
        assert silent.accepted == 1


def test_force_close_says_nothing_to_the_server(dsn, conn):
    def aborted() -> int:
        return int(query(dsn, "SHOW GLOBAL STATUS LIKE 'Aborted_clients'")[0][1])

    thread_id = conn.thread_id()
    before = aborted()
    force_close(conn)
    assert not conn.open, f"PyMySQL {VERSION}: Connection._force_close left the socket open; {RELIES}"
    wait_for(lambda: not query(dsn, "SELECT 1 FROM information_schema.PROCESSLIST WHERE ID = %s", (thread_id,)))
    assert aborted() == before + 1, (
        f"PyMySQL {VERSION}: Connection._force_close sent QUIT (the server counted no aborted client); {RELIES}"
    )
