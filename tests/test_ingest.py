"""workers.ingest: real master, real private MariaDB; every OK is a committed row, stored once."""

from __future__ import annotations

import datetime
import os
import signal
import socket
import subprocess
import threading
import time

import gevent
import gevent.socket
import pytest

from tests.helpers import connect as helper_connect
from tests.helpers import query
from tests.mysql_proxy import CommitBreakingProxy, FaultProxy, every
from tests.server import ServerProcess, connect, prefork_cmd, read_lines, roundtrip, test_env, wait_for
from tests.test_protocol import holds_listener

NL = b"\n"


def ingest_server(
    dsn: str, table: str, *extra: str, workers: int = 2, env: dict[str, str] | None = None
) -> ServerProcess:
    return ServerProcess(
        ["--dsn", dsn, "--table", table, "--workers", str(workers), "--graceful-timeout", "20", *extra], env=env
    )


def rows(dsn: str, table: str) -> list[str]:
    return [r[0] for r in query(dsn, f"SELECT payload FROM `{table}` ORDER BY id")]


class Blast:
    """What the clients of `blast` saw: {payload: reply} of every reply, and what went wrong.

    ``errors``: a connect that failed, a reset or timeout while sending or reading, a reply beyond the lines
    sent (none of which a test allows unless it says so); ``short``: connections closed by the server (EOF)
    before every line was answered, as {client: replies got} (a graceful stop closes a connection whose
    lines it has not read yet); ``sent``: clients that have sent all their lines and half-closed."""

    def __init__(self) -> None:
        self.replies: dict[str, bytes] = {}
        self.errors: list[str] = []
        self.short: dict[int, int] = {}
        self.sent = 0

    def errs(self) -> dict[str, int]:
        """The ERR replies, by text."""
        found: dict[str, int] = {}
        for reply in self.replies.values():
            if reply != b"OK":
                found[reply.decode()] = found.get(reply.decode(), 0) + 1
        return found


def blast(port: int, clients: int, lines: int, prefix: str, result: Blast | None = None) -> Blast:
    """`clients` green clients each pipeline `lines` unique lines, half-close and read every reply to EOF;
    return what they saw (into `result` if given, so that a test can watch `sent` while it runs)."""
    seen = Blast() if result is None else result

    def client(c: int) -> None:
        payloads = [f"{prefix}-{c}-{i}" for i in range(lines)]
        try:
            sock = gevent.socket.create_connection(("127.0.0.1", port), timeout=120)
        except OSError as exc:
            seen.errors.append(f"client {c}: connect: {exc!r}")
            return
        buf = b""
        broken = False
        with sock:
            try:
                sock.sendall("".join(p + "\n" for p in payloads).encode())
                sock.shutdown(socket.SHUT_WR)
                seen.sent += 1
                while data := sock.recv(65536):
                    buf += data
            except OSError as exc:  # a reset, a timeout
                broken = True
                seen.errors.append(f"client {c}: {exc!r} after {buf.count(NL)} replies")
        got = buf.split(NL)[: buf.count(NL)]
        if len(got) > lines:
            seen.errors.append(f"client {c}: {len(got)} replies to {lines} lines")
        elif len(got) < lines and not broken:
            seen.short[c] = len(got)
        for payload, reply in zip(payloads, got, strict=False):
            seen.replies[payload] = reply

    gevent.joinall([gevent.spawn(client, c) for c in range(clients)])
    return seen


def green_wait(predicate, what: str, timeout: float = 60.0) -> None:
    """wait_for for this process's greenlets (blast's clients): poll with gevent.sleep, not time.sleep."""
    with gevent.Timeout(timeout, AssertionError(f"timed out after {timeout}s waiting for {what}")):
        while not predicate():
            gevent.sleep(0.01)


def assert_every_line_ok(seen: Blast, count: int) -> None:
    """Every one of `count` lines answered OK: no connect failure, reset, timeout, early close or ERR."""
    assert seen.errors == [], seen.errors[:5]
    assert seen.short == {}, f"closed before every reply (client: replies): {seen.short}"
    assert seen.errs() == {}, f"ERR replies: {seen.errs()}"
    assert len(seen.replies) == count


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


