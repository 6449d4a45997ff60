"""Real syslog shippers into prefork's syslog framings, through the ingest app into the private MariaDB:
util-linux ``logger`` (octet-counted and LF), Python's ``SysLogHandler`` over TCP as shipped (NUL), rsyslog's
``omfwd`` octet-counted. Each sends 10,000 distinct messages; each one must be stored exactly as sent (the
payload is the syslog message without its framing), none merged, split or lost.

Marker ``shippers``: these run real shipper daemons (rsyslogd from Debian's ``rsyslog``, installed by
scripts/ensure-test-packages.sh; started by devtools.shippers, never the machine's own).
"""

from __future__ import annotations

import logging
import logging.handlers
import re
import socket
import subprocess

import pytest

from devtools.mariadb import free_port
from devtools.shippers import Rsyslog, omfwd_config, send_lines
from tests.helpers import query
from tests.server import ServerProcess, wait_for

pytestmark = pytest.mark.shippers

MESSAGES = 10_000
STORE_TIMEOUT_S = 120.0
# The message text each test sends (distinct, with spaces and non-ASCII), found at the end of the stored row.
_TEXT = re.compile(r"(msg-\d{5} .*)\Z", re.S)


def messages(count: int = MESSAGES) -> list[str]:
    return [f"msg-{i:05d} grüße {i * 7919 % 1000} spaces  and\ttabs {'x' * (i % 50)}" for i in range(count)]


def syslog_server(dsn: str, table: str, framing: str, *extra: str) -> ServerProcess:
    query(dsn, f"DROP TABLE IF EXISTS `{table}`")
    args = ["--dsn", dsn, "--table", table, "--workers", "1", "--framing", framing, *extra]
    return ServerProcess(args)


def assert_stored_as_sent(dsn: str, table: str, sent: list[str], row_pattern: str) -> None:
    """Every message stored once, exactly as sent, each row one whole syslog message matching ``row_pattern``
    (its header), none merged or split."""

    def count() -> int:
        return int(query(dsn, f"SELECT COUNT(*) FROM `{table}`")[0][0])

    wait_for(lambda: count() >= len(sent), timeout=STORE_TIMEOUT_S, interval=0.5, what=f"{len(sent)} rows")
    rows = [r[0] for r in query(dsn, f"SELECT payload FROM `{table}` ORDER BY id")]
    assert len(rows) == len(sent)
    header = re.compile(row_pattern)
    stored = []
    for row in rows:
        assert header.match(row), row
        assert row.count("msg-") == 1, row  # not merged
        found = _TEXT.search(row)
        assert found is not None, row
        stored.append(found.group(1))
    assert sorted(stored) == sorted(sent)


def run_logger(port: int, path: str, *options: str) -> None:
    cmd = ["logger", "-n", "127.0.0.1", "-P", str(port), "-T", "-t", "shipper", *options, "-f", path]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=STORE_TIMEOUT_S)
    assert result.returncode == 0, result.stderr


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "framing, options, row_pattern",
    [
        ("octet-count", ["--octet-count", "--rfc5424"], r"<13>1 \S+ \S+ shipper \S+ - "),
        ("syslog", ["--rfc5424"], r"<13>1 \S+ \S+ shipper \S+ - "),
        ("syslog", ["--rfc3164"], r"<13>\w{3} [ \d]\d \d\d:\d\d:\d\d \S+ shipper"),
        ("syslog", ["--octet-count", "--rfc3164"], r"<13>\w{3} [ \d]\d \d\d:\d\d:\d\d \S+ shipper"),
    ],
    ids=["octet-count", "lf-rfc5424", "lf-rfc3164", "syslog-listener-octet-count"],
)
def test_logger(dsn, tmp_path, framing, options, row_pattern):
    """util-linux logger, 10,000 lines of a file, one connection; the listener's ack is auto (= off)."""
    table = f"logger_{framing.replace('-', '_')}"
    sent = messages()
    path = tmp_path / "messages.txt"
    path.write_text("".join(m + "\n" for m in sent))
    with syslog_server(dsn, table, framing) as srv:
        run_logger(srv.port, str(path), *options)
        assert_stored_as_sent(dsn, table, sent, row_pattern)
        assert "frames refused" not in srv.logs()


@pytest.mark.timeout(300)
def test_python_syslog_handler_as_shipped(dsn):
    """logging.handlers.SysLogHandler(socktype=SOCK_STREAM): `<PRI>message` and a NUL, no LF."""
    table = "python_syslog"
    sent = messages()
    with syslog_server(dsn, table, "syslog") as srv:
        handler = logging.handlers.SysLogHandler(("127.0.0.1", srv.port), socktype=socket.SOCK_STREAM)
        shipper = logging.getLogger("tests.shippers.python")
        shipper.propagate = False
        shipper.addHandler(handler)
        try:
            for text in sent:
                shipper.warning("%s", text)
        finally:
            shipper.removeHandler(handler)
            handler.close()
        assert_stored_as_sent(dsn, table, sent, r"<12>msg-")


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "framing, tcp_framing",
    [("octet-count", "octet-counted"), ("syslog", "octet-counted"), ("syslog", "traditional")],
)
def test_rsyslog_omfwd(dsn, tmp_path, framing, tcp_framing):
    """rsyslogd (its own config, in the foreground) takes 10,000 lines on its TCP input and forwards them
    with omfwd, RFC 5424 (a LF at the end of each: inside the count when octet-counted)."""
    table = f"rsyslog_{tcp_framing.replace('-', '_')}_{framing.replace('-', '_')}"
    sent = messages()
    with syslog_server(dsn, table, framing) as srv:
        in_port = free_port()
        directory = tmp_path / "rsyslog"
        config = omfwd_config(directory, in_port, srv.port, framing=tcp_framing)
        with Rsyslog(directory, config, wait_port=in_port) as rsyslog:
            send_lines(in_port, [f"<13>Dec  6 12:00:00 sender shipper: {m}".encode() for m in sent])
            assert_stored_as_sent(dsn, table, sent, r"<13>1 \S+ sender shipper - - - ")
            assert "error" not in rsyslog.logs().lower(), rsyslog.logs()
