"""workers.ingest: real master, real private MariaDB; every OK is a committed row, stored once."""

from __future__ import annotations

import signal
import socket
import subprocess

import gevent
import gevent.socket
import pytest

from tests.helpers import query
from tests.mysql_proxy import CommitBreakingProxy
from tests.server import ROOT, ServerProcess, prefork_cmd, read_lines, roundtrip, test_env, wait_for


def ingest_server(dsn: str, table: str, *extra: str, workers: int = 2) -> ServerProcess:
    return ServerProcess(
        ["--dsn", dsn, "--table", table, "--workers", str(workers), "--graceful-timeout", "20", *extra]
    )


def rows(dsn: str, table: str) -> list[str]:
    return [r[0] for r in query(dsn, f"SELECT payload FROM `{table}` ORDER BY id")]


def blast(port: int, clients: int, lines: int, prefix: str) -> dict[str, bytes]:
    """`clients` green clients each pipeline `lines` unique lines; return {payload: reply} of every reply."""
    replies: dict[str, bytes] = {}

    def client(c: int) -> None:
        payloads = [f"{prefix}-{c}-{i}" for i in range(lines)]
        try:
            sock = gevent.socket.create_connection(("127.0.0.1", port), timeout=120)
        except OSError:
            return
        with sock:
            sock.sendall("".join(p + "\n" for p in payloads).encode())
            sock.shutdown(socket.SHUT_WR)
            buf = b""
            try:
                while True:
                    data = sock.recv(65536)
                    if not data:
                        break
                    buf += data
            except OSError:
                pass
        for payload, reply in zip(payloads, buf.split(b"\n")[: buf.count(b"\n")], strict=False):
            replies[payload] = reply

    gevent.joinall([gevent.spawn(client, c) for c in range(clients)])
    return replies


def assert_stored_exactly_once(dsn: str, table: str, replies: dict[str, bytes]) -> list[str]:
    stored = rows(dsn, table)
    assert len(stored) == len(set(stored)), "a payload was stored twice"
    stored_set = set(stored)
    oks = [p for p, r in replies.items() if r == b"OK"]
    missing = [p for p in oks if p not in stored_set]
    assert not missing, f"{len(missing)} OK'd lines are not in the table, e.g. {missing[:3]}"
    errs = [p for p, r in replies.items() if r.startswith(b"ERR")]
    stored_errs = [p for p in errs if p in stored_set]
    assert not stored_errs, f"lines answered ERR were stored: {stored_errs[:3]}"
    return stored


def test_payloads_stored_byte_exact(dsn):
    table = "t_exact"
    payloads = [
        "plain",
        'it\'s "quoted"',
        "back\\slash \\n \\\\",
        "nul\x00byte",
        "tab\tseparated",
        "emoji 🎉 ünïcødé 中文",
        "x" * 60_000,
        "'; DROP TABLE t_exact; --",
        "trailing space ",
    ]
    with ingest_server(dsn, table) as srv:
        replies = roundtrip(srv.port, [p.encode() for p in payloads])
        assert replies == [b"OK"] * len(payloads)
        got = query(dsn, f"SELECT payload, client_addr, worker_pid, received_at FROM `{table}` ORDER BY id")
        workers = set(srv.worker_pids())
    assert [r[0] for r in got] == payloads
    assert {r[1] for r in got} == {"127.0.0.1"}
    assert {r[2] for r in got} <= workers
    utc_now = query(dsn, "SELECT UTC_TIMESTAMP(6)")[0][0]
    assert all(abs((utc_now - r[3]).total_seconds()) < 300 for r in got)  # stored in UTC, with microseconds


def test_batch_larger_than_one_statement(dsn):
    """40 lines of 60 KB arrive together: the batch is split into several INSERTs of one transaction."""
    payloads = [f"{i:03d}" + "é" * 30_000 for i in range(40)]  # 60 KB each, 1.2 M characters in all
    with ingest_server(dsn, "t_big", workers=1) as srv:
        assert roundtrip(srv.port, [p.encode() for p in payloads]) == [b"OK"] * 40
    assert rows(dsn, "t_big") == payloads


def test_crlf_and_final_line_without_newline(dsn):
    with ingest_server(dsn, "t_crlf") as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
            sock.sendall(b"one\r\ntwo\n\nlast")
            sock.shutdown(socket.SHUT_WR)
            assert read_lines(sock, 4) == [b"OK", b"OK", b"ERR empty", b"OK"]
    assert rows(dsn, "t_crlf") == ["one", "two", "last"]


@pytest.mark.timeout(240)
def test_200_clients_500_pipelined_lines_group_committed(dsn):
    table = "t_load"
    markers_before = query(dsn, "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_NAME = 'prefork_batches'")
    with ingest_server(dsn, table) as srv:
        before = query(dsn, "SELECT COUNT(*) FROM prefork_batches")[0][0] if markers_before[0][0] else 0
        replies = blast(srv.port, 200, 500, "load")
        batches = query(dsn, "SELECT COUNT(*) FROM prefork_batches")[0][0] - before
    assert len(replies) == 100_000 and set(replies.values()) == {b"OK"}
    stored = assert_stored_exactly_once(dsn, table, replies)
    assert len(stored) == 100_000
    assert batches * 10 < len(stored), f"{batches} transactions for {len(stored)} rows: batches are not growing"