def utc_now() -> datetime.datetime:
    """This machine's clock in UTC, as a naive datetime (how DATETIME values come back)."""
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def test_payloads_stored_byte_exact(dsn):
    """Payloads byte for byte, the client's address, the worker's pid, and received_at in UTC with
    microseconds: checked against this clock's UTC window around the exchange while neither the server's
    time zone (+05:00) nor the workers' (TZ, +05:45) is UTC, so local time or NOW() would show."""
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
    query(dsn, "SET GLOBAL time_zone = '+05:00'")  # new sessions (the workers') get it
    try:
        # rows in the order sent
        with ingest_server(dsn, table, "--flushers", "1", workers=1, env={"TZ": "XYZ-05:45"}) as srv:
            before = utc_now()
            replies = roundtrip(srv.port, [p.encode() for p in payloads])
            after = utc_now()
            assert replies == [b"OK"] * len(payloads)
            got = query(dsn, f"SELECT payload, client_addr, worker_pid, received_at FROM `{table}` ORDER BY id")
            workers = set(srv.worker_pids())
            assert query(dsn, "SELECT @@global.time_zone")[0][0] == "+05:00"
    finally:
        query(dsn, "SET GLOBAL time_zone = 'SYSTEM'")
    assert [r[0] for r in got] == payloads
    assert {r[1] for r in got} == {"127.0.0.1"}
    assert {r[2] for r in got} <= workers
    stamps = [r[3] for r in got]
    assert all(before <= stamp <= after for stamp in stamps), f"not within {before} .. {after} UTC: {stamps}"
    assert any(stamp.microsecond for stamp in stamps), f"no microseconds: {stamps}"


def test_batch_larger_than_one_statement(dsn):
    """40 lines of 60 KB arrive together: the batch is split into several INSERTs of one transaction."""
    payloads = [f"{i:03d}" + "é" * 30_000 for i in range(40)]  # 60 KB each, 1.2 M characters in all
    # One flusher: with two, batches commit side by side and ids need not follow the lines' order.
    with ingest_server(dsn, "t_big", "--flushers", "1", workers=1) as srv:
        assert roundtrip(srv.port, [p.encode() for p in payloads]) == [b"OK"] * 40
    assert rows(dsn, "t_big") == payloads


def test_crlf_and_final_line_without_newline(dsn):
    # One flusher: with two, the batch of the last line may commit first, and ids would not follow the lines.
    with ingest_server(dsn, "t_crlf", "--flushers", "1", workers=1) as srv:
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
        seen = blast(srv.port, 200, 500, "load")
        batches = query(dsn, "SELECT COUNT(*) FROM prefork_batches")[0][0] - before
        stats = wait_for(lambda: ingest_stats(srv, 100_000), what="every row in the workers' stats")
    assert_every_line_ok(seen, 100_000)
    stored = assert_stored_exactly_once(dsn, table, seen.replies)
    assert len(stored) == 100_000
    assert batches * 10 < len(stored), f"{batches} transactions for {len(stored)} rows: batches are not growing"
    # Where the time went (README, "Its stats()"): every line taken once, each batch's phases timed.
    assert stats["taken_lines"] == 100_000 and stats["taken"] == stats["batches"] == batches, stats
    assert stats["queued_s"] > 0 and stats["write_s"] > 0 and stats["commit_s"] > 0, stats


def ingest_stats(srv: ServerProcess, rows: int) -> dict | None:
    """The ingest stats summed over the workers, once they count ``rows`` committed rows."""
    apps = [w["app"] for w in srv.status()["workers"]]
    keys = ("rows", "batches", "taken", "taken_lines", "queued_s", "write_s", "commit_s")
    total = {key: sum(app.get(key, 0) for app in apps) for key in keys}
    return total if total["rows"] == rows else None


