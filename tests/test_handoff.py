"""A reload (HUP) closes no client connection: each connection of the old generation moves, open, to a
worker of the new one (prefork.handoff). Real master, real MariaDB (the ingest app), real sockets and
signals: the client's socket never sees EOF or a reset, every line is stored once, and the rows' worker_pid
shows which generation served each line."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest

from tests.helpers import query
from tests.server import ServerProcess, connect, read_all, read_lines, wait_for

RELOADS = 10
RATE = 2000  # lines per second a client sends (the measured figure the README gives)
TICK_S = 0.01  # the client sends RATE * TICK_S lines per tick
LINES_PER_GENERATION = 200  # lines answered (ack on) or stored (ack off) before the next reload


def ingest(dsn: str, table: str, *extra: str) -> ServerProcess:
    return ServerProcess(["--dsn", dsn, "--table", table, "--workers", "1", "--graceful-timeout", "30", *extra])


class Shipper:
    """One connection kept for the whole test, sending RATE lines per second; with ``reads`` it also reads
    its replies (ack on). Any EOF or reset before the test's own half-close is recorded in ``broken``."""

    def __init__(self, port: int, reads: bool, octet_count: bool = False) -> None:
        self.sock = connect(port)
        self.reads = reads
        self.octet_count = octet_count  # RFC 6587 frames ("LEN SP MSG") instead of LF-terminated lines
        self.sent = 0
        self.replies: list[bytes] = []
        self.broken: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._send, daemon=True)]
        if reads:
            self._threads.append(threading.Thread(target=self._read, daemon=True))
        for t in self._threads:
            t.start()

    def _send(self) -> None:
        per_tick = int(RATE * TICK_S)
        next_tick = time.monotonic()
        try:
            while not self._stop.is_set():
                lines = [b"line-%d" % (self.sent + i) for i in range(per_tick)]
                if self.octet_count:
                    batch = b"".join(b"%d %s" % (len(line), line) for line in lines)
                else:
                    batch = b"".join(line + b"\n" for line in lines)
                self.sock.sendall(batch)
                self.sent += per_tick
                next_tick += TICK_S
                time.sleep(max(0.0, next_tick - time.monotonic()))
        except OSError as exc:
            self.broken.append(f"send: {exc!r} after {self.sent} lines")

    def _read(self) -> None:
        buf = b""
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    if not self._stop.is_set():
                        self.broken.append(f"EOF after {len(self.replies)} replies")
                    break
                buf += data
                *lines, buf = buf.split(b"\n")
                self.replies.extend(lines)
        except OSError as exc:
            self.broken.append(f"recv: {exc!r} after {len(self.replies)} replies")

    def finish(self) -> bytes:
        """Stop sending, half-close, and wait for the server's clean close; what a non-reader gets then."""
        self._stop.set()
        self._threads[0].join(30)
        rest = b""
        try:
            self.sock.shutdown(socket.SHUT_WR)
            if not self.reads:
                rest = read_all(self.sock)
        except OSError as exc:  # the server reset or closed the connection
            self.broken.append(f"at the end: {exc!r}")
        if self.reads:
            self._threads[1].join(60)
        self.sock.close()
        return rest


def reload_and_wait(srv: ServerProcess) -> int:
    """HUP, wait until the old worker has exited; the new worker's pid."""
    (old,) = srv.worker_pids()
    srv.signal(signal.SIGHUP)
    (new,) = wait_for(lambda: (p := srv.worker_pids()) and old not in p and p, 30, what="the old worker to exit")
    return new


def stored(dsn: str, table: str) -> list[tuple[str, int]]:
    return query(dsn, f"SELECT payload, worker_pid FROM `{table}`")