@pytest.mark.timeout(240)
def test_database_killed_mid_load_recovers_without_restart(db):
    table = "t_crash"
    with ingest_server(db.dsn, table, "--commit-timeout", "60") as srv:
        workers = srv.worker_pids()
        load = gevent.spawn(blast, srv.port, 50, 400, "crash")
        gevent.sleep(0.3)
        db.kill()
        gevent.sleep(3)
        db.restart()
        replies = load.get(timeout=180)
        assert srv.worker_pids() == workers  # recovered by itself: no worker was restarted
        after = roundtrip(srv.port, [b"after-1", b"after-2"])
        assert after == [b"OK", b"OK"]
    assert replies and sum(r == b"OK" for r in replies.values()) > 0
    stored = assert_stored_exactly_once(db.dsn, table, replies)
    assert "after-1" in stored


@pytest.mark.timeout(120)
def test_database_down_longer_than_commit_timeout_answers_err_and_stores_nothing(db):
    table = "t_down"
    with ingest_server(db.dsn, table, "--commit-timeout", "2", "--pool-timeout", "1", workers=1) as srv:
        assert roundtrip(srv.port, [b"before"]) == [b"OK"]
        db.kill()
        try:
            replies = roundtrip(srv.port, [b"lost-1", b"lost-2", b"lost-3"])
            assert replies == [b"ERR unavailable"] * 3
        finally:
            db.restart()
        assert roundtrip(srv.port, [b"back"]) == [b"OK"]  # resumes by itself
    assert rows(db.dsn, table) == ["before", "back"]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["TERM", "HUP"])
def test_stop_or_reload_mid_load_keeps_every_ok(dsn, signum):
    table = f"t_sig_{signal.Signals(signum).name.lower()}"
    with ingest_server(dsn, table) as srv:
        load = gevent.spawn(blast, srv.port, 40, 1000, "sig")
        gevent.sleep(0.5)
        srv.signal(signum)
        replies = load.get(timeout=150)
        if signum == signal.SIGTERM:
            assert srv.wait(60) == 0
        else:
            assert roundtrip(srv.port, [b"after-hup"]) == [b"OK"]
    assert sum(r == b"OK" for r in replies.values()) > 0
    assert_stored_exactly_once(dsn, table, replies)


@pytest.mark.timeout(180)
def test_backpressure_bounds_memory_while_database_is_down(db):
    table = "t_pressure"
    with ingest_server(db.dsn, table, "--max-pending", "2000", "--commit-timeout", "300", workers=1) as srv:
        assert roundtrip(srv.port, [b"warm"]) == [b"OK"]
        rss_before = srv.status()["workers"][0]["rss_bytes"]
        db.kill()
        sent = {"bytes": 0}
        line = b"y" * 1000 + b"\n"

        def sender():
            sock = gevent.socket.create_connection(("127.0.0.1", srv.port))
            chunk = line * 1000
            try:
                for _ in range(200):  # up to 200 MB, far more than max_pending lines
                    sock.sendall(chunk)
                    sent["bytes"] += len(chunk)
            except OSError:
                pass

        senders = [gevent.spawn(sender) for _ in range(4)]
        gevent.sleep(4)
        status = srv.status()["workers"][0]
        try:
            assert sent["bytes"] < 4 * 200 * len(line) * 1000, "the worker kept reading while the database was down"
            growth = status["rss_bytes"] - rss_before
            assert growth < 64 * 1024 * 1024, f"worker grew by {growth} bytes with the database down"
            # Read: the warm-up line, max_pending queued lines, and one line held by each blocked reader.
            assert status["lines_in"] <= 1 + 2000 + 4, status
        finally:
            gevent.killall(senders)
            db.restart()


@pytest.mark.timeout(180)
def test_connection_broken_during_commit_never_duplicates(dsn, db):
    """A proxy cuts the connection right after forwarding COMMIT (committed, reply lost) or instead of it
    (not committed): the marker lookup tells the two apart, so every line is stored exactly once."""
    table = "t_commit"
    with CommitBreakingProxy(("127.0.0.1", db.port), every=3) as proxy:
        with ingest_server(f"mysql://root@127.0.0.1:{proxy.port}/test", table, "--commit-timeout", "60") as srv:
            replies = blast(srv.port, 20, 200, "commit")
            logs = srv.logs()
    assert proxy.cut_after_commit > 0 and proxy.cut_before_commit > 0
    assert set(replies.values()) == {b"OK"} and len(replies) == 4000
    stored = assert_stored_exactly_once(dsn, table, replies)
    assert len(stored) == 4000
    assert "the marker says committed" in logs and "the marker says not committed" in logs


def test_check_and_initdb(dsn, tmp_path):
    env = test_env()
    out = subprocess.run(
        prefork_cmd("initdb", "--dsn", dsn, "-s", "ingest.table=t_initdb"),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert query(dsn, "SHOW TABLES LIKE 't_initdb'") == [("t_initdb",)]
    out = subprocess.run(prefork_cmd("check", "--dsn", dsn), env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()
    out = subprocess.run(
        prefork_cmd("check", "--dsn", f"mysql://root:hunter2@127.0.0.1:{port}/test"),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "hunter2" not in out.stderr and "***" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    out = subprocess.run(
        prefork_cmd("check", "--dsn", dsn, "-s", "server.app=no_such_module:app"),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "no_such_module" in out.stderr


def test_worker_creates_table_at_start(dsn):
    with ingest_server(dsn, "t_autocreate", workers=1):
        wait_for(lambda: query(dsn, "SHOW TABLES LIKE 't_autocreate'"), 20, what="the table")


def test_etc_schema_matches_the_code():
    from workers.schema import create_marker_table_sql, create_table_sql

    text = (ROOT / "etc" / "schema.sql").read_text()
    assert create_table_sql("received_lines") + ";" in text
    assert create_marker_table_sql() + ";" in text