@pytest.mark.timeout(240)
def test_database_killed_mid_load_recovers_without_restart(db):
    """MariaDB is SIGKILLed while 50 clients pipeline, down 3 s, far less than commit_timeout (60 s): every
    line is answered OK once it is back (no ERR, no connection dropped), and stored once."""
    table = "t_crash"
    with ingest_server(db.dsn, table, "--commit-timeout", "60") as srv:
        workers = srv.worker_pids()
        seen = Blast()
        load = gevent.spawn(blast, srv.port, 50, 1000, "crash", seen)
        green_wait(lambda: seen.sent == 50 or seen.errors, "every client to send its lines")
        db.kill()
        assert not load.ready(), "every line was answered before the database was killed"
        gevent.sleep(3)
        db.restart()
        load.get(timeout=180)
        assert srv.worker_pids() == workers  # recovered by itself: no worker was restarted
        after = roundtrip(srv.port, [b"after-1", b"after-2"])
        assert after == [b"OK", b"OK"]
    assert_every_line_ok(seen, 50 * 1000)
    stored = assert_stored_exactly_once(db.dsn, table, seen.replies)
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
    """40 clients pipeline 1000 lines each; the table is write-locked from the test's side, so every line is
    read and none committed when the signal comes: the stopping workers still answer every one (the lock
    is released once their stop has begun), with no reset and no ERR, and each is stored once."""
    table = f"t_sig_{signal.Signals(signum).name.lower()}"
    lines = 40 * 1000
    with ingest_server(dsn, table) as srv:
        wait_for(lambda: query(dsn, f"SHOW TABLES LIKE '{table}'"), 20, what="the table")
        locker = helper_connect(dsn)
        try:
            locker.cursor().execute(f"LOCK TABLES `{table}` WRITE")
            seen = Blast()
            load = gevent.spawn(blast, srv.port, 40, 1000, "sig", seen)
            green_wait(lambda: srv.status()["totals"]["lines_in"] == lines or seen.errors, "every line read")
            old = srv.worker_pids()
            srv.signal(signum)
            stopping = lambda: not any(holds_listener(pid, srv.port) for pid in old)  # noqa: E731
            green_wait(stopping, "the workers that read the lines to begin their stop")
            assert not seen.replies and not load.ready(), "clients answered or closed while the table was locked"
        finally:
            locker.close()  # the lock goes with the session
        load.get(timeout=150)
        if signum == signal.SIGTERM:
            assert srv.wait(60) == 0
        else:
            assert roundtrip(srv.port, [b"after-hup"]) == [b"OK"]
    assert_every_line_ok(seen, lines)
    assert_stored_exactly_once(dsn, table, seen.replies)


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
            # Read: the warm-up line, max_pending queued lines, the read that crossed the bound, and the read
            # each blocked reader holds (a reader hands the app all the complete lines of one read at once).
            per_read = 65536 // len(line) + 2
            assert status["lines_in"] <= 1 + 2000 + (1 + 4) * per_read, status
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
            seen = blast(srv.port, 20, 200, "commit")
            logs = srv.logs()
    assert proxy.cut_after_commit > 0 and proxy.cut_before_commit > 0
    assert_every_line_ok(seen, 4000)
    stored = assert_stored_exactly_once(dsn, table, seen.replies)
    assert len(stored) == 4000
    assert "the marker says committed" in logs and "the marker says not committed" in logs


def cli(*args: str) -> subprocess.CompletedProcess:
    """Run a prefork command to completion."""
    return subprocess.run(prefork_cmd(*args), env=test_env(), capture_output=True, text=True, timeout=60)


def test_check_and_initdb(dsn, tmp_path):
    out = cli("initdb", "--dsn", dsn, "-s", "ingest.table=t_initdb")
    assert out.returncode == 0, out.stderr
    assert query(dsn, "SHOW TABLES LIKE 't_initdb'") == [("t_initdb",)]
    out = cli("check", "--dsn", dsn, "-s", "ingest.table=t_initdb")
    assert out.returncode == 0 and "table `t_initdb` exists" in out.stdout, out.stdout + out.stderr
    out = cli("check", "--dsn", dsn, "-s", "ingest.table=t_never_made")
    assert out.returncode == 0 and "table `t_never_made` is missing" in out.stdout, out.stdout + out.stderr
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()
    out = cli("check", "--dsn", f"mysql://root:hunter2@127.0.0.1:{port}/test")
    assert out.returncode == 2
    assert "hunter2" not in out.stderr and "***" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    out = cli("check", "--dsn", dsn, "-s", "server.app=no_such_module:app")
    assert out.returncode == 2 and "no_such_module" in out.stderr


def test_worker_creates_table_at_start(dsn):
    with ingest_server(dsn, "t_autocreate", workers=1):
        wait_for(lambda: query(dsn, "SHOW TABLES LIKE 't_autocreate'"), 20, what="the table")


# -- promises under combined faults (each of these failed before its fix) --------------------------------