def through_reloads(
    dsn: str, table: str, reads: bool, *extra: str, reloads: int = RELOADS, octet_count: bool = False
) -> None:
    with ingest(dsn, table, *extra) as srv:
        wait_for(lambda: query(dsn, f"SHOW TABLES LIKE '{table}'"), 20, what="the table")
        pids = srv.worker_pids()
        shipper = Shipper(srv.port, reads, octet_count)
        progress = (lambda: len(shipper.replies)) if reads else (lambda: len(stored(dsn, table)))
        for _ in range(reloads):
            mark = progress()
            wait_for(lambda m=mark: progress() >= m + LINES_PER_GENERATION or shipper.broken, 30, what="lines served")
            pids.append(reload_and_wait(srv))
        mark = progress()
        wait_for(lambda: progress() >= mark + LINES_PER_GENERATION or shipper.broken, 30, what="lines served")
        rest = shipper.finish()
        assert shipper.broken == [], shipper.broken
        assert rest == b""
        if reads:
            assert shipper.replies == [b"OK"] * shipper.sent
        wait_for(lambda: len(stored(dsn, table)) >= shipper.sent, 30, what="every line stored")
        rows = stored(dsn, table)
        handoffs = srv.status()["handoffs"]
    payloads = [p for p, _ in rows]
    assert len(payloads) == len(set(payloads)) == shipper.sent
    assert set(payloads) == {f"line-{i}" for i in range(shipper.sent)}
    # The connection was served by every generation in turn: its lines carry each worker's pid.
    assert {pid for _, pid in rows} == set(pids)
    assert handoffs["out"] == reloads and handoffs["fallback"] == 0, handoffs
    print(
        f"\n{shipper.sent:,} lines at {RATE:,}/s through {reloads} reloads (ack {'on' if reads else 'off'}): "
        f"lost 0, reconnects 0, stored once each, served by {len(pids)} worker pids"
    )


@pytest.mark.timeout(240)
def test_a_pipelining_client_keeps_its_connection_through_ten_reloads(dsn):
    """One connection pipelining 2,000 lines/s (reading its OKs) through 10 reloads: never an EOF or reset,
    an OK for every line, every line stored once, and served in turn by each generation's worker (the rows'
    worker_pid). Before, each reload closed the connection (2 s after the stop began, what the client sent
    meanwhile read and thrown away)."""
    through_reloads(dsn, "t_handoff_ack", reads=True)


@pytest.mark.timeout(240)
def test_a_client_that_never_reads_keeps_its_connection_through_ten_reloads_with_ack_off(dsn):
    """The same with ack off and a client that never reads (a log shipper): no line lost, no reset."""
    through_reloads(dsn, "t_handoff_noack", False, "--ack", "off")


@pytest.mark.timeout(120)
def test_an_octet_counting_shipper_keeps_its_connection_through_reloads(dsn):
    """A shipper's stream (RFC 6587 octet counting, no acks: rsyslog's omfwd, syslog-ng's syslog()) through
    3 reloads: the frame cut between two reads moves with the socket, so nothing is lost, split or merged.
    Before, the syslog framer could not say what it held: every reload closed such a connection."""
    through_reloads(dsn, "t_handoff_octets", False, "--framing", "octet-count", reloads=3, octet_count=True)


@pytest.mark.timeout(300)
def test_a_reload_whose_new_worker_is_killed_loses_nothing_acknowledged(dsn):
    """Reloads where the new worker is SIGKILLed as soon as the reload is done, while the old one hands its
    connection over: whichever way each handoff goes (to the replacement worker, back to a graceful close,
    or lost with the killed worker), every line answered OK is in the table. The client resends what got
    no reply on a new connection."""
    table = "t_handoff_kill"
    acked: list[str] = []
    sent = 0
    reconnects = 0
    stop = threading.Event()
    errors: list[str] = []

    def client(port: int) -> None:
        nonlocal sent, reconnects
        batch: list[str] = []
        sock = connect(port)
        while not stop.is_set():
            if not batch:
                batch = [f"k-{sent + i}" for i in range(50)]
                sent += len(batch)
            try:
                sock.sendall("".join(p + "\n" for p in batch).encode())
                buf = b""
                while buf.count(b"\n") < len(batch):
                    data = sock.recv(65536)
                    if not data:
                        raise ConnectionError("EOF")
                    buf += data
                replies = buf.split(b"\n")[: len(batch)]
                if any(r != b"OK" for r in replies):
                    errors.append(f"replies {set(replies)}")
                acked.extend(p for p, r in zip(batch, replies, strict=True) if r == b"OK")
                batch = []
                time.sleep(0.005)
            except OSError:
                sock.close()
                reconnects += 1
                sock = connect(port)  # the batch is resent: a line without a reply may or may not be stored
        sock.close()

    with ingest(dsn, table) as srv:
        wait_for(lambda: query(dsn, f"SHOW TABLES LIKE '{table}'"), 20, what="the table")
        thread = threading.Thread(target=client, args=(srv.port,), daemon=True)
        thread.start()
        for _ in range(5):
            mark = len(acked)
            wait_for(lambda m=mark: len(acked) >= m + 200, 60, what="lines acknowledged")
            reloaded = srv.logs().count("Reloaded: generation")
            (old,) = srv.worker_pids()
            srv.signal(signal.SIGHUP)
            wait_for(lambda r=reloaded: srv.logs().count("Reloaded: generation") > r, 30, what="the reload")
            for pid in srv.worker_pids():
                if pid != old:
                    os.kill(pid, signal.SIGKILL)
            wait_for(lambda o=old: o not in srv.worker_pids(), 40, what="the old worker to exit")
        mark = len(acked)
        wait_for(lambda: len(acked) >= mark + 200, 60, what="lines acknowledged after the last reload")
        stop.set()
        thread.join(60)
        handoffs = srv.status()["handoffs"]
    assert errors == [], errors[:5]
    payloads = {p for p, _ in stored(dsn, table)}
    missing = [p for p in acked if p not in payloads]
    assert not missing, f"{len(missing)} acknowledged lines lost, e.g. {missing[:3]}"
    print(f"\n{len(acked):,} lines acknowledged, 0 lost; {reconnects} reconnects; handoffs {handoffs}")


