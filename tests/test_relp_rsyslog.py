"""RELP for real: rsyslog's omrelp (Debian's rsyslog and rsyslog-relp) into a prefork relp listener with the
ingest app and the private MariaDB, while MariaDB is killed and restarted and prefork reloads (HUP) and
restarts (TERM, then a new master on the same port).

rsyslog (devtools.shippers.Rsyslog with its omrelp_config) takes N distinct messages over plain TCP and
forwards them with omrelp and its reliable settings (retry forever, a queue for what is not acked). The
messages are fed at a steady pace while the faults happen, then the test waits until every one is stored. 0
lost; duplicates happen only where a session broke with acks not yet delivered (a message committed whose
``rsp`` never reached rsyslog is sent again), so there are at most rsyslog's window of them per break; the
count is printed.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from devtools.mariadb import MariaDBServer, free_port
from devtools.shippers import Rsyslog, omrelp_config
from prefork.protocol.relp import SERVERCLOSE
from tests.helpers import query
from tests.server import ServerProcess, wait_for
from tests.test_framer_relp import OPEN_OFFERS, rsp, wire
from tests.test_relp import OPEN_RSP

MESSAGES = 20_000
CHUNK = 100  # messages fed to rsyslog at a time
CHUNK_PAUSE_S = 0.05  # between chunks: the feed lasts (10 s) while the faults happen
WINDOW = 128  # omrelp's window: the most frames unacked on one session
STORE_TIMEOUT_S = 240.0
COMMIT_TIMEOUT = "3"  # so that lines held while MariaDB is down get ERR unavailable (and are resent) soon


SENT = re.compile(r"(relp-\d{6})\Z")  # the end of a message as stored: what identifies it


def message(i: int) -> bytes:
    return b"<13>Dec  6 14:00:00 relphost app: relp-%06d" % i


def relp_server(dsn: str, table: str, port: int = 0, line_ids: bool = False) -> ServerProcess:
    return ServerProcess(
        ["--dsn", dsn, "--table", table, "--workers", "2", "--framing", "relp", "--graceful-timeout", "20",
         "--commit-timeout", COMMIT_TIMEOUT, "--line-ids", "on" if line_ids else "off"],
        bind=f"127.0.0.1:{port}",
    )  # fmt: skip


def feed(port: int, fed: list[int]) -> None:
    """Send every message to rsyslog's TCP input, CHUNK at a time."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        for start in range(0, MESSAGES, CHUNK):
            sock.sendall(b"".join(message(i) + b"\n" for i in range(start, min(start + CHUNK, MESSAGES))))
            fed[0] = start + CHUNK
            time.sleep(CHUNK_PAUSE_S)


def stored(dsn: str, table: str) -> tuple[int, set[str]]:
    """(rows, the distinct messages) in the table (counted here: no temporary table on the server). rsyslog
    forwards each as RFC 5424 (etc/shippers/rsyslog-omrelp.conf), its own header before the message sent: a message is
    known by its end. A row that is none of them is one too many."""
    payloads = [row[0] for row in query(dsn, f"SELECT payload FROM `{table}`")]
    found = {match[1] for match in map(SENT.search, payloads) if match is not None}
    assert all(SENT.search(p) and p.startswith("<13>1 ") and "relphost app" in p for p in payloads), payloads[:3]
    return len(payloads), found