def dead_port() -> int:
    """A port on 127.0.0.1 where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "fault, code",
    [("error-open", 1927), ("error-open", 1053), ("error-open", 1180), ("error-after", 1927), ("bad-sequence", 0)],
    ids=["killed-1927", "shutdown-1053", "commit-error-1180", "killed-then-closed", "packet-sequence"],
)
def test_commit_that_fails_after_the_server_committed_is_looked_up_not_answered_err(db, fault, code):
    """The server commits, then the client gets an error packet or a broken packet sequence instead of the
    OK: the outcome is unknown, not a failure. Answering ERR would break 'ERR means not stored'."""
    table = f"t_commit_{fault.replace('-', '_')}_{code}"
    with FaultProxy(("127.0.0.1", db.port), lambda n: None, error_code=code) as proxy:
        with ingest_server(proxy.dsn, table, "--commit-timeout", "60") as srv:
            wait_for(lambda: query(db.dsn, f"SHOW TABLES LIKE '{table}'"), 20, what="the table")
            gevent.sleep(0.5)  # both workers are done creating tables: from now on every COMMIT is a batch's
            proxy.plan = every(3, fault)
            seen = blast(srv.port, 20, 200, "unknown")
            logs = srv.logs()
    assert proxy.counts[fault] > 0
    stored = assert_stored_exactly_once(db.dsn, table, seen.replies)
    assert_every_line_ok(seen, 4000)
    assert len(stored) == 4000, logs[-3000:]
    assert "the marker says committed" in logs


@pytest.mark.timeout(120)
def test_lookup_after_a_server_restart_kills_no_unrelated_session(db):
    """The connection breaks after COMMIT, then the server restarts: thread ids start again, and the old
    session's id may now be an unrelated session. The lookup must see that the server changed and not KILL."""
    table = "t_restart_lookup"
    with FaultProxy(("127.0.0.1", db.port), lambda n: None) as proxy:
        with ingest_server(proxy.dsn, table, "--commit-timeout", "60", workers=1) as srv:
            wait_for(lambda: query(db.dsn, f"SHOW TABLES LIKE '{table}'"), 20, what="the table")
            proxy.plan = every(1, "reply-lost")  # the next COMMIT is the line's
            with connect(srv.port) as sock:
                sock.sendall(b"the-line\n")
                wait_for(lambda: proxy.fault_threads, 20, what="the COMMIT to be cut")
                proxy.down()  # the lookup waits until the trap is set
                old_thread = proxy.fault_threads[0]
                proxy.plan = lambda n: None
                db.kill()
                db.restart()
                victim = thread_with_id(db.dsn, old_thread)
                try:
                    proxy.up()
                    assert read_lines(sock, 1) == [b"OK"]
                    cur = victim.cursor()
                    cur.execute("SELECT 1")  # still alive: nobody killed it
                    assert cur.fetchone() == (1,)
                finally:
                    victim.close()
            logs = srv.logs()
    assert rows(db.dsn, table) == ["the-line"]
    assert "COMMIT outcome was unknown" in logs


def thread_with_id(dsn: str, thread_id: int):
    """Open connections until one gets this server thread id; return it (the others are closed)."""
    for _ in range(thread_id + 100):
        conn = helper_connect(dsn)
        cur = conn.cursor()
        cur.execute("SELECT CONNECTION_ID()")
        got = cur.fetchone()[0]
        if got == thread_id:
            return conn
        conn.close()
        if got > thread_id:
            break
    raise AssertionError(f"could not get thread id {thread_id} after the restart")


def test_lookup_skips_a_session_it_may_not_kill(db):
    """KILL of another user's session fails with 1095: the lookup must go on, not retry that forever."""
    from prefork.pool import Pool
    from workers.ingest.outcome import Session, marker_committed, server_of
    from workers.schema import ensure_table

    query(db.dsn, "CREATE USER IF NOT EXISTS 'ingest_lowpriv'@'%'")
    query(db.dsn, "GRANT SELECT, INSERT, CREATE ON test.* TO 'ingest_lowpriv'@'%'")
    pool = Pool.from_dsn(f"mysql://ingest_lowpriv@127.0.0.1:{db.port}/test", min_size=0)
    other = helper_connect(db.dsn)
    try:
        with pool.connection() as conn:
            ensure_table(conn, "t_lowpriv")
            session = Session(server_of(conn), other.thread_id())
            with gevent.Timeout(5):
                assert marker_committed(conn, os.urandom(16), session) is False
        other.ping(reconnect=False)  # untouched
    finally:
        other.close()
        pool.close()