@pytest.mark.timeout(60)
def test_a_connection_that_cannot_move_falls_back_to_a_graceful_close_and_is_counted():
    """A connection whose framer holds state that does not travel (an over-long line being skipped) is not
    handed off at a reload: the old worker closes it as at any graceful stop (a clean EOF, no reset), and
    status counts the fallback."""
    with ServerProcess(["workers.echo:app", "--workers", "1", "--max-line", "10"]) as srv:
        sock = connect(srv.port)
        sock.sendall(b"ok\n" + b"x" * 100)  # no LF: the framer skips the rest of this line
        assert sock.recv(100) == b"ok\n"
        reload_and_wait(srv)
        assert read_all(sock) == b""
        sock.close()
        handoffs = wait_for(lambda: (h := srv.status()["handoffs"])["fallback"] and h, 10, what="the count")
        assert handoffs == {"out": 0, "fallback": 1, "in": 0}


def test_hand_off_to_a_channel_nobody_listens_on_says_so_and_keeps_the_connection():
    """hand_off gives False, at once, when the new generation's channel is gone: the caller still owns the
    connection (its fallback serves and closes it)."""
    from prefork.handoff import channel_name, hand_off

    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        served, _ = listener.accept()
        with client, served:
            assert hand_off(channel_name(os.getpid(), 999_999), served, "127.0.0.1", b"") is False
            client.sendall(b"still here\n")
            assert served.recv(100) == b"still here\n"