@pytest.mark.shippers
@pytest.mark.timeout(600)
@pytest.mark.parametrize("line_ids", [False, True], ids=["plain", "line-ids"])
def test_rsyslog_omrelp_loses_nothing_through_db_kills_worker_kills_reloads_and_restarts(
    db: MariaDBServer, tmp_path: Path, show, line_ids: bool
) -> None:
    """A worker killed with SIGKILL loses the acks of what it committed: those messages come again, and are
    duplicates, unless line ids (a hash of each message) store each one once."""
    table = "relp_rsyslog"
    query(db.dsn, f"DROP TABLE IF EXISTS `{table}`")
    srv = relp_server(db.dsn, table, line_ids=line_ids).start()
    servers = [srv]
    try:
        port = srv.port
        in_port = free_port()
        workdir = tmp_path / "rsyslog"
        config = omrelp_config(workdir, in_port, port, WINDOW)
        with Rsyslog(workdir, config, wait_port=in_port):
            fed = [0]
            feeder = threading.Thread(target=feed, args=(in_port, fed), daemon=True)
            feeder.start()
            disruptions = 0

            def after(count: int) -> None:
                wait_for(lambda: fed[0] >= count, 120, what=f"{count} messages fed")

            after(MESSAGES // 5)
            db.kill()  # MariaDB crashes: lines wait, then ERR unavailable closes sessions; rsyslog resends
            disruptions += 1
            time.sleep(float(COMMIT_TIMEOUT) + 1)
            db.start()
            after(2 * MESSAGES // 5)
            srv.signal(signal.SIGHUP)  # a reload: new workers, the old ones stop gracefully
            disruptions += 1
            after(3 * MESSAGES // 5)
            srv.signal(signal.SIGTERM)  # a stop, then a new master on the same port
            assert srv.wait(60) == 0
            disruptions += 1
            srv = relp_server(db.dsn, table, port, line_ids).start()
            servers.append(srv)
            after(7 * MESSAGES // 10)
            for pid in srv.worker_pids():  # a crash: no answers for what was committed, no serverclose
                os.kill(pid, signal.SIGKILL)
            disruptions += 1
            after(4 * MESSAGES // 5)
            db.kill()
            disruptions += 1
            db.start()
            feeder.join(120)
            wanted = {f"relp-{i:06d}" for i in range(MESSAGES)}
            try:
                wait_for(lambda: len(stored(db.dsn, table)[1]) >= MESSAGES, STORE_TIMEOUT_S, 0.5, "every message")
            finally:
                time.sleep(2)  # what rsyslog may still resend lands too, and is counted
                rows, payloads = stored(db.dsn, table)
                distinct = len(payloads)
                show(f"{len(wanted - payloads)} lost of {MESSAGES}")
            assert payloads == wanted  # 0 lost, nothing else
            closed = sum(server.logs().count("RELP session closed") for server in servers)
            show(f"rsyslog omrelp -> prefork relp ({'line ids' if line_ids else 'no line ids'}): {MESSAGES} sent, "
                 f"{distinct} stored, 0 lost, {rows - distinct} duplicates across {disruptions} disruptions "
                 f"(window {WINDOW}); {closed} sessions closed by prefork on an error")  # fmt: skip
            assert rows - distinct <= WINDOW * disruptions * 2, "more duplicates than acks a break can lose"
            if line_ids:
                assert rows == distinct, "a message stored twice despite its line id"
    finally:
        for server in servers:
            server.stop()


# -- line ids: a resend after a lost ack is stored once --------------------------------------------------


def relp_exchange(port: int, messages: list[bytes]) -> bytes:
    """One RELP session as librelp opens it: open, the messages, close; everything the server sent back."""
    frames = wire("open", 1, OPEN_OFFERS)
    frames += b"".join(wire("syslog", txnr, m) for txnr, m in enumerate(messages, 2))
    frames += wire("close", len(messages) + 2)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(frames)
        received = bytearray()
        while data := sock.recv(65536):
            received += data
    return bytes(received)


@pytest.mark.timeout(120)
def test_with_line_ids_a_message_resent_on_a_new_session_is_stored_once(db: MariaDBServer) -> None:
    table = "relp_line_ids"
    query(db.dsn, f"DROP TABLE IF EXISTS `{table}`")
    messages = [message(i) for i in range(500)]
    with ServerProcess(["--dsn", db.dsn, "--table", table, "--framing", "relp", "--line-ids", "on"]) as srv:
        first = relp_exchange(srv.port, messages)
        # The same messages again, as librelp resends the frames of a session whose acks were lost: new
        # transaction numbers, the same bytes.
        second = relp_exchange(srv.port, messages[:300] + [message(500)])
    acks = b"".join(rsp(txnr, "200 OK") for txnr in range(2, 503))
    assert first == OPEN_RSP + acks + SERVERCLOSE
    assert second == OPEN_RSP + b"".join(rsp(txnr, "200 OK") for txnr in range(2, 304)) + SERVERCLOSE
    rows = [row[0] for row in query(db.dsn, f"SELECT payload FROM `{table}` ORDER BY id")]
    assert rows == [m.decode() for m in messages] + [message(500).decode()]