@pytest.mark.timeout(60)
def test_duplicate_marker_means_the_batch_is_already_stored(dsn):
    """A retried batch whose marker is already there was committed by an earlier try: no second copy."""
    from prefork.config.loader import load_config
    from prefork.interface import Peer, WorkerInfo
    from workers.ingest import IngestApp
    from workers.ingest.batch import Rows

    cfg = load_config(env={}, overrides={"pool.dsn": dsn, "ingest.table": "t_dup_marker", "ingest.flushers": "1"})
    app = IngestApp()
    app.setup(WorkerInfo(pid=os.getpid(), generation=1, config=cfg))
    try:
        assert app.handle("warm", Peer("127.0.0.1", 1)).get(timeout=20) == "OK"
        batch = app.handle("once", Peer("127.0.0.1", 1)).batch
        batch.taken = True
        app.pending.batches.clear()
        marker = os.urandom(16)
        deadline = time.monotonic() + 20
        rows_ = Rows(batch.texts, batch.runs)
        app.writer.write(rows_, marker, deadline)
        app.writer.write(rows_, marker, deadline)  # the same batch again, as after an unknown outcome
    finally:
        app.close(5)
    assert rows(dsn, "t_dup_marker") == ["warm", "once"]


@pytest.mark.timeout(120)
def test_queued_lines_get_err_at_commit_timeout_while_every_flusher_is_stuck(db):
    """The only flusher is stuck resolving an unknown COMMIT outcome while the database is unreachable: the
    lines queued behind it were never sent, and get ERR unavailable at their commit_timeout."""
    table = "t_stuck"
    with FaultProxy(("127.0.0.1", db.port), lambda n: None) as proxy:
        proxy.down_after_fault = True
        args = ("--commit-timeout", "2", "--flushers", "1", "--pool-timeout", "1")
        with ingest_server(proxy.dsn, table, *args, workers=1) as srv:
            wait_for(lambda: query(db.dsn, f"SHOW TABLES LIKE '{table}'"), 20, what="the table")
            proxy.plan = every(1, "reply-lost")  # the next COMMIT is the line's
            with connect(srv.port) as first:
                first.sendall(b"first\n")
                wait_for(lambda: proxy.fault_threads, 20, what="the COMMIT to be cut")
                proxy.plan = lambda n: None
                assert roundtrip(srv.port, [b"second", b"third"]) == [b"ERR unavailable"] * 2
                proxy.up()
                assert read_lines(first, 1) == [b"OK"]  # it was committed: the lookup says so
            assert roundtrip(srv.port, [b"fourth"]) == [b"OK"]
    assert rows(db.dsn, table) == ["first", "fourth"]


@pytest.mark.timeout(120)
def test_pending_bytes_bound_memory_while_database_is_down():
    """max_pending (lines) alone lets 100,000 lines of 60 KB pile up: 6 GB. The bytes bound holds too."""
    line = b"z" * 60_000 + b"\n"
    args = ("--max-pending-bytes", "4M", "--commit-timeout", "300")
    with ingest_server(f"mysql://root@127.0.0.1:{dead_port()}/test", "t_bytes", *args, workers=1) as srv:
        rss_before = srv.status()["workers"][0]["rss_bytes"]
        sent = {"bytes": 0}

        def sender() -> None:
            sock = gevent.socket.create_connection(("127.0.0.1", srv.port))
            try:
                for _ in range(50 * 17):  # up to 50 MB each
                    sock.sendall(line)
                    sent["bytes"] += len(line)
            except OSError:
                pass

        senders = [gevent.spawn(sender) for _ in range(4)]
        try:
            gevent.sleep(4)
            state = srv.status()["workers"][0]
        finally:
            gevent.killall(senders)
        # 4 MB of queued lines (about 70), the read that crossed the bound and the read each blocked reader
        # holds (a read of 64 KiB holds at most 2 of these lines).
        assert state["lines_in"] <= 70 + (1 + 4) * 2, state
        growth = state["rss_bytes"] - rss_before
        assert growth < 48 * 1024 * 1024, f"worker grew by {growth} bytes with {sent['bytes']} bytes sent"