@pytest.mark.timeout(60)
def test_a_proxied_connection_keeps_the_address_its_proxy_header_gave_through_reloads():
    """Behind a balancer (PROXY v1 from 127.0.0.1), the client's address comes from the header, sent once
    at the connection's start: after each reload the new worker serves the connection under that address
    (carried over with the socket), and takes no new header. The bytes of a line not complete at the
    reload are carried over too."""
    args = ["testapps:client_addr", "--workers", "1", "--proxy-protocol", "v1"]
    with ServerProcess(args) as srv:
        sock = connect(srv.port)
        sock.sendall(b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 32777\r\nfirst\n")
        assert read_lines(sock, 1) == [b"203.0.113.7 first"]
        for i in range(3):
            sock.sendall(b"split-")
            time.sleep(0.2)  # read by the old worker: held by its framer when the reload comes
            reload_and_wait(srv)
            sock.sendall(b"%d\n" % i)
            assert read_lines(sock, 1) == [b"203.0.113.7 split-%d" % i]
        sock.shutdown(socket.SHUT_WR)
        assert read_all(sock) == b""
        sock.close()
        assert srv.status()["handoffs"]["out"] == 3


@pytest.mark.timeout(90)
def test_a_handoff_whose_new_worker_died_falls_back_and_loses_nothing(tmp_path):
    """The new worker is SIGKILLed after the reload while the old one still waits for a reply (held), and
    its replacement never finishes booting: the old worker's handoff gets no answer within 5 s, so it falls
    back to the graceful stop: the held line and a line sent meanwhile are both answered, then a clean EOF;
    the fallback is counted."""
    release = tmp_path / "release"
    stage = tmp_path / "stage"
    stage.mkdir()
    args = ["testapps:staged", "--workers", "1", "--graceful-timeout", "60"]
    with ServerProcess(args, env={"TESTAPP_STAGE_DIR": str(stage)}) as srv:
        (old,) = srv.worker_pids()
        sock = connect(srv.port)
        sock.sendall(b"hold %s\n" % str(release).encode())
        wait_for(lambda: srv.status()["totals"]["lines_in"] == 1, what="the held line read")
        srv.signal(signal.SIGHUP)
        wait_for(lambda: "Reloaded: generation 2" in srv.logs(), 30, what="the reload")
        (new,) = [pid for pid in srv.worker_pids() if pid != old]
        os.kill(new, signal.SIGKILL)  # its replacement waits in its setup for good (testapps.Staged)
        sock.sendall(b"sent meanwhile\n")
        release.touch()
        assert read_all(sock) == b"hold %s\nsent meanwhile\n" % str(release).encode()
        sock.close()
        handoffs = wait_for(lambda: (h := srv.status()["handoffs"])["fallback"] and h, 30, what="the count")
        assert handoffs["fallback"] == 1 and handoffs["out"] == 0, handoffs


@pytest.mark.timeout(60)
def test_a_worker_restarted_by_max_requests_hands_its_connection_to_its_replacement():
    """max_requests 50, one worker: the connection that made it restart is not closed but moves to the
    replacement worker, which answers its next lines (they carry the new pid)."""
    with ServerProcess(["testapps:pid", "--workers", "1", "--max-requests", "50", "--graceful-timeout", "30"]) as srv:
        (first,) = srv.worker_pids()
        sock = connect(srv.port)
        sock.sendall(b"".join(b"l%d\n" % i for i in range(60)))
        replies = read_lines(sock, 60)
        assert all(r.startswith(b"%d " % first) for r in replies)
        wait_for(lambda: first not in srv.worker_pids(), 30, what="the worker to restart")
        (second,) = wait_for(lambda: srv.worker_pids(), 30, what="its replacement")
        sock.sendall(b"next\n")
        assert read_lines(sock, 1) == [b"%d  next" % second]
        sock.shutdown(socket.SHUT_WR)
        assert read_all(sock) == b""
        sock.close()
        assert srv.status()["handoffs"]["out"] == 1


def read_exactly(sock: socket.socket, size: int) -> bytes:
    buf = b""
    while len(buf) < size:
        data = sock.recv(size - len(buf))
        if not data:
            raise ConnectionError(f"EOF after {buf!r}")
        buf += data
    return buf


@pytest.mark.timeout(120)
def test_a_relp_session_keeps_its_connection_and_its_numbering_through_reloads(dsn):
    """An omrelp session through 3 reloads, each begun with half a frame sent: the session moves with its
    next transaction number and its open, so each later frame is acked 200 OK on the same connection, no
    serverclose comes, and every message is stored once. Before, each reload ended the session with
    serverclose (rsyslog reconnects and resends: no loss, but not the reload that closes no connection)."""
    from tests.test_framer_relp import OPEN_OFFERS, rsp, wire
    from tests.test_relp import OPEN_RSP

    table = "t_handoff_relp"
    per_generation = 50
    with ingest(dsn, table, "--framing", "relp") as srv:
        pids = srv.worker_pids()
        sock = connect(srv.port)
        sock.sendall(wire("open", 1, OPEN_OFFERS))
        assert read_exactly(sock, len(OPEN_RSP)) == OPEN_RSP
        txnr, sent = 2, 0
        for generation in range(4):
            frames = [wire("syslog", txnr + i, b"relp-%d" % (sent + i)) for i in range(per_generation)]
            stream = b"".join(frames)
            if generation:
                sock.sendall(stream[len(half) :])  # noqa: F821 - the rest of the frame begun before the reload
            else:
                sock.sendall(stream)
            expected = b"".join(rsp(txnr + i, "200 OK") for i in range(per_generation))
            assert read_exactly(sock, len(expected)) == expected
            txnr, sent = txnr + per_generation, sent + per_generation
            if generation < 3:
                half = wire("syslog", txnr, b"relp-%d" % sent)[:7]  # the next frame's first bytes, then HUP
                sock.sendall(half)
                pids.append(reload_and_wait(srv))
        sock.sendall(wire("close", txnr))
        assert read_exactly(sock, len(rsp(txnr, "200 OK"))) == rsp(txnr, "200 OK")
        sock.close()
        rows = stored(dsn, table)
        handoffs = srv.status()["handoffs"]
    assert sorted(p for p, _ in rows) == sorted(f"relp-{i}" for i in range(sent))
    assert {pid for _, pid in rows} == set(pids)  # each generation's worker served the same connection
    assert handoffs["out"] == 3 and handoffs["fallback"] == 0, handoffs