@pytest.mark.timeout(120)
def test_a_line_the_database_rejects_fails_alone(dsn):
    """An operator changed the column to latin1: lines with emoji cannot be stored. They get ERR rejected;
    the other lines of their batches are stored (the batch is bisected), and nothing is stored twice."""
    table = "t_poison"
    with ingest_server(dsn, table, "--flushers", "1", workers=1) as srv:
        wait_for(lambda: query(dsn, f"SHOW TABLES LIKE '{table}'"), 20, what="the table")
        query(dsn, f"ALTER TABLE `{table}` MODIFY payload MEDIUMTEXT CHARACTER SET latin1 COLLATE latin1_bin NOT NULL")
        lines = [f"line-{i}" + (" \U0001f389" if i in (7, 150, 151, 299) else "") for i in range(300)]
        replies = roundtrip(srv.port, [line.encode() for line in lines])
        assert replies == [b"ERR rejected" if "\U0001f389" in line else b"OK" for line in lines]
        wait_for(lambda: srv.status()["totals"]["err"] == 4, 10, what="4 errors in the status")
    assert rows(dsn, table) == [line for line in lines if "\U0001f389" not in line]


@pytest.mark.timeout(120)
def test_a_first_host_that_never_greets_fails_over_to_the_second(db):
    """The DSN's first host accepts TCP and never greets (a hung server): each worker's pool gives it its
    share of pool.timeout and moves on to the private server, so every line is stored and answered OK
    within commit_timeout; before, every acquire waited for the first host's greeting and 5 of 5 lines got
    ERR unavailable."""
    from tests.silent_server import SilentServer

    table = "t_silent_first"
    query(db.dsn, f"DROP TABLE IF EXISTS `{table}`")
    with SilentServer("127.0.0.41") as silent:
        dsn = db.dsn.replace(f"@127.0.0.1:{db.port}", f"@{silent.address},127.0.0.1:{db.port}")
        assert dsn != db.dsn
        with ingest_server(dsn, table, "--commit-timeout", "20", "-s", "pool.timeout=6", workers=2) as srv:
            payloads = [f"failover-{i}" for i in range(5)]
            replies = [roundtrip(srv.port, [p.encode()])[0] for p in payloads]
        assert silent.accepted >= 1  # the first host was tried
    assert replies == [b"OK"] * 5
    assert sorted(rows(db.dsn, table)) == payloads


@pytest.mark.timeout(180)
def test_each_line_keeps_its_own_commit_timeout_through_an_outage(db):
    """The database is down; lines arrive one by one at several moments, each on a connection of its own,
    so that later ones join a batch that is open or being retried. No line gets ERR unavailable before its
    own commit_timeout has passed since it was sent (the server's deadline, from its own arrival), nor long
    after it; before, a line inherited the deadline of its batch's first line, and the retry loop gave up
    up to one backoff step early: ERR after 1.7 s of an 8 s commit_timeout. Lines sent once the database
    is back are stored."""
    table = "t_own_deadline"
    commit_timeout = 3.0
    moments = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 4.0]  # seconds after the first line
    early, late = 0.05, 10.0  # clock granularity; load on a busy machine
    args = ("--commit-timeout", str(commit_timeout), "--flushers", "1", "--pool-timeout", "1")
    try:
        with ingest_server(db.dsn, table, *args, workers=1) as srv:
            assert roundtrip(srv.port, [b"before"]) == [b"OK"]
            socks = [connect(srv.port) for _ in moments]
            db.kill()
            sent: list[float] = [0.0] * len(moments)
            answered: list[tuple[float, bytes]] = [(0.0, b"")] * len(moments)

            def client(i: int, start: float) -> None:
                time.sleep(max(0.0, start + moments[i] - time.monotonic()))
                sent[i] = time.monotonic()
                socks[i].sendall(f"outage-{i}\n".encode())
                reply = read_lines(socks[i], 1)[0]
                answered[i] = (time.monotonic(), reply)

            start = time.monotonic()
            threads = [threading.Thread(target=client, args=(i, start)) for i in range(len(moments))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            for sock in socks:
                sock.close()
            db.restart()
            after = [b"after-%d" % i for i in range(3)]
            assert roundtrip(srv.port, after) == [b"OK"] * 3
    finally:
        if not db.is_running():
            db.restart()
    replies = [reply for _, reply in answered]
    assert replies == [b"ERR unavailable"] * len(moments), replies
    waited = [round(at - sent[i], 2) for i, (at, _) in enumerate(answered)]
    assert all(commit_timeout - early <= w <= commit_timeout + late for w in waited), (
        f"seconds from each line to its ERR: {waited}; commit_timeout {commit_timeout}"
    )
    assert rows(db.dsn, table) == ["before", "after-0", "after-1", "after-2"]
